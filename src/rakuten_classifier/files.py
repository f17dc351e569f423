"""Writes that never leave a half-written file or folder behind: temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` in one rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the extension: Keras and h5py choose the format by it.
    suffix = ".tmp" + "".join(dest.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest`; on success it takes the place of `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    """Pretty, key-sorted JSON (stable diffs in git and `dvc metrics diff`), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_pickle(path: Path, obj: Any) -> None:
    """A fitted scikit-learn object, written atomically (pickle protocol 5: numpy arrays as
    raw buffers). Read back with `read_pickle`, whose C unpickler loads the text model's
    vocabularies 15x faster than joblib's Python one (0.15 s against 2.2 s).

    The bytes are those of the object read back: pickle shares a string it has seen by
    identity, and whether two equal attribute names of a freshly fitted object are one string
    depends on what the process interned before (a model refit after a bundle was loaded
    pickled 43 bytes apart). Unpickling interns every attribute name, so the round trip
    leaves only the sharing that the object itself defines."""
    data = pickle.dumps(pickle.loads(pickle.dumps(obj, protocol=5)), protocol=5)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def read_pickle(path: Path) -> Any:
    """Only for files this project wrote (bundles are checked against their manifest first):
    unpickling runs code."""
    with open(path, "rb") as stream:
        return pickle.load(stream)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
