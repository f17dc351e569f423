"""Reading, validating and splitting the challenge files, on real rows of the sample and on
deliberately broken copies of them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE, make_slice
from PIL import Image

from rakuten_classifier import config
from rakuten_classifier.data import (
    DataError,
    check_images,
    load_labels,
    load_split,
    read_labels,
    read_products,
)
from rakuten_classifier.dataset import make_dataset
from rakuten_classifier.preprocess import (
    ImageError,
    clean_text,
    decode_image,
    inspect_image,
    product_text,
)
from rakuten_classifier.raw_import import import_raw

HEADER = ",designation,description,productid,imageid\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- text cleaning ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<p>Ce robot d&#39;un design</p><br />", "Ce robot d'un design"),
        ("Livré &amp;amp; Éclairé", "Livré & Éclairé"),  # escaped twice; accents and case kept
        ("\ufb01gurine  \uff33\uff34\uff21\uff32\tWars", "figurine STAR Wars"),  # ligature, wide
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_clean_text(raw: object, clean: str) -> None:
    assert clean_text(raw) == clean


def test_product_text_joins_title_and_description_and_allows_empty_description() -> None:
    assert product_text("Peluche Donald", "<b>Disney</b>") == "Peluche Donald Disney"
    assert product_text("Peluche Donald", "") == "Peluche Donald"
    assert product_text("Peluche Donald", None) == "Peluche Donald"


# --- schema validation -----------------------------------------------------------------------


def test_reads_the_real_sample() -> None:
    products = read_products(SAMPLE / config.X_TRAIN_CSV)
    assert len(products) == 876
    assert products["productid"].dtype == "int64"
    assert (products["description"] == "").mean() > 0.3  # about 35% have none
    labels = read_labels(SAMPLE / config.Y_TRAIN_CSV, products)
    assert labels.nunique() == 27


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (",designation,productid,imageid\n1,Livre,12,34\n", "missing column(s) description"),
        (HEADER + "1,Livre,,abc,34\n", "column 'productid', row with index 1: expected an integer"),
        (HEADER + "1,Livre,,12,34\n2,,desc,13,35\n", "column 'designation', row with index 2"),
        (HEADER + "1,Livre,,12,34\n1,Jeu,,13,35\n", "duplicated row index"),
        (HEADER + "x,Livre,,12,34\n", "must hold integers, found 'x' on data row 1"),
        ("", "the file is empty"),
    ],
)
def test_broken_products_csv_names_file_column_and_row(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = write(tmp_path / "X.csv", content)
    with pytest.raises(DataError) as error:
        read_products(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_products(tmp_path / "absent.csv")


def test_labels_must_match_the_products(tmp_path: Path) -> None:
    products = read_products(write(tmp_path / "X.csv", HEADER + "1,A,,1,1\n2,B,,2,2\n"))
    with pytest.raises(DataError, match="row with index 2: no label"):
        read_labels(write(tmp_path / "Y.csv", ",prdtypecode\n1,10\n"), products)
    with pytest.raises(DataError, match="column 'prdtypecode', row with index 2"):
        read_labels(write(tmp_path / "Y.csv", ",prdtypecode\n1,10\n2,dix\n"), products)


# --- photos ----------------------------------------------------------------------------------


def sample_photo() -> bytes:
    return next((SAMPLE / config.IMAGE_TRAIN_DIR).glob("*.jpg")).read_bytes()


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_decode_pads_to_a_white_square_of_the_requested_size() -> None:
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    pixels = decode_image(encoded(wide, "PNG"), 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # padding
    assert tuple(pixels[32, 32]) == (255, 0, 0)  # the photo itself
    assert decode_image(sample_photo(), 224).shape == (224, 224, 3)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"not an image at all", "not_an_image"),
        (encoded(Image.new("RGB", (8, 8)), "TIFF"), "unsupported_format"),
        (sample_photo()[:2000], "corrupt"),  # truncated JPEG
    ],
)
def test_unusable_photos_raise_image_error_with_a_kind(data: bytes, kind: str) -> None:
    with pytest.raises(ImageError) as error:
        decode_image(data, 64)
    assert error.value.kind == kind


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = encoded(Image.new("L", (9000, 9000)), "PNG")  # compresses to a few kB
    assert len(bomb) < 200_000
    with pytest.raises(ImageError) as error:
        inspect_image(bomb, max_pixels=40_000_000)
    assert error.value.kind == "too_many_pixels"


def test_check_images_reports_each_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(sample_photo())
    text = write(tmp_path / "text.jpg", "hello")
    tiff = tmp_path / "tiff.jpg"
    tiff.write_bytes(encoded(Image.new("RGB", (8, 8)), "TIFF"))
    problems = check_images([good, text, tiff, tmp_path / "absent.jpg"])
    assert problems[0] is None
    assert "not an image" in problems[1]
    assert "unsupported image format TIFF" in problems[2]
    assert problems[3] == "missing"


# --- import_raw and make_dataset -------------------------------------------------------------


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    sample = make_slice(root / "slice")
    # A photo in an unknown format under the expected name: kept, classified from text.
    victim = sorted((sample / config.IMAGE_TRAIN_DIR).glob("*.jpg"))[0]
    victim.write_bytes(encoded(Image.new("RGB", (8, 8)), "TIFF"))
    raw = import_raw({"source": "sample", "sample_dir": str(sample)}, root / "raw")
    make_dataset(raw, root / "processed", {"val_size": 0.15, "test_size": 0.15}, seed=3)
    return root / "processed"


def test_splits_are_disjoint_stratified_and_complete(processed: Path) -> None:
    splits = {name: load_split(name, processed) for name in ("train", "val", "test")}
    indices = [set(frame.index) for frame in splits.values()]
    assert not (indices[0] & indices[1]) and not (indices[0] & indices[2])
    assert not (indices[1] & indices[2])
    everything = pd.concat(splits.values())
    source = read_products(processed.parent / "slice" / config.X_TRAIN_CSV)
    assert set(everything.index) == set(source.index)
    for frame in splits.values():  # every class in every split
        assert frame["prdtypecode"].nunique() == everything["prdtypecode"].nunique()
    labels = load_labels(processed)
    assert list(labels.codes) == sorted(everything["prdtypecode"].unique())
    assert labels.name(10) == "Livre occasion"


def test_rows_without_usable_photo_are_kept_and_flagged(processed: Path) -> None:
    everything = pd.concat(load_split(name, processed) for name in ("train", "val", "test"))
    assert (~everything["has_image"]).any() and everything["has_image"].any()
    unusable = everything[everything["image_problem"].fillna("").str.contains("TIFF")]
    assert len(unusable) == 1 and not unusable["has_image"].iloc[0]
    assert (everything["text"].str.len() > 0).all()
    unlabelled = load_split(config.UNLABELLED, processed)
    assert unlabelled["has_image"].all()


def test_same_seed_same_split(tmp_path: Path, processed: Path) -> None:
    again = tmp_path / "again"
    make_dataset(processed.parent / "raw", again, {"val_size": 0.15, "test_size": 0.15}, seed=3)
    for name in ("train", "val", "test"):
        assert list(load_split(name, again).index) == list(load_split(name, processed).index)


def test_import_raw_refuses_unknown_source_and_incomplete_sample(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown 'ftp'"):
        import_raw({"source": "ftp", "sample_dir": str(SAMPLE)}, tmp_path / "raw")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(SAMPLE / config.X_TRAIN_CSV, partial)
    with pytest.raises(DataError, match="file not found in the sample folder"):
        import_raw({"source": "sample", "sample_dir": str(partial)}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-written
