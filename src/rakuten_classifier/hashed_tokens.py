"""Strings as 64-bit polynomial hashes computed with NumPy, a table from hashes to columns,
the word tokens of a batch of texts found without a regular expression, and the chunked
assembly of n-gram counts: the n-gram counters and the word-vector block look terms up with
no Python statement per token.

A term's hash is sum(c_i * M^(len-1-i)) mod 2^64 over its code points plus one (a leading
character never hashes like nothing); the hash of "a b" follows from those of "a" and "b".
Hashes are 64-bit: a table refuses a vocabulary in which two terms share one, and its owner
then falls back to a loop over strings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# Word tokens of letters (accented too) and digits; one-letter words carry little. The
# tokeniser below finds exactly this pattern's matches (maximal runs of two or more `\w`).
WORD_PATTERN = r"(?u)\b\w\w+\b"
MULTIPLIER = np.uint64(0x100000001B3)  # FNV's 64-bit prime
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, for the table's slots
SPACE = np.uint64(ord(" ") + 1)
CHUNK_TEXTS = 1024  # texts whose tokens or windows are hashed together: bounded memory


class CollisionError(ValueError):
    """Two vocabulary terms share a hash: this vocabulary needs a loop over strings."""


def codes(text: str) -> np.ndarray:
    """The text's code points plus one, as the hashes take them."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + 1


def span_hashes(points: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The hash of each span `points[start : start + length]`; the longest spans first, so
    that the spans still growing at each position are a prefix (one slice, no mask)."""
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[order], lengths[order]
    still = np.searchsorted(-lengths, -np.arange(int(lengths.max(initial=0))), side="left")
    hashes = np.zeros(len(order), dtype=np.uint64)
    for position, count in enumerate(still.tolist()):
        hashes[:count] = hashes[:count] * MULTIPLIER + points[starts[:count] + position]
    out = np.empty_like(hashes)
    out[order] = hashes
    return out


def term_hashes(terms: Sequence[str]) -> np.ndarray:
    """The hash of each whole term."""
    lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
    starts = np.cumsum(lengths) - lengths
    return span_hashes(codes("".join(terms)), starts, lengths)


def powers(size: int) -> np.ndarray:
    """MULTIPLIER^k for k < size (wrapping, as the hashes do)."""
    out = np.ones(max(size, 1), dtype=np.uint64)
    out[1:] = MULTIPLIER
    return np.multiply.accumulate(out)


class HashTable:
    """Hash -> value (a non-negative integer) by open addressing with a quarter of the slots
    used: a lookup is one or two gathers (a binary search over sorted hashes took 18). Each
    slot holds its key and its value side by side, so one cache line gives both. Probing
    runs forward without wrapping: the table has a few spare slots past its 2^bits, and an
    empty one after the last term."""

    def __init__(self, hashes: np.ndarray, values: np.ndarray) -> None:
        self.bits = max(4, int(np.ceil(np.log2(max(len(hashes), 1) * 4))))
        # Sorted by the spread hash: by home slot (its top bits), and as the spreading is a
        # bijection (an odd multiplier), equal hashes end up side by side.
        spread = hashes * _SPREAD
        order = np.argsort(spread)
        spread = spread[order]
        if np.any(spread[1:] == spread[:-1]):
            raise CollisionError("two terms share a 64-bit hash")
        homes = (spread >> np.uint64(64 - self.bits)).astype(np.int64)
        # Linear probing, all at once: in home order each term takes the first free slot at
        # or after its home, i.e. slot_i = max(home_i, slot_(i-1) + 1) = i + max_(j<=i)(home_j - j).
        rank = np.arange(len(order))
        placed = rank + np.maximum.accumulate(homes - rank) if len(order) else rank
        size = max(1 << self.bits, int(placed.max(initial=0)) + 2)
        self.slots = np.zeros((size, 2), dtype=np.int64)
        self.slots[:, 1] = -1  # an empty slot
        self.slots[placed, 0] = hashes[order].view(np.int64)
        self.slots[placed, 1] = values[order]

    def _slots(self, hashes: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the product's top bits depend on every bit of the hash.
        return ((hashes * _SPREAD) >> np.uint64(64 - self.bits)).astype(np.int64)

    def _gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Each slot read as one 16-byte item: NumPy's 1-D gather, much faster than rows.
        pairs = self.slots.view(np.complex128).ravel()[slots].view(np.int64)
        return pairs[0::2], pairs[1::2]

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """The value of each hash, -1 for hashes not in the table."""
        keys, slots = hashes.view(np.int64), self._slots(hashes)
        key, value = self._gather(slots)
        hit = key == keys  # an empty slot's key is 0 and its value -1: no harm either way
        found = np.where(hit, value, -1)
        active = np.flatnonzero((value >= 0) & ~hit)  # the few that collided: probe on
        slots = slots[active]
        while active.size:
            slots = slots + 1
            key, value = self._gather(slots)
            hit = (value >= 0) & (key == keys[active])
            found[active[hit]] = value[hit]
            probing = (value >= 0) & ~hit
            active, slots = active[probing], slots[probing]
        return found


def _is_word_char(char: str) -> bool:
    # `\w` of Python's re on str: alphanumeric in Unicode's sense, or "_".
    return char.isalnum() or char == "_"


@functools.cache
def _plane_table(test: Callable[[str], bool]) -> np.ndarray:
    return np.array([test(chr(c)) for c in range(0x10000)], dtype=bool)


def _classify(points: np.ndarray, test: Callable[[str], bool]) -> np.ndarray:
    """test(chr(c)) for each code point: a table for the Basic Multilingual Plane (built once,
    a few ms), the rare code points beyond it one by one."""
    table = _plane_table(test)
    out = table[np.minimum(points, len(table) - 1)]
    beyond = points >= len(table)
    if beyond.any():
        out[beyond] = [test(chr(c)) for c in points[beyond].tolist()]
    return out


def is_word(points: np.ndarray) -> np.ndarray:
    r"""Which code points `\w` matches (tests/test_char_ngrams.py checks every one)."""
    return _classify(points, _is_word_char)


def is_space(points: np.ndarray) -> np.ndarray:
    """Which code points `str.split()` splits on."""
    return _classify(points, str.isspace)


def lowered_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The lower-cased texts' code points, one newline after each, and where each text ends
    in them (lowering may change a text's length: "İ" becomes two code points)."""
    lowered = list(map(str.lower, texts))
    sizes = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered)) + 1
    points = np.frombuffer("\n".join(lowered).encode("utf-32-le"), dtype=np.uint32)
    return points, np.cumsum(sizes)


