"""Stage train_text: the selected text model (train_text.model), calibrated on validation."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, text
from rakuten_classifier.sentence_encoder import vector_cache
from rakuten_classifier.training import log_scores, open_live


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    tokenizer_dir: Path = config.TOKENIZER_DIR,
    out_dir: Path = config.TEXT_MODEL_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params(path=params_file)
    with open_live(config.DVCLIVE_DIR / "train_text") as live, vector_cache(config.SENTENCE_DIR):
        scores = text.train(
            params["train_text"], params["seed"], processed_dir, tokenizer_dir, out_dir, live
        )
        log_scores(live, "val", scores)


if __name__ == "__main__":
    typer.run(main)
