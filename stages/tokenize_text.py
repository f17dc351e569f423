"""Stage tokenize: the TF-IDF vectoriser and the Keras vocabulary, fitted on the train split.

(Not named tokenize.py: the script folder comes first on sys.path and would shadow the
standard library module of that name.)
"""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, text
from rakuten_classifier.data import load_split


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    out_dir: Path = config.TOKENIZER_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params("tokenize", params_file)
    texts = load_split("train", processed_dir)["text"].tolist()
    text.save_tokenizers(out_dir, *text.fit_tokenizers(texts, params))


if __name__ == "__main__":
    typer.run(main)
