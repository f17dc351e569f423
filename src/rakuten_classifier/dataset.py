"""The make_dataset stage's work: the labelled products (and the feedback batches) validated,
split into train, validation and test, and written as parquet with the label map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.feedback_data import feedback_rows, read_batches
from rakuten_classifier.files import atomic_dir, write_json
from rakuten_classifier.labels import TARGET, LabelMap, category_names


def stratified_split(
    frame: pd.DataFrame, val_size: float, test_size: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Train/validation/test split that keeps every class's share in each part."""
    labels = frame[TARGET]
    rest, test = train_test_split(frame, test_size=test_size, stratify=labels, random_state=seed)
    relative_val = val_size / (1.0 - test_size)
    train, val = train_test_split(
        rest, test_size=relative_val, stratify=rest[TARGET], random_state=seed
    )
    return {"train": train.sort_index(), "val": val.sort_index(), "test": test.sort_index()}


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, stratified, for quick runs on a slice of a big data set."""
    if not max_rows or len(frame) <= max_rows:
        return frame
    kept, _ = train_test_split(
        frame, train_size=max_rows, stratify=frame[TARGET], random_state=seed
    )
    return kept.sort_index()


def make_dataset(
    raw_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
    seed: int,
    feedback_dir: Path | None = None,
) -> dict:
    """Validate the raw files (and the feedback batches under `feedback_dir`) and write the
    parquet splits, the label map and a data summary."""
    raw_dir = Path(raw_dir)
    products = read_products(raw_dir / config.X_TRAIN_CSV)
    products[TARGET] = read_labels(raw_dir / config.Y_TRAIN_CSV, products)
    products = subsample(products, params.get("max_rows"), seed)
    photos = raw_dir / config.IMAGES_ZIP
    labelled = product_frame(products, photos / config.IMAGE_TRAIN_DIR.name)

    codes = tuple(sorted(int(code) for code in labelled[TARGET].unique()))
    labels = LabelMap(codes, category_names(raw_dir / config.CATEGORIES_CSV))
    labelled["label"] = labels.index(labelled[TARGET])
    splits = stratified_split(labelled, params["val_size"], params["test_size"], seed)
    feedback, feedback_summary = feedback_rows(
        read_batches(feedback_dir) if feedback_dir else pd.DataFrame(), labelled, codes
    )
    if len(feedback):
        feedback["label"] = labels.index(feedback[TARGET])
        columns = list(splits["train"].columns)
        splits["train"] = pd.concat([splits["train"], feedback[columns]])
    splits[config.UNLABELLED] = product_frame(
        read_products(raw_dir / config.X_TEST_CSV), photos / config.IMAGE_TEST_DIR.name
    )

    summary: dict[str, Any] = {"classes": len(codes), "feedback": feedback_summary}
    with atomic_dir(out_dir) as tmp:
        for name, split in splits.items():
            split.to_parquet(config.split_path(name, tmp))
            summary[name] = {"rows": len(split), "with_photo": int(split["has_image"].sum())}
        write_json(tmp / config.LABELS_JSON, labels.to_json())
    logger.info("dataset written to %s: %s", out_dir, summary)
    return summary
