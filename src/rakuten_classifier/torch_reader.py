"""Reading a PyTorch ``torch.save`` state dict into NumPy arrays, without torch.

A restricted unpickler builds only ordered dicts and tensor references, so no code in the file
can run; both the zip format (torch >= 1.6) and the legacy format are read.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    # Storages may only be read after the pickle (legacy format), so tensors stay lazy here.
    if not isinstance(storage, _StorageRef):
        raise _RefusedPickle("tensor without a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, requires_grad: bool, backward_hooks: Any) -> _TensorRef:
    return data


class _RefusedPickle(pickle.UnpicklingError):
    """The file asks for something a plain state dict never needs."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build ordered dicts and tensor references: no code can run."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise _RefusedPickle(
            f"{self.source}: refusing to load global {module}.{name}; only plain state dicts "
            "of tensors are supported"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _RefusedPickle(f"{self.source}: unsupported persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise _RefusedPickle(f"{self.source}: unsupported storage {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            # Storage views come from very old torch versions; state dicts do not use them.
            raise _RefusedPickle(f"{self.source}: storage views are not supported")
        return self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedPickle(f"unexpected global {module}.{name} in a torch file header")


def _read_exact(f: BinaryIO, n: int, source: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{source}: file is truncated")
    return data


def _read_legacy(f: BinaryIO, source: str) -> tuple[Any, dict[str, np.ndarray]]:
    # Legacy torch.save layout: pickles of magic number, protocol version and system info, then
    # the object pickle, then the list of storage keys, then each storage as int64 numel + bytes.
    try:
        magic = _NoGlobalsUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{source}: not a torch.save file (bad magic number)")
        protocol = _NoGlobalsUnpickler(f).load()
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{source}: unsupported torch legacy protocol {protocol!r}")
        sys_info = _NoGlobalsUnpickler(f).load()
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{source}: big-endian torch files are not supported")
        unpickler = _RestrictedUnpickler(f, source)
        obj = unpickler.load()
        keys = _NoGlobalsUnpickler(f).load()
    except _RefusedPickle:
        raise
    except (EOFError, pickle.UnpicklingError, AttributeError) as exc:
        raise ValueError(f"{source}: corrupted torch file ({exc})") from exc
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise ValueError(f"{source}: storage {key!r} is not used by any tensor")
        (numel,) = struct.unpack("<q", _read_exact(f, 8, source))
        if numel != ref.numel:
            raise ValueError(
                f"{source}: storage {key!r} has {numel} elements, expected {ref.numel}"
            )
        raw = _read_exact(f, numel * ref.dtype.itemsize, source)
        storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    return obj, storages


def _read_zip(path: Path, source: str) -> tuple[Any, dict[str, np.ndarray]]:
    # Zip layout (torch >= 1.6): <root>/data.pkl plus one raw little-endian file per storage.
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{source}: expected one data.pkl in the archive, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        byteorder_name = f"{root}byteorder"
        if byteorder_name in archive.namelist() and archive.read(byteorder_name) != b"little":
            raise ValueError(f"{source}: big-endian torch files are not supported")
        with archive.open(pickles[0]) as f:
            unpickler = _RestrictedUnpickler(f, source)  # type: ignore[arg-type]
            try:
                obj = unpickler.load()
            except _RefusedPickle:
                raise
            except (EOFError, pickle.UnpicklingError, AttributeError) as exc:
                raise ValueError(f"{source}: corrupted torch file ({exc})") from exc
        storages: dict[str, np.ndarray] = {}
        for key, ref in unpickler.storages.items():
            try:
                raw = archive.read(f"{root}data/{key}")
            except KeyError as exc:
                raise ValueError(f"{source}: storage {key!r} missing from the archive") from exc
            if len(raw) != ref.numel * ref.dtype.itemsize:
                raise ValueError(f"{source}: storage {key!r} has a wrong size")
            storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    return obj, storages


def _materialize(name: str, ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages[ref.storage.key]
    if len(ref.shape) != len(ref.stride):
        raise ValueError(f"tensor {name!r}: shape {ref.shape} and stride {ref.stride} differ")
    native = ref.storage.dtype.newbyteorder("=")
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=native)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= flat.size:
        raise ValueError(f"tensor {name!r} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * flat.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=native)  # own, contiguous copy


def read_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict saved with ``torch.save`` into numpy arrays, without torch.

    Both the zip format (torch >= 1.6) and the legacy format are supported. Only the globals a
    plain state dict needs are allowed; anything else raises ``pickle.UnpicklingError``.
    A truncated or inconsistent file raises ``ValueError``.
    """
    path = Path(path)
    source = str(path)
    if zipfile.is_zipfile(path):
        obj, storages = _read_zip(path, source)
    else:
        with path.open("rb") as f:
            obj, storages = _read_legacy(f, source)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(obj).__name__}")
    state: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{source}: entry {key!r} is not a tensor")
        state[str(key)] = _materialize(str(key), value, storages)
    return state
