"""The import_raw stage: the challenge files, from the embedded sample or the full data set,
laid out in data/raw with every photo in one uncompressed, reproducible images.zip.

DVC deletes a stage's outputs before it runs, so downloads land in a cache outside data/raw
(`config.DOWNLOAD_CACHE_DIR`): an interrupted download resumes and a finished one is not
fetched again.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.data import DataError
from rakuten_classifier.download import DownloadError, download_file
from rakuten_classifier.files import atomic_dir, atomic_path

CHALLENGE_FILES = (config.X_TRAIN_CSV, config.Y_TRAIN_CSV, config.X_TEST_CSV)
METADATA_FILES = (config.CATEGORIES_CSV, config.CLASS_COUNTS_CSV)
PHOTO_SPLITS = (config.IMAGE_TRAIN_DIR.name, config.IMAGE_TEST_DIR.name)
# What the Hugging Face mirror serves: the three CSVs and the photos' archive.
DOWNLOADED_FILES = (*CHALLENGE_FILES, config.IMAGES_ZIP)

# Fixed member dates: the same photos always give the same archive, byte for byte.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_JUNK_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}


class ArchiveError(RuntimeError):
    """The downloaded photos' archive is unusable (not a zip, unsafe paths, wrong layout)."""


# --- writing data/raw/images.zip --------------------------------------------------------------


def _write_photos(dest: Path, photos: Iterable[tuple[str, BinaryIO]], total: int) -> int:
    """An uncompressed zip of `(member name, open source)` pairs, in the given order, with fixed
    dates: JPEGs do not compress, and reading a member then costs a seek."""
    count = 0
    with (
        zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive,
        tqdm(total=total, desc=f"archiving {dest.name}", unit="photo") as bar,
    ):
        for name, source in photos:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, _CHUNK)
            count += 1
            bar.update(1)
    return count


def archive_photos(images_dir: Path, dest: Path) -> int:
    """The photos of `images_dir/image_train` and `images_dir/image_test` (the sample's
    folders) as `image_train/<name>`, `image_test/<name>` in one archive. Returns the count."""
    files = [
        (f"{split}/{path.name}", path)
        for split in PHOTO_SPLITS
        if (Path(images_dir) / split).is_dir()
        for path in sorted((Path(images_dir) / split).iterdir())
        if path.is_file()
    ]
    return _write_photos(dest, ((name, path.open("rb")) for name, path in files), len(files))


def _unsafe_member(name: str) -> bool:
    # Zip slip: absolute paths, Windows drive letters and ".." have no place in the layout.
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return True
    return ".." in normalised.split("/")


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(part in _JUNK_PARTS for part in parts) or parts[-1].startswith("._")


def select_photos(source: zipfile.ZipFile, zip_path: Path) -> dict[str, list[zipfile.ZipInfo]]:
    """The JPEGs directly under `<prefix>/image_train/` and `<prefix>/image_test/` of the
    challenge's archive, whatever its folder prefix; junk (`__MACOSX/`...) is skipped."""
    unsafe = [info.filename for info in source.infolist() if _unsafe_member(info.filename)]
    if unsafe:
        raise ArchiveError(
            f"{zip_path} contains unsafe member paths (absolute or with '..'), refusing to "
            f"read it: {unsafe[:5]}. Delete it and download it again from a trusted source."
        )
    by_prefix: dict[tuple[str, ...], dict[str, list[zipfile.ZipInfo]]] = {}
    for info in source.infolist():
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.is_dir() or len(parts) < 2 or _is_junk(parts):
            continue
        if parts[-2] in PHOTO_SPLITS and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            groups = by_prefix.setdefault(parts[:-2], {split: [] for split in PHOTO_SPLITS})
            groups[parts[-2]].append(info)
    if not any(groups[PHOTO_SPLITS[0]] for groups in by_prefix.values()):
        raise ArchiveError(
            f"{zip_path} has no JPEG under an image_train/ folder, so it is not the challenge "
            "images archive. Check the base URL in params.yaml (data.hf_base_url), or delete "
            f"{zip_path} so that it is downloaded again."
        )
    # Normally one prefix ("", "images/"...); should there be several, the one with the most
    # training photos is the data set.
    prefix = max(by_prefix, key=lambda key: len(by_prefix[key][PHOTO_SPLITS[0]]))
    if len(by_prefix) > 1:
        others = sorted("/".join(key) or "<root>" for key in by_prefix if key != prefix)
        logger.warning(
            "%s: using the photos under %r, ignoring %s", zip_path, "/".join(prefix), others
        )
    if not by_prefix[prefix][PHOTO_SPLITS[1]]:
        logger.warning("%s has no image_test/ photos", zip_path)
    return by_prefix[prefix]


