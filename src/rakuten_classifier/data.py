"""Data: reading and validating the challenge CSVs, importing raw data, building the splits."""

from __future__ import annotations

import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_dir, atomic_path, read_json, write_json
from rakuten_classifier.image import ImageError, inspect_image, read_photo
from rakuten_classifier.text import product_text

X_COLUMNS = ("designation", "description", "productid", "imageid")
ID_COLUMNS = ("productid", "imageid")
TARGET = "prdtypecode"


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
    empty = frame["designation"].fillna("").str.strip() == ""
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


def image_paths(products: pd.DataFrame, image_dir: Path) -> list[Path]:
    return [
        Path(image_dir) / image_filename(imageid, productid)
        for imageid, productid in zip(products["imageid"], products["productid"], strict=True)
    ]


def _image_problem(path: Path) -> str | None:
    try:
        data = read_photo(path, missing_ok=True)
        if data is None:
            return "missing"
        inspect_image(data)
    except ImageError as error:
        return str(error)
    return None


def check_images(paths: list[Path], workers: int = 4, chunk: int = 1024) -> list[str | None]:
    """For each photo, None if usable, else why not (missing, unknown format, too large...)."""
    problems: list[str | None] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc="checking photos", unit="photo") as bar,
    ):
        # A chunk at a time: Executor.map submits every task at once, and ~99k pending
        # futures alone hold 160 MB.
        for start in range(0, len(paths), chunk):
            problems.extend(pool.map(_image_problem, paths[start : start + chunk]))
            bar.update(min(chunk, len(paths) - start))
    return problems


# --- the import_raw stage -------------------------------------------------------------------

CHALLENGE_FILES = (config.X_TRAIN_CSV, config.Y_TRAIN_CSV, config.X_TEST_CSV)
METADATA_FILES = (config.CATEGORIES_CSV, config.CLASS_COUNTS_CSV)


# Fixed member dates: the same photos always give the same archive, byte for byte.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def archive_photos(images_dir: Path, dest: Path) -> int:
    """The photos of `images_dir/image_train` and `images_dir/image_test` as one zip archive
    (`image_train/<name>`, `image_test/<name>`), stored uncompressed: JPEGs do not compress,
    and reading a member then costs a seek. Returns the number of photos."""
    count = 0
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:
        for split in (config.IMAGE_TRAIN_DIR.name, config.IMAGE_TEST_DIR.name):
            folder = Path(images_dir) / split
            for path in sorted(folder.iterdir()) if folder.is_dir() else ():
                if path.is_file():
                    info = zipfile.ZipInfo(f"{split}/{path.name}", date_time=_ZIP_DATE)
                    info.external_attr = 0o644 << 16
                    with path.open("rb") as source, archive.open(info, "w") as target:
                        shutil.copyfileobj(source, target, 1 << 20)
                    count += 1
    return count


def import_sample(sample_dir: Path, out_dir: Path) -> Path:
    """The embedded sample into `out_dir`: its CSVs, and its photos as images.zip."""
    sample_dir = Path(sample_dir)
    for name in CHALLENGE_FILES:
        if not (sample_dir / name).exists():
            raise DataError(sample_dir / name, "file not found in the sample folder")
    with atomic_dir(out_dir) as tmp:
        for name in CHALLENGE_FILES + METADATA_FILES:
            if (sample_dir / name).exists():
                shutil.copy2(sample_dir / name, tmp / name)
        archive_photos(sample_dir / config.IMAGE_TRAIN_DIR.parent, tmp / config.IMAGES_ZIP)
    logger.info("imported the sample from %s into %s", sample_dir, out_dir)
    return Path(out_dir)


# --- the make_dataset stage -----------------------------------------------------------------


@dataclass(frozen=True)
class LabelMap:
    """The classes in model order: output k of every model is the product type `codes[k]`."""

    codes: tuple[int, ...]
    names: dict[int, str]

    def index(self, codes: pd.Series) -> pd.Series:
        lookup = {code: k for k, code in enumerate(self.codes)}
        return codes.map(lookup).astype("int64")

    def name(self, code: int) -> str:
        return self.names.get(code, str(code))

    def to_json(self) -> dict[str, Any]:
        return {"codes": list(self.codes), "names": {str(c): n for c, n in self.names.items()}}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LabelMap:
        names = {int(code): name for code, name in payload.get("names", {}).items()}
        return cls(tuple(int(code) for code in payload["codes"]), names)


