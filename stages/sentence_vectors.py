"""Stage sentence_vectors: every product's vectors from the sentence encoders that
tokenize.sentence_encoder names, computed once (e5 costs about 0.2 s a text),
so that training, the out-of-fold refits, evaluation and sweeps over the other params read
them instead of encoding again."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, sentence_encoder
from rakuten_classifier.data import load_split


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    out_dir: Path = config.SENTENCE_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params("tokenize", params_file)
    texts = [
        text
        for split in ("train", "val", "test", "unlabelled")
        for text in load_split(split, processed_dir)["text"].tolist()
    ]
    manifest = sentence_encoder.store_vectors(params, texts, out_dir)
    config.logger.info("sentence vectors: %s", manifest)


if __name__ == "__main__":
    typer.run(main)
