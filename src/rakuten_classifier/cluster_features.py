"""The image_features stage's backbone pass on a Dask cluster (RAKUTEN_DASK_SCHEDULER): each
split's photos in partitions of whole batches, the backbone built once per worker under the
pipeline's pinned numerics, the features gathered back in order. The stage writes the same
bytes as in one process: the same batches through the same kernels with the same thread
counts (rakuten_classifier.reproducible).

The workers read the photos the splits name (under data/raw) by absolute path, which suits
workers on this machine or on a shared mount; RAKUTEN_DASK_PHOTO_ROOT points them elsewhere: a
folder or URL (s3://bucket/raw, through fsspec) that holds what data/raw holds here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier import config
from rakuten_classifier.cluster import ModelOnWorker, rows_of, run_partitions, worker_model
from rakuten_classifier.config import logger
from rakuten_classifier.image import FEATURES_BATCH, backbone_features, backbone_of
from rakuten_classifier.preprocess import absolute_location, photo_location
from rakuten_classifier.reproducible import ENVIRONMENT, pin_numerics

PHOTO_ROOT_VARIABLE = "RAKUTEN_DASK_PHOTO_ROOT"


class BackboneOnWorker(ModelOnWorker):
    name = "rakuten-backbone"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.params = params

    def setup(self, worker: object) -> None:
        super().setup(worker)
        # Too late to pin once TensorFlow has started: the features would differ in their
        # last bits from the single process's.
        unpinned = any(os.environ.get(k) != v for k, v in ENVIRONMENT.items())
        if "tensorflow" in sys.modules and unpinned:
            raise RuntimeError(
                "this Dask worker started TensorFlow without the pipeline's numerics: start it "
                "with " + " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items())
            )
        pin_numerics()

    def load(self) -> Any:
        return backbone_of(self.params)


def worker_photo_location(path: str, root: str | None) -> str:
    """Where a worker reads the photo a split names: the same file by absolute path, or the
    same place under `root` (for data/raw)."""
    if not root:
        return absolute_location(path)
    raw = config.RAW_DIR.resolve()
    try:
        inside = Path(path).resolve().relative_to(raw)
    except ValueError:
        raise ValueError(
            f"{PHOTO_ROOT_VARIABLE} is set, yet photo {path} is not under {raw}: the workers "
            "cannot be told where it is"
        ) from None
    return photo_location(root, inside.as_posix())


def partition_features(photos: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs on a worker: the backbone features of one partition's photos."""
    return backbone_features(worker_model(BackboneOnWorker.name), photos, size)


def features_on_cluster(
    scheduler: str, params: dict[str, Any], partition_rows: int = 1024
) -> Callable[[pd.DataFrame, str], tuple[np.ndarray, np.ndarray]]:
    """A `features_of` for image.extract_features that runs on the cluster at `scheduler`."""

    def features_of(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
        # The splits name photos relative to the project; a worker runs elsewhere.
        root = os.environ.get(PHOTO_ROOT_VARIABLE)
        frame = frame.assign(
            image_path=[worker_photo_location(p, root) for p in frame["image_path"]]
        )
        rows = rows_of(partition_rows, FEATURES_BATCH)
        chunks = [frame.iloc[start : start + rows] for start in range(0, len(frame), rows)]
        parts = run_partitions(
            scheduler,
            BackboneOnWorker(params),
            partition_features,
            [(chunk, params["image_size"]) for chunk in chunks],
            f"{name}-features",
            [len(chunk) for chunk in chunks],
            "photo",
        )
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        index = np.concatenate([p[0] for p in parts])
        if len(index) < len(frame):
            logger.warning(
                "%s: %d of %d photos could not be read on the workers (they need the same "
                "files at the same paths)",
                name,
                len(frame) - len(index),
                len(frame),
            )
        return index, np.concatenate([p[1] for p in parts])

    return features_of
