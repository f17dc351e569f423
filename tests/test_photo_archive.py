"""Photos kept in one zip archive (data/raw/images.zip) and read as paths through it: the
import writes it reproducibly, every reader gets the original bytes, and missing or broken
photos are reported as before."""

from __future__ import annotations

import io
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import numpy as np
import pytest
from conftest import SAMPLE, make_slice
from services import BUCKET, KEY_ID, SECRET

from rakuten_classifier import config, raw_import
from rakuten_classifier.data import check_images, image_paths, read_products
from rakuten_classifier.files import sha256_file
from rakuten_classifier.preprocess import ImageError, read_photo, split_archive_path
from rakuten_classifier.raw_import import archive_photos, import_raw, import_sample


def photos_of(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.jpg"))


def test_import_sample_archives_every_photo_byte_for_byte_and_reproducibly(
    tmp_path: Path,
) -> None:
    source = make_slice(tmp_path / "slice")
    first = import_sample(source, tmp_path / "raw1")
    second = import_sample(source, tmp_path / "raw2")
    assert not (first / "images").exists()
    archive = first / config.IMAGES_ZIP
    assert sha256_file(archive) == sha256_file(second / config.IMAGES_ZIP)
    originals = photos_of(source / "images")
    with zipfile.ZipFile(archive) as opened:
        assert len(opened.namelist()) == len(originals) > 0
    for photo in originals:
        inside = archive / photo.parent.name / photo.name
        assert read_photo(inside) == photo.read_bytes()


def test_full_data_import_repacks_the_downloaded_photos_as_one_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hugging Face import, served from 127.0.0.1: the challenge's images.zip (with its
    own folder prefix, compressed) becomes the same images.zip layout as the sample's."""
    source = make_slice(tmp_path / "slice")
    served = tmp_path / "served"
    served.mkdir()
    for name in (config.X_TRAIN_CSV, config.Y_TRAIN_CSV, config.X_TEST_CSV):
        (served / name).write_bytes((source / name).read_bytes())
    originals = photos_of(source / "images")
    with zipfile.ZipFile(served / "images.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for photo in originals:
            archive.write(photo, f"images/{photo.parent.name}/{photo.name}")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)  # the download cache is relative to the project root
    try:
        params = {
            "source": "huggingface",
            "hf_base_url": f"http://127.0.0.1:{server.server_address[1]}/",
            "sample_dir": str(source),
        }
        raw = import_raw(params, tmp_path / "raw")
    finally:
        server.shutdown()
    assert {path.name for path in raw.iterdir()} == {
        config.IMAGES_ZIP,
        *raw_import.CHALLENGE_FILES,
        *raw_import.METADATA_FILES,
    }
    for photo in originals:
        inside = raw / config.IMAGES_ZIP / photo.parent.name / photo.name
        assert read_photo(inside) == photo.read_bytes()


def test_missing_photos_and_plain_files(tmp_path: Path) -> None:
    photo = photos_of(SAMPLE / "images")[0]
    assert read_photo(photo) == photo.read_bytes()
    assert split_archive_path(photo) is None
    (tmp_path / "images" / "image_train").mkdir(parents=True)
    archive = tmp_path / "images.zip"
    archive_photos(tmp_path / "images", archive)
    for missing in (tmp_path / "absent.jpg", archive / "image_train" / "absent.jpg"):
        assert read_photo(missing, missing_ok=True) is None
        with pytest.raises(ImageError, match="no such photo") as error:
            read_photo(missing)
        assert error.value.kind == "missing"
    # A folder whose name ends in .zip is a folder, not an archive.
    folder = tmp_path / "folder.zip" / "image_train"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(photo.read_bytes())
    assert split_archive_path(folder / "a.jpg") is None
    assert read_photo(folder / "a.jpg") == photo.read_bytes()


def test_check_images_reports_broken_members_and_archives(tmp_path: Path) -> None:
    images = tmp_path / "images" / "image_train"
    images.mkdir(parents=True)
    good = photos_of(SAMPLE / "images")[0]
    (images / "good.jpg").write_bytes(good.read_bytes())
    (images / "text.jpg").write_text("not a photo")
    archive = tmp_path / config.IMAGES_ZIP
    assert archive_photos(tmp_path / "images", archive) == 2
    inside = archive / "image_train"
    problems = check_images([inside / "good.jpg", inside / "text.jpg", inside / "gone.jpg"])
    assert problems[0] is None
    assert "not an image" in problems[1]
    assert problems[2] == "missing"

    archive.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(ImageError, match="unreadable in its archive") as error:
        read_photo(inside / "good.jpg")
    assert error.value.kind == "corrupt"


def test_photos_are_scored_one_batch_at_a_time_with_the_same_result(tmp_path: Path) -> None:
    import keras

    from rakuten_classifier.image import ImageModel, build_backbone, build_head, load_pixels

    photos = [str(path) for path in photos_of(SAMPLE / "images")[:7]]
    backbone = build_backbone("small_cnn", "none", 32)
    model = ImageModel.of_keras(keras.Sequential([backbone, build_head(3, 0.0)]), 32)
    streamed = model.logits_of_photos(photos, batch_size=3)
    assert streamed.shape == (7, 3)
    np.testing.assert_allclose(streamed, model.logits(load_pixels(photos, 32)), rtol=1e-5)
    assert model.logits_of_photos([]).shape == (0, 3)


def test_photos_on_s3_plain_and_through_an_archive(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Dask workers read when the photos are on S3 (moto on 127.0.0.1): the original
    bytes, whether the photo is an object or a member of an archive object; a photo that is
    not there is "missing", as on disk."""
    photos = photos_of(SAMPLE / "images" / "image_train")[:3]
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for photo in photos:
            archive.write(photo, f"image_train/{photo.name}")
            client.put_object(Bucket=BUCKET, Key=f"loose/{photo.name}", Body=photo.read_bytes())
    client.put_object(Bucket=BUCKET, Key="raw/images.zip", Body=buffer.getvalue())
    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": KEY_ID}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    inside = f"s3://{BUCKET}/raw/images.zip/image_train"
    locations = image_paths(read_products(SAMPLE / "X_train_update.csv"), inside)
    assert all(location.startswith(inside + "/image_") for location in locations)
    for photo in photos:
        assert read_photo(f"{inside}/{photo.name}") == photo.read_bytes()
        assert read_photo(f"s3://{BUCKET}/loose/{photo.name}") == photo.read_bytes()
    assert check_images([f"{inside}/{photos[0].name}", f"{inside}/none.jpg"]) == [None, "missing"]
    with pytest.raises(ImageError, match="no such photo"):
        read_photo(f"s3://{BUCKET}/loose/none.jpg")