def runs(mask: np.ndarray, text_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each maximal run of True in `mask` (over `lowered_points`) starts and ends, and
    the text it lies in (the newline between texts is never part of a run)."""
    edges = np.diff(mask.astype(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return starts, ends, np.searchsorted(text_ends, starts, side="right")


@dataclass
class Tokens:
    """A batch's word tokens in text order: hash, length in characters, owning text."""

    hashes: np.ndarray
    lengths: np.ndarray
    owners: np.ndarray

    def select(self, keep: np.ndarray) -> Tokens:
        return Tokens(self.hashes[keep], self.lengths[keep], self.owners[keep])


def word_tokens(texts: Sequence[str]) -> Tokens:
    """The matches of WORD_PATTERN in each lower-cased text, as `re.findall` lists them."""
    points, text_ends = lowered_points(texts)
    starts, ends, owners = runs(is_word(points), text_ends)
    long_enough = ends - starts >= 2
    starts, lengths, owners = starts[long_enough], (ends - starts)[long_enough], owners[long_enough]
    hashes = span_hashes(points.astype(np.uint64) + 1, starts, lengths)
    return Tokens(hashes, lengths, owners)


def join_hashes(left: np.ndarray, right: np.ndarray, right_lengths: np.ndarray) -> np.ndarray:
    """The hash of `left + " " + right` from the hashes of both sides."""
    return (left * MULTIPLIER + SPACE) * powers(int(right_lengths.max(initial=0)) + 1)[
        right_lengths
    ] + right


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc's malloc_trim). Each chunk's
    arrays are a few MB, below glibc's mmap threshold: freed, they stayed in the heap, and a
    full-size train_text then peaked 330 MB higher (2,851 MiB against 2,524)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class HashedNgramCounter:
    """Products x vocabulary counts from the cells (row * width + column) of every known
    n-gram that a subclass's `_cells` finds in a chunk of texts."""

    width: int

    def _cells(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def counts(self, texts: Sequence[str], dtype: type = np.float64) -> sp.csr_matrix:
        """Products x vocabulary counts, sorted indices, as `CountVectorizer._count_vocab`
        builds them. A few thousand texts at a time (every window of the 85k training texts
        at once took about 2 GB); 32-bit column indices, as scikit-learn's, and each array
        assembled on its own so that a chunk list and its concatenation are the most memory
        ever holds (85k texts: 1.1 GB, scikit-learn 1.3)."""
        columns, counts, lengths = [], [], []
        # Trimming walks the whole heap: worth it after chunks of megabytes, not for the few
        # texts of an API request (it was a tenth of the model thread's time there).
        trim = release_freed_memory if len(texts) > CHUNK_TEXTS else lambda: None
        for first in range(0, len(texts), CHUNK_TEXTS):
            chunk = texts[first : first + CHUNK_TEXTS]
            cells = self._cells(chunk)
            if len(chunk) * self.width < 2**31:
                cells = cells.astype(np.int32)  # sorts in half the time
            # One sort gives CSR order (rows, then columns) and the counts of repeats.
            cell, count = np.unique(cells, return_counts=True)
            del cells
            rows, chunk_columns = np.divmod(cell, max(self.width, 1))
            columns.append(chunk_columns.astype(np.int32))
            counts.append(count.astype(dtype))
            lengths.append(np.bincount(rows, minlength=len(chunk)))
            del cell, rows, chunk_columns
            trim()
        per_text = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        total = int(per_text.sum())
        indptr = np.zeros(len(texts) + 1, np.int32 if total < 2**31 else np.int64)
        np.cumsum(per_text, out=indptr[1:])
        indices = np.concatenate(columns) if columns else np.zeros(0, np.int32)
        del columns
        data = np.concatenate(counts) if counts else np.zeros(0, dtype)
        del counts
        trim()
        return sp.csr_matrix((data, indices, indptr), shape=(len(texts), self.width))