def category_names(path: Path) -> dict[int, str]:
    """Community-inferred category names (Rakuten never published official ones), if present."""
    if not Path(path).exists():
        return {}
    frame = pd.read_csv(path)
    return dict(zip(frame[TARGET].astype(int), frame["name"].astype(str), strict=True))


def product_frame(products: pd.DataFrame, image_dir: Path, check: bool = True) -> pd.DataFrame:
    """Products with their model text, photo path and whether the photo is usable."""
    frame = products.copy()
    frame["text"] = [
        product_text(title, description)
        for title, description in zip(frame["designation"], frame["description"], strict=True)
    ]
    paths = image_paths(frame, image_dir)
    frame["image_path"] = [str(path) for path in paths]
    problems = check_images(paths) if check else [None] * len(paths)
    frame["image_problem"] = problems
    frame["has_image"] = [problem is None for problem in problems]
    broken = [(p, why) for p, why in zip(paths, problems, strict=True) if why and why != "missing"]
    for path, why in broken[:10]:
        logger.warning("photo %s unusable (%s): the product is classified from its text", path, why)
    if len(broken) > 10:
        logger.warning("... and %d more unusable photos", len(broken) - 10)
    return frame


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


def make_dataset(raw_dir: Path, out_dir: Path, params: dict[str, Any], seed: int) -> dict:
    """Validate the raw files and write the parquet splits, the label map and a data summary."""
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
    splits[config.UNLABELLED] = product_frame(
        read_products(raw_dir / config.X_TEST_CSV), photos / config.IMAGE_TEST_DIR.name
    )

    summary: dict[str, Any] = {"classes": len(codes)}
    with atomic_dir(out_dir) as tmp:
        for name, split in splits.items():
            split.to_parquet(config.split_path(name, tmp))
            summary[name] = {"rows": len(split), "with_photo": int(split["has_image"].sum())}
        write_json(tmp / config.LABELS_JSON, labels.to_json())
    logger.info("dataset written to %s: %s", out_dir, summary)
    return summary


def load_split(name: str, processed_dir: Path = config.PROCESSED_DIR) -> pd.DataFrame:
    return pd.read_parquet(config.split_path(name, processed_dir))


def load_labels(processed_dir: Path = config.PROCESSED_DIR) -> LabelMap:
    return LabelMap.from_json(read_json(Path(processed_dir) / config.LABELS_JSON))


def write_predictions_csv(path: Path, frame: pd.DataFrame) -> None:
    """The challenge's prediction layout: the products' index, prdtypecode, probability."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=True, index_label="")


def import_raw(params: dict[str, Any], out_dir: Path = config.RAW_DIR) -> Path:
    """The import_raw stage: the challenge files into `out_dir`, from the configured source."""
    source = params["source"]
    if source == "sample":
        return import_sample(Path(params["sample_dir"]), out_dir)
    if source == "huggingface":
        from rakuten_classifier.download import fetch_challenge_data

        # Downloads land in a cache outside data/raw (DVC deletes a stage's outputs before it
        # runs), so an interrupted download resumes and a finished one is not fetched again.
        with atomic_dir(out_dir) as tmp:
            fetch_challenge_data(
                params["hf_base_url"],
                tmp,
                config.DOWNLOAD_CACHE_DIR,
                checksums=params.get("checksums") or None,
            )
            # The extracted photos, checked and laid out, repacked as one file for DVC.
            photos = archive_photos(tmp / config.IMAGE_TRAIN_DIR.parent, tmp / config.IMAGES_ZIP)
            shutil.rmtree(tmp / config.IMAGE_TRAIN_DIR.parent)
            logger.info("%d photos archived in %s", photos, config.IMAGES_ZIP)
            # Project metadata (category names, full class counts) is not part of the download.
            for name in METADATA_FILES:
                if (Path(params["sample_dir"]) / name).exists():
                    shutil.copy2(Path(params["sample_dir"]) / name, tmp / name)
        return Path(out_dir)
    raise ValueError(f"params.yaml data.source: unknown '{source}' (sample or huggingface)")
