"""Stage train_fusion: how text and photo probabilities combine, learned on held-out
predictions (the validation split, plus out-of-fold predictions on the train split)."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, recipes
from rakuten_classifier.sentence_encoder import vector_cache
from rakuten_classifier.training import log_scores, open_live


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    text_dir: Path = config.TEXT_MODEL_DIR,
    image_dir: Path = config.IMAGE_MODEL_DIR,
    features_dir: Path = config.FEATURES_DIR,
    out_dir: Path = config.FUSION_DIR,
    held_out_dir: Path = config.HELD_OUT_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params(path=params_file)
    with open_live(config.DVCLIVE_DIR / "train_fusion") as live, vector_cache(config.SENTENCE_DIR):
        scores = recipes.train_fusion(
            params, processed_dir, text_dir, image_dir, features_dir, out_dir, held_out_dir
        )
        # held_out: validation and out-of-fold rows together; val: the validation split alone.
        for split, values in scores.items():
            log_scores(live, split, values)


if __name__ == "__main__":
    typer.run(main)
