"""Stage predict: build models/bundle, score it on the test split, predict unlabelled rows."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, evaluate
from rakuten_classifier.sentence_encoder import vector_cache


def main(params_file: Path = config.PARAMS_FILE) -> None:
    config.setup_logging()
    with vector_cache(config.SENTENCE_DIR):  # the products' sentence vectors, computed once
        evaluate.run(config.load_params(path=params_file))


if __name__ == "__main__":
    typer.run(main)
