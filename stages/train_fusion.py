"""Stage train_fusion: how text and photo probabilities combine, learned on validation."""

from pathlib import Path

import typer

from rakuten_classifier import config, fusion
from rakuten_classifier.training import log_scores, open_live


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    text_dir: Path = config.TEXT_MODEL_DIR,
    image_dir: Path = config.IMAGE_MODEL_DIR,
    features_dir: Path = config.FEATURES_DIR,
    out_dir: Path = config.FUSION_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params(path=params_file)
    with open_live(config.DVCLIVE_DIR / "train_fusion") as live:
        scores = fusion.train(params, processed_dir, text_dir, image_dir, features_dir, out_dir)
        log_scores(live, "val", scores)


if __name__ == "__main__":
    typer.run(main)
