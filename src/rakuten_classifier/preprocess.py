"""The contract that training and serving share: how a product's texts become model input and
how its photo is read, checked and decoded.

make_dataset, the training stages, the batch command and the API all call these functions, so a
product looks the same to a model wherever it is classified.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import math
import os
import re
import threading
import unicodedata
import zipfile
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# --- text -----------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Unicode categories dropped from text: format characters (zero-width spaces and joiners, soft
# hyphens, byte-order marks) and control characters. They are invisible, so a title made of
# them is empty, and they would split words the reader sees as one.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cs", "Cn"})


def _drop_invisible(text: str) -> str:
    return "".join(
        char
        for char in text
        if char.isspace() or unicodedata.category(char) not in _INVISIBLE_CATEGORIES
    )


def clean_text(value: object) -> str:
    """HTML unescaped and stripped, NFKC-normalised (accents kept), invisible characters
    dropped, spaces folded. The case is kept: the sentence encoders read it (e5 gains half a
    point on cased text); every other block of the text model lowercases for itself."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    # Some descriptions are escaped twice (`&amp;#39;`): unescape until stable, at most twice.
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _TAG.sub(" ", text)
    # NFKC folds ligatures, full-width forms and exotic spaces but keeps "é" as one code point:
    # accents carry meaning in French ("livre"/"livré") so they are not stripped.
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text))
    if not text.isprintable():  # rare: the character scan only runs when there is one to drop
        text = _SPACE.sub(" ", _drop_invisible(text))
    return text.strip()


def has_visible_text(value: object) -> bool:
    """Whether a title has anything left once cleaned: the rule for an empty designation."""
    return bool(clean_text(value))


def product_text(designation: object, description: object) -> str:
    """The model input of one product: its cleaned title, then its cleaned description."""
    return " ".join(part for part in (clean_text(designation), clean_text(description)) if part)


# --- photos ---------------------------------------------------------------------------------

# Formats Pillow decodes safely and that product photos come in.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
# Above this a file is treated as a decompression bomb, before any pixel is decoded.
MAX_PIXELS = 40_000_000
# Product photos have white backgrounds: pad to a square with white rather than distort.
PAD_COLOR = (255, 255, 255)
# The size a photo is decoded to when it is only checked (make_dataset): JPEG decodes at 1/8
# scale, yet every byte of the file is read, so a truncated body is found.
CHECK_SIZE = 64


