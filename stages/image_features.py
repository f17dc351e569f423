"""Stage image_features: pretrained-backbone features of the train and validation photos,
cached so that sweeps over the image head do not run the backbone again. With
RAKUTEN_DASK_SCHEDULER set, the backbone pass runs on that Dask cluster (same bytes out)."""

import os
from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import cluster, cluster_features, config, image


def main(
    params_file: Path = config.PARAMS_FILE,
    processed_dir: Path = config.PROCESSED_DIR,
    out_dir: Path = config.FEATURES_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params("train_image", params_file)
    scheduler = os.environ.get(cluster.SCHEDULER_VARIABLE)
    features_of = cluster_features.features_on_cluster(scheduler, params) if scheduler else None
    image.extract_features(params, processed_dir, out_dir, features_of)


if __name__ == "__main__":
    typer.run(main)
