"""Counting a fitted vocabulary's character n-grams inside word boundaries (scikit-learn's
`char_wb` analyser) with NumPy instead of a Python loop over every n-gram.

scikit-learn slices each padded word into its n-grams one string at a time and looks each up
in a dict: about 1,700 strings a product, 0.8 ms of the text model's 1.1 ms. Here every
product's padded words become one array of code points; a rolling polynomial hash gives all
windows of each length at once, and a sorted array of the vocabulary's hashes finds their
columns. The counts are the same numbers scikit-learn computes (tests/test_text_speed.py
compares them on the sample and on edge cases); hashes are 64-bit, and the index refuses a
vocabulary in which two terms share one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

# Odd 64-bit multiplier of the rolling hash (FNV's prime); code points enter as c + 1, so a
# leading character never hashes like nothing.
_MULTIPLIER = np.uint64(0x100000001B3)
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, for the table's slots
CHUNK_TEXTS = 1024  # texts whose windows are hashed together


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc's malloc_trim). Each chunk's
    arrays are a few MB, below glibc's mmap threshold: freed, they stayed in the heap, and a
    full-size train_text then peaked 330 MB higher (2,851 MiB against 2,524)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + 1


def _hashes_of_terms(terms: Sequence[str]) -> np.ndarray:
    """The rolling hash of each whole term, computed as `CharNgramIndex.counts` computes a
    window's."""
    lengths = np.fromiter((len(term) for term in terms), dtype=np.int64, count=len(terms))
    codes = _codes("".join(terms))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    hashes = np.zeros(len(terms), dtype=np.uint64)
    for position in range(int(lengths.max(initial=0))):
        inside = position < lengths
        hashes[inside] = hashes[inside] * _MULTIPLIER + codes[starts[inside] + position]
    return hashes


class CollisionError(ValueError):
    """Two vocabulary terms share a hash: this vocabulary needs scikit-learn's own loop."""


class CharNgramIndex:
    """The columns of a fitted `char_wb` vocabulary, found by hash (lower-cased text; n-grams
    from `min_n` to `max_n` characters, `min_n` <= 3 so that every padded word has them).

    The hashes sit in an open-addressing table with a quarter of its slots used: a lookup is
    one or two gathers, where a binary search over the sorted hashes took 18 (3x slower)."""

    def __init__(self, vocabulary: dict[str, int], ngram_range: tuple[int, int]) -> None:
        self.min_n, self.max_n = ngram_range
        if self.min_n > 3:
            raise ValueError("char n-grams longer than 3 characters at least: not supported")
        terms = list(vocabulary)
        hashes = _hashes_of_terms(terms)
        if len(np.unique(hashes)) < len(hashes):
            raise CollisionError("two vocabulary terms share a 64-bit hash")
        columns = np.fromiter((vocabulary[t] for t in terms), np.int64, len(terms))
        self.width = len(terms)
        self.bits = max(4, int(np.ceil(np.log2(max(self.width, 1) * 4))))
        size = 1 << self.bits
        self.keys = np.zeros(size, dtype=np.uint64)
        self.columns = np.full(size, -1, dtype=np.int64)  # -1: an empty slot
        pending, slots = np.arange(self.width), self._slots(hashes)
        while pending.size:  # linear probing: each round places one term per free slot
            wanted = slots[pending]
            free = self.columns[wanted] < 0
            taken, first = np.unique(wanted[free], return_index=True)
            placed = pending[free][first]
            self.keys[taken], self.columns[taken] = hashes[placed], columns[placed]
            pending = np.setdiff1d(pending, placed, assume_unique=True)
            slots[pending] = (slots[pending] + 1) & (size - 1)

    def _slots(self, hashes: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the product's top bits depend on every bit of the hash.
        return ((hashes * _SPREAD) >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """The column of each hash, -1 for n-grams outside the vocabulary."""
        found = np.full(len(hashes), -1, dtype=np.int64)
        active, slots = np.arange(len(hashes)), self._slots(hashes)
        while active.size:
            column = self.columns[slots]
            hit = (column >= 0) & (self.keys[slots] == hashes[active])
            found[active[hit]] = column[hit]
            probing = (column >= 0) & ~hit
            active = active[probing]
            slots = (slots[probing] + 1) & (len(self.keys) - 1)
        return found

    def counts(self, texts: Sequence[str], dtype: type = np.float64) -> sp.csr_matrix:
        """Products x vocabulary counts of each text's n-grams, sorted indices, as
        `CountVectorizer._count_vocab` builds them. A few thousand texts at a time (every
        window of the 85k training texts at once took about 2 GB); 32-bit column indices, as
        scikit-learn's, and each array assembled on its own so that a chunk list and its
        concatenation are the most memory ever holds (85k texts: 1.1 GB, scikit-learn 1.3)."""
        columns, counts, lengths = [], [], []
        # Trimming walks the whole heap: worth it after chunks of megabytes, not for the few
        # texts of an API request (it was a tenth of the model thread's time there).
        trim = release_freed_memory if len(texts) > CHUNK_TEXTS else lambda: None
        for first in range(0, len(texts), CHUNK_TEXTS):
            chunk_columns, chunk_counts, chunk_lengths = self._chunk(
                texts[first : first + CHUNK_TEXTS]
            )
            columns.append(chunk_columns.astype(np.int32))
            counts.append(chunk_counts.astype(dtype))
            lengths.append(chunk_lengths)
            del chunk_columns, chunk_counts
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

    def _chunk(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The columns and counts of each text's known n-grams (text by text, columns in
        order), and how many each text has."""
        words = [text.lower().split() for text in texts]
        lengths = np.fromiter((len(w) + 2 for ws in words for w in ws), dtype=np.int64)
        owners = np.repeat(
            np.arange(len(texts)), np.fromiter((len(ws) for ws in words), np.int64, len(texts))
        )
        codes = _codes("".join(f" {w} " for ws in words for w in ws))
        ends = np.repeat(np.cumsum(lengths), lengths)  # where each position's word ends
        rows_of = np.repeat(owners, lengths)
        positions = np.arange(len(codes))
        cells = [np.zeros(0, np.int64)]  # row * width + column of every n-gram found
        hashes = np.zeros(len(codes), dtype=np.uint64)
        for n in range(1, self.max_n + 1):
            span = len(codes) - n + 1
            if span <= 0:
                break
            # hashes[i] becomes the hash of codes[i : i + n]
            hashes = hashes[:span] * _MULTIPLIER + codes[n - 1 :]
            if n < self.min_n:
                continue
            inside = positions[:span] + n <= ends[:span]
            found = self.lookup(hashes[inside])
            known = found >= 0
            cells.append(rows_of[:span][inside][known] * self.width + found[known])
        # One sort gives CSR order (rows, then columns) and the counts of repeated n-grams.
        cell, count = np.unique(np.concatenate(cells), return_counts=True)
        rows, columns = np.divmod(cell, max(self.width, 1))
        return columns, count, np.bincount(rows, minlength=len(texts))
