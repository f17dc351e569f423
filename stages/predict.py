"""Stage predict: build models/bundle, score it on the test split, predict unlabelled rows."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, evaluate


def main(params_file: Path = config.PARAMS_FILE) -> None:
    config.setup_logging()
    evaluate.run(config.load_params(path=params_file))


if __name__ == "__main__":
    typer.run(main)
