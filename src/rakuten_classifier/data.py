"""Data: reading and validating the challenge CSVs, checking the photos, building the splits."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_path, read_json
from rakuten_classifier.labels import TARGET, LabelMap
from rakuten_classifier.preprocess import (
    check_photo,
    has_visible_text,
    photo_location,
    product_text,
)

X_COLUMNS = ("designation", "description", "productid", "imageid")
ID_COLUMNS = ("productid", "imageid")


class DataError(ValueError):
    """A data file that does not follow the challenge layout: names the file, column and row."""

    def __init__(
        self, path: Path | str, problem: str, column: str | None = None, row: object = None
    ) -> None:
        where = [str(path)]
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row with index {row}")
        super().__init__(f"{', '.join(where)}: {problem}")
        self.path, self.column, self.row = str(path), column, row


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        frame = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as error:
        raise DataError(path, "the file is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(path, f"not a readable CSV file ({error})") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    _check_index(frame, path)
    return frame


def _check_index(frame: pd.DataFrame, path: Path) -> None:
    """The first column is the product's row index in the challenge files: unique integers."""
    index = pd.to_numeric(pd.Series(frame.index, dtype=object), errors="coerce")
    bad = index.isna() | (index % 1 != 0)
    if bad.any():
        position = int(bad.to_numpy().argmax())
        raise DataError(
            path,
            f"the first column (row index) must hold integers, found "
            f"'{frame.index[position]}' on data row {position + 1}",
            column="index",
        )
    frame.index = index.astype("int64").to_numpy()
    frame.index.name = "index"
    duplicated = frame.index.duplicated()
    if duplicated.any():
        raise DataError(
            path, "duplicated row index", column="index", row=frame.index[duplicated][0]
        )


def _check_columns(frame: pd.DataFrame, path: Path, required: tuple[str, ...]) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(
            path,
            f"missing column(s) {', '.join(missing)}; expected the challenge layout "
            f"',{','.join(required)}' (found: {', '.join(frame.columns) or 'no columns'})",
            column=missing[0],
        )


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values % 1 != 0)
    if bad.any():
        row = frame.index[bad.to_numpy()][0]
        raise DataError(
            path, f"expected an integer, found '{frame.at[row, column]}'", column=column, row=row
        )
    return values.astype("int64")


def read_products(path: Path) -> pd.DataFrame:
    """A products CSV (`X_train_update.csv`, `X_test_update.csv` or any file in that layout).

    The description may be empty; the title (designation) may not: it is the one input every
    product has, so a row without it is an error in the data, reported with its index.
    """
    path = Path(path)
    frame = _read_csv(path)
    _check_columns(frame, path, X_COLUMNS)
    frame = frame[list(X_COLUMNS)].copy()
    for column in ID_COLUMNS:
        frame[column] = _integer_column(frame, column, path)
    empty = ~frame["designation"].map(has_visible_text)
    if empty.any():
        raise DataError(path, "empty designation", column="designation", row=frame.index[empty][0])
    frame["description"] = frame["description"].fillna("")
    return frame


def read_labels(path: Path, products: pd.DataFrame) -> pd.Series:
    """The `prdtypecode` of every product, matched to the products by row index."""
    path = Path(path)
    frame = _read_csv(path)
    _check_columns(frame, path, (TARGET,))
    codes = _integer_column(frame, TARGET, path)
    unlabelled = products.index.difference(codes.index)
    if len(unlabelled):
        raise DataError(path, "no label for this product", column=TARGET, row=unlabelled[0])
    unknown = codes.index.difference(products.index)
    if len(unknown):
        raise DataError(
            path, "label for a product that is not in the products file", row=unknown[0]
        )
    return codes.loc[products.index]


def image_filename(imageid: int, productid: int) -> str:
    """The challenge's photo file name of a product."""
    return f"image_{imageid}_product_{productid}.jpg"


def image_paths(products: pd.DataFrame, image_dir: str | os.PathLike[str]) -> list[str]:
    """Each product's photo location in `image_dir` (a folder, through an archive, or a URL)."""
    return [
        photo_location(image_dir, image_filename(imageid, productid))
        for imageid, productid in zip(products["imageid"], products["productid"], strict=True)
    ]


def check_images(paths: list[str], workers: int = 4, chunk: int = 1024) -> list[str | None]:
    """For each photo, None if usable, else why not (missing, unknown format, too large,
    truncated...): every photo is decoded, so what passes here decodes in training too."""
    problems: list[str | None] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc="checking photos", unit="photo") as bar,
    ):
        # A chunk at a time: Executor.map submits every task at once, and ~99k pending
        # futures alone hold 160 MB.
        for start in range(0, len(paths), chunk):
            problems.extend(pool.map(check_photo, paths[start : start + chunk]))
            bar.update(min(chunk, len(paths) - start))
    return problems


# --- the make_dataset stage -----------------------------------------------------------------


def product_frame(products: pd.DataFrame, image_dir: Path, check: bool = True) -> pd.DataFrame:
    """Products with their model text, photo path and whether the photo is usable."""
    frame = products.copy()
    frame["text"] = [
        product_text(title, description)
        for title, description in zip(frame["designation"], frame["description"], strict=True)
    ]
    paths = image_paths(frame, image_dir)
    frame["image_path"] = paths
    problems = check_images(paths) if check else [None] * len(paths)
    frame["image_problem"] = problems
    frame["has_image"] = [problem is None for problem in problems]
    broken = [(p, why) for p, why in zip(paths, problems, strict=True) if why and why != "missing"]
    for path, why in broken[:10]:
        logger.warning("photo %s unusable (%s): the product is classified from its text", path, why)
    if len(broken) > 10:
        logger.warning("... and %d more unusable photos", len(broken) - 10)
    return frame


def load_split(name: str, processed_dir: Path = config.PROCESSED_DIR) -> pd.DataFrame:
    return pd.read_parquet(config.split_path(name, processed_dir))


def load_labels(processed_dir: Path = config.PROCESSED_DIR) -> LabelMap:
    return LabelMap.from_json(read_json(Path(processed_dir) / config.LABELS_JSON))


def write_predictions_csv(path: Path, frame: pd.DataFrame) -> None:
    """The challenge's prediction layout: the products' index, prdtypecode, probability."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=True, index_label="")