class ImageError(ValueError):
    """A photo that cannot be used; `kind` says why, for API status codes and metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# A photo is a file, or a member of a zip archive written as a path through the archive:
# data/raw/images.zip/image_train/image_<imageid>_product_<productid>.jpg
# Either may be a URL read through fsspec (s3://bucket/raw/images.zip/image_train/...), for
# Dask workers on other machines: s3fs takes its endpoint and keys from the AWS_* variables.
ARCHIVE_SUFFIX = ".zip"


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def photo_location(folder: str | os.PathLike[str], name: str) -> str:
    """Where photo `name` is in `folder` (a folder, a folder through an archive, or a URL of
    either; Path would fold a URL's "//")."""
    if is_url(folder):
        return f"{str(folder).rstrip('/')}/{name}"
    return str(Path(folder) / name)


def absolute_location(folder: str | os.PathLike[str]) -> str:
    """`folder` as another process in another folder (a Dask worker) reads it."""
    return str(folder) if is_url(folder) else str(Path(folder).resolve())


def split_archive_path(location: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(archive file, member name) when `location` goes through a local zip archive, else
    None."""
    if is_url(location):
        return None
    archive, separator, member = Path(location).as_posix().partition(ARCHIVE_SUFFIX + "/")
    if separator and Path(archive + ARCHIVE_SUFFIX).is_file():
        return Path(archive + ARCHIVE_SUFFIX), member
    return None


@functools.lru_cache(maxsize=4)
def _open_archive(path: Path, mtime_ns: int, size: int) -> zipfile.ZipFile:
    # One open archive per version of the file, shared by the decoding threads (reading
    # members concurrently is safe): its directory of ~99k entries (60 MB) is parsed once.
    return zipfile.ZipFile(path)


@functools.lru_cache(maxsize=4)
def _open_remote_archive(url: str) -> fsspec.AbstractFileSystem:
    # The directory is read once (ranged reads), then each member on its own: the archive is
    # never downloaded whole. A remote archive replaced during a run is not noticed.
    return fsspec.filesystem("zip", fo=url)


# Threads starting together would each parse the archive before the cache holds it.
_ARCHIVE_LOCK = threading.Lock()


def _read_remote(url: str) -> bytes | None:
    """A photo at a URL, or None if there is none there; other failures (an unreachable
    store, refused keys) raise: a run must not quietly classify everything from its text."""
    archive, separator, member = url.partition(ARCHIVE_SUFFIX + "/")
    try:
        if separator:
            with _ARCHIVE_LOCK:
                opened = _open_remote_archive(archive + ARCHIVE_SUFFIX)
            return opened.cat_file(member)
        filesystem, path = fsspec.core.url_to_fs(url)
        return filesystem.cat_file(path)
    except (FileNotFoundError, KeyError):
        return None


def read_photo(location: str | os.PathLike[str], missing_ok: bool = False) -> bytes | None:
    """The bytes of a photo file or archive member, local or at a URL. A missing photo raises
    ImageError ("missing"), or gives None with `missing_ok`; an unreadable archive member is
    "corrupt"."""
    try:
        if is_url(location):
            data = _read_remote(str(location))
            if data is not None:
                return data
        elif (inside := split_archive_path(location)) is None:
            if Path(location).is_file():
                return Path(location).read_bytes()
        else:
            archive, member = inside
            stat = archive.stat()
            with _ARCHIVE_LOCK:
                opened = _open_archive(archive, stat.st_mtime_ns, stat.st_size)
            with contextlib.suppress(KeyError):
                return opened.read(member)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ImageError("corrupt", f"{location}: unreadable in its archive ({error})") from error
    if missing_ok:
        return None
    raise ImageError("missing", f"{location}: no such photo")


def inspect_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, tuple[int, int]]:
    """Format and size from the header alone (cheap): rejects non-images, unknown formats
    and decompression bombs without decoding any pixel."""
    too_many = f"the photo has more pixels than the limit of {max_pixels} (decompression bomb)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, size = image.format, image.size
    except Image.DecompressionBombError as error:
        # Pillow's own, larger limit: the answer still names the one this server applies.
        raise ImageError("too_many_pixels", too_many) from error
    except UnidentifiedImageError as error:
        raise ImageError("not_an_image", "not an image Pillow can read") from error
    except OSError as error:
        raise ImageError("corrupt", f"unreadable image header ({error})") from error
    if image_format not in SUPPORTED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"unsupported image format {image_format}; use one of {sorted(SUPPORTED_FORMATS)}",
        )
    if size[0] * size[1] > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"{size[0]}x{size[1]} pixels is over the limit of {max_pixels} (decompression bomb)",
        )
    return image_format, size


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Photo bytes to a `size x size x 3` uint8 RGB array: EXIF orientation applied, padded
    to a square with white, resized bilinearly. Raises ImageError on anything unusable,
    a file whose body is truncated included."""
    inspect_image(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for 500 -> 224.
            image.draft("RGB", (size, size))
            image = ImageOps.exif_transpose(image).convert("RGB")
            image = ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=PAD_COLOR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError("corrupt", f"cannot decode image ({error})") from error


def check_photo(location: str | os.PathLike[str]) -> str | None:
    """None if the photo at `location` can be used, else why not ("missing", or the problem):
    the header is inspected and the whole body decoded at a small size."""
    try:
        data = read_photo(location, missing_ok=True)
        if data is None:
            return "missing"
        decode_image(data, CHECK_SIZE)
    except ImageError as error:
        return str(error)
    return None
