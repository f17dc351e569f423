"""Feedback batches: products whose true type an administrator gave in production, exported
from the prediction store (`rakuten-classifier feedback-export`) in the challenge's layout and
tracked by DVC under data/feedback/feedback-<last feedback id>/ (X.csv, Y.csv, images/).

make_dataset adds them to the training split only: the base data's split does not move, so the
test split and its metrics stay comparable from one retraining to the next, and a product that
is already in the base data (in any split) is left out, so no test product leaks into training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from rakuten_classifier.config import logger
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.labels import TARGET

BATCH_PREFIX = "feedback-"
BATCH_PATTERN = re.compile(rf"^{BATCH_PREFIX}(\d+)$")
X_CSV = "X.csv"
Y_CSV = "Y.csv"
IMAGES = "images"


def batch_name(last_feedback_id: int) -> str:
    """Zero-padded, so that names sort in export order."""
    return f"{BATCH_PREFIX}{last_feedback_id:010d}"


def batches(feedback_dir: Path) -> list[Path]:
    """The batch folders under `feedback_dir`, oldest first (none if it does not exist)."""
    if not Path(feedback_dir).is_dir():
        return []
    found = [path for path in Path(feedback_dir).iterdir() if BATCH_PATTERN.match(path.name)]
    return sorted(path for path in found if path.is_dir())


def last_exported(feedback_dir: Path) -> int:
    """The id of the last feedback row exported (0 before the first export)."""
    found = batches(feedback_dir)
    return int(BATCH_PATTERN.match(found[-1].name).group(1)) if found else 0


def read_batches(feedback_dir: Path) -> pd.DataFrame:
    """Every batch's products with their true type, photo path and checks (as product_frame
    gives them), and the batch they came from; a product in several batches appears once, with
    its latest label. The files are validated like the challenge's: an error names the file
    and the row."""
    frames = []
    for batch in batches(feedback_dir):
        products = read_products(batch / X_CSV)
        products[TARGET] = read_labels(batch / Y_CSV, products)
        frame = product_frame(products, batch / IMAGES)
        frames.append(frame.assign(feedback_batch=batch.name))
    if not frames:
        return pd.DataFrame()
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates("productid", keep="last").reset_index(drop=True)


def feedback_rows(
    feedback: pd.DataFrame, base: pd.DataFrame, codes: tuple[int, ...]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The feedback products to add to the training split, indexed after the base rows, and a
    summary: products already in the base data are left out, so are product types the base
    data does not have (the model's classes come from the base data)."""
    summary = {"rows": 0, "already_in_data": 0, "unknown_type": 0}
    if not len(feedback):
        return feedback, summary
    known = feedback["productid"].isin(base["productid"])
    unknown = ~feedback[TARGET].isin(codes)
    if unknown.any():
        logger.warning("feedback: %d products of types the data does not have, left out: %s",
                       int(unknown.sum()), sorted(set(feedback.loc[unknown, TARGET])))  # fmt: skip
    kept = feedback[~known & ~unknown].copy()
    kept.index = pd.RangeIndex(int(base.index.max()) + 1, int(base.index.max()) + 1 + len(kept))
    summary.update(rows=len(kept), already_in_data=int(known.sum()),
                   unknown_type=int((unknown & ~known).sum()))  # fmt: skip
    return kept, summary
