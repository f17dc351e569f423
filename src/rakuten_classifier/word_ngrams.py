"""Counting a fitted vocabulary's word n-grams (scikit-learn's `word` analyser with its
default token pattern) over a whole batch at once with NumPy.

scikit-learn builds each text's n-grams as strings through three nested helpers and counts
them in a dict per text. Here the batch's tokens are hashed together (`hashed_tokens`), stop
words dropped by hash, each n-gram's hash made from its words' and looked up in a table: the
same counts (tests/test_char_ngrams.py compares the matrices on the sample and on edge cases)
with no Python statement per token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from rakuten_classifier.hashed_tokens import (
    WORD_PATTERN,
    HashedNgramCounter,
    HashTable,
    join_hashes,
    term_hashes,
    word_tokens,
)


class WordNgramCounter(HashedNgramCounter):
    """Counts of the n-grams of `vocabulary` (term -> column) in texts, tokenised by
    WORD_PATTERN after lowercasing, stop words removed before the n-grams are formed.
    Raises ValueError for another token pattern and CollisionError (a ValueError) for a
    vocabulary two of whose terms share a hash: scikit-learn's loop then counts."""

    def __init__(
        self,
        vocabulary: dict[str, int],
        ngram_range: tuple[int, int],
        token_pattern: str,
        stop_words: Collection[str] | None,
    ) -> None:
        if token_pattern != WORD_PATTERN:
            raise ValueError(f"only the token pattern {WORD_PATTERN!r} is counted here")
        terms = list(vocabulary)
        columns = np.fromiter(vocabulary.values(), np.int64, len(terms))  # in key order
        self.table = HashTable(term_hashes(terms), columns)
        self.min_n, self.max_n = ngram_range
        self.stop_hashes = np.unique(term_hashes(sorted(stop_words or ())))
        self.width = max(vocabulary.values(), default=-1) + 1

    def _cells(self, texts: Sequence[str]) -> np.ndarray:
        """row * width + column of each known n-gram of the texts (rows: their positions)."""
        tokens = word_tokens(texts)
        if len(self.stop_hashes):  # sorted: a binary search (np.isin sorts them each call)
            at = np.searchsorted(self.stop_hashes, tokens.hashes) % len(self.stop_hashes)
            tokens = tokens.select(self.stop_hashes[at] != tokens.hashes)
        cells = [np.zeros(0, np.int64)]
        hashes = tokens.hashes
        for n in range(1, self.max_n + 1):
            if n > 1:  # the n-gram at each token: its (n-1)-gram, a space, the next word
                last = tokens.hashes[n - 1 :], tokens.lengths[n - 1 :]
                hashes = join_hashes(hashes[:-1], *last)
            if n >= self.min_n:
                owners = tokens.owners[: len(hashes)]
                inside = owners == tokens.owners[n - 1 :]  # first and last word, one text
                found = self.table.lookup(hashes[inside])
                known = found >= 0
                cells.append(owners[inside][known] * self.width + found[known])
        return np.concatenate(cells)