def _unique_members(
    chosen: Mapping[str, list[zipfile.ZipInfo]], zip_path: Path
) -> list[tuple[str, zipfile.ZipInfo]]:
    """(`split/name`, member) sorted by that name, the first of any duplicated name kept."""
    members: dict[str, zipfile.ZipInfo] = {}
    for split, infos in chosen.items():
        for info in infos:
            name = f"{split}/{PurePosixPath(info.filename.replace(chr(92), '/')).name}"
            if name in members:
                logger.warning("%s: duplicate %s skipped", zip_path, name)
                continue
            members[name] = info
    return sorted(members.items())


def repack_photos(zip_path: Path, dest: Path) -> dict[str, int]:
    """The challenge's photo archive straight into data/raw's layout, in one pass: each member
    is streamed from the downloaded zip into `dest` (CRC checked at its end), nothing is
    extracted to disk. Returns the number of photos per split."""
    zip_path = Path(zip_path)
    try:
        source = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(
            f"cannot open {zip_path} as a zip archive ({error}); delete it so that it is "
            "downloaded again"
        ) from error
    with source:
        members = _unique_members(select_photos(source, zip_path), zip_path)
        opened: Iterator[tuple[str, BinaryIO]] = (
            (name, source.open(info)) for name, info in members
        )
        try:
            with atomic_path(dest) as tmp:
                _write_photos(tmp, opened, len(members))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
            raise ArchiveError(
                f"{zip_path} is corrupt ({error}); delete it so that it is downloaded again"
            ) from error
    counts = {
        split: sum(name.startswith(f"{split}/") for name, _ in members) for split in PHOTO_SPLITS
    }
    logger.info("%s repacked into %s: %s", zip_path, dest, counts)
    return counts


# --- the two sources ----------------------------------------------------------------------


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


def _join_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + quote(name)


def fetch_challenge_data(
    base_url: str,
    out_dir: Path,
    cache_dir: Path,
    *,
    checksums: Mapping[str, str] | None = None,
    **download_kwargs: Any,
) -> Path:
    """Download the challenge files into `cache_dir` (resumable, finished files reused, checked
    against `checksums[name]` when given) and lay them out in `out_dir`: the CSVs copied, the
    photos repacked as images.zip. `download_kwargs` go to `download_file`. Returns `out_dir`."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
        raise DownloadError(
            str(base_url),
            "not an http(s) URL",
            hint="Set the base URL in params.yaml (data.hf_base_url)",
            manual=f"download {', '.join(DOWNLOADED_FILES)} manually into {cache_dir}",
        )
    checksums = dict(checksums or {})
    unknown = sorted(set(checksums) - set(DOWNLOADED_FILES))
    if unknown:
        logger.warning("checksums given for files that are not fetched: %s", unknown)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Everything is downloaded first: a network failure then leaves out_dir untouched.
    local = {
        name: download_file(
            _join_url(base_url, name),
            cache_dir / name,
            expected_sha256=checksums.get(name),
            **download_kwargs,
        )
        for name in DOWNLOADED_FILES
    }
    for name in CHALLENGE_FILES:
        # Copied, not linked: DVC may move its outputs into its cache, and the download cache
        # must stay intact for the next run.
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(local[name], tmp)
    repack_photos(local[config.IMAGES_ZIP], out_dir / config.IMAGES_ZIP)
    logger.info("challenge data ready in %s", out_dir)
    return out_dir


def import_raw(params: dict[str, Any], out_dir: Path = config.RAW_DIR) -> Path:
    """The import_raw stage: the challenge files into `out_dir`, from `params["source"]`."""
    source = params["source"]
    if source == "sample":
        return import_sample(Path(params["sample_dir"]), out_dir)
    if source != "huggingface":
        raise ValueError(f"params.yaml data.source: unknown '{source}' (sample or huggingface)")
    with atomic_dir(out_dir) as tmp:
        fetch_challenge_data(
            params["hf_base_url"],
            tmp,
            config.DOWNLOAD_CACHE_DIR,
            checksums=params.get("checksums") or None,
        )
        # Project metadata (category names, full class counts) is not part of the download.
        for name in METADATA_FILES:
            if (Path(params["sample_dir"]) / name).exists():
                shutil.copy2(Path(params["sample_dir"]) / name, tmp / name)
    return Path(out_dir)
