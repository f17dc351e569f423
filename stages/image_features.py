"""Stage image_features: pretrained-backbone features of the train and validation photos,
cached so that sweeps over the image head do not run the backbone again."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, image


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    out_dir: Path = config.FEATURES_DIR,
) -> None:
    config.setup_logging()
    image.extract_features(config.load_params("train_image", params_file), processed_dir, out_dir)


if __name__ == "__main__":
    typer.run(main)
