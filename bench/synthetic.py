"""A scaled synthetic copy of the challenge data, for mechanics benchmarks (memory, DVC speed).

The real sample's rows are repeated with new row indices, product ids and image ids up to the
full data set's size (84,916 labelled and 13,812 unlabelled products), each with its own photo
file. The photos are the sample's real 500x500 JPEGs used in turn, each copy made a distinct
file (for DVC's hashes) by a few bytes appended after the JPEG end marker, which decoders
ignore: file sizes, decoding cost and file count are those of the full data set. Nothing here
is meant for quality figures: the texts and labels repeat.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten_classifier import config
from rakuten_classifier.data import image_filename

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / config.SAMPLE_DIR
FULL_TRAIN_ROWS = 84_916
FULL_TEST_ROWS = 13_812
# Ids far above the real ones, so a synthetic file is never mistaken for a real photo.
ID_OFFSET = 5_000_000_000


def _photo_pool() -> list[bytes]:
    photos = sorted((SAMPLE / config.IMAGE_TRAIN_DIR).glob("*.jpg"))
    photos += sorted((SAMPLE / config.IMAGE_TEST_DIR).glob("*.jpg"))
    return [path.read_bytes() for path in photos]


def _repeat(frame: pd.DataFrame, rows: int, first_index: int) -> pd.DataFrame:
    copies = frame.iloc[np.arange(rows) % len(frame)].copy()
    copies.index = pd.RangeIndex(first_index, first_index + rows)
    copies["productid"] = ID_OFFSET + copies.index
    copies["imageid"] = 2 * ID_OFFSET + copies.index
    return copies


def _write_photos(products: pd.DataFrame, image_dir: Path, pool: list[bytes]) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    for row, (imageid, productid) in enumerate(
        zip(products["imageid"], products["productid"], strict=True)
    ):
        photo = pool[int(imageid) % len(pool)]
        (image_dir / image_filename(imageid, productid)).write_bytes(
            photo + f"synthetic copy {row}".encode()
        )


def build_synthetic_copy(
    dest: Path, rows: int = FULL_TRAIN_ROWS, test_rows: int = FULL_TEST_ROWS
) -> Path:
    """Write the challenge layout (CSVs, images/image_train, images/image_test) into `dest`."""
    started = time.perf_counter()
    dest = Path(dest)
    x_train = pd.read_csv(SAMPLE / config.X_TRAIN_CSV, index_col=0)
    y_train = pd.read_csv(SAMPLE / config.Y_TRAIN_CSV, index_col=0).loc[x_train.index]
    x_test = pd.read_csv(SAMPLE / config.X_TEST_CSV, index_col=0)

    train = _repeat(x_train.join(y_train), rows, 0)
    test = _repeat(x_test, test_rows, rows)
    dest.mkdir(parents=True, exist_ok=True)
    train[list(x_train.columns)].to_csv(dest / config.X_TRAIN_CSV)
    train[["prdtypecode"]].to_csv(dest / config.Y_TRAIN_CSV)
    test.to_csv(dest / config.X_TEST_CSV)
    for name in (config.CATEGORIES_CSV, config.CLASS_COUNTS_CSV):
        shutil.copy2(SAMPLE / name, dest / name)
    pool = _photo_pool()
    _write_photos(train, dest / config.IMAGE_TRAIN_DIR, pool)
    _write_photos(test, dest / config.IMAGE_TEST_DIR, pool)
    print(
        f"synthetic copy: {rows} labelled + {test_rows} unlabelled products with photos "
        f"in {dest} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return dest
