"""Stage train_image: the Keras image classifier on the products that have a photo."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, image
from rakuten_classifier.training import log_scores, open_live


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    features_dir: Path = config.FEATURES_DIR,
    out_dir: Path = config.IMAGE_MODEL_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params(path=params_file)
    with open_live(config.DVCLIVE_DIR / "train_image") as live:
        scores = image.train(
            params["train_image"], params["seed"], processed_dir, features_dir, out_dir, live
        )
        log_scores(live, "val", scores)


if __name__ == "__main__":
    typer.run(main)
