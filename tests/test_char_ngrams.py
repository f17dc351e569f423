"""The NumPy counts of character and word n-grams against scikit-learn's own loops, and the
NumPy tokeniser against the regular expression: the same matrix, value for value, on the
sample's texts and on the cases that trip a hand-written tokenizer."""

from __future__ import annotations

import itertools
import pickle
import re

import numpy as np
import pytest
from conftest import SAMPLE
from sklearn.feature_extraction.text import TfidfVectorizer

from rakuten_classifier import char_ngrams, config, hashed_tokens
from rakuten_classifier.char_ngrams import CharNgramIndex
from rakuten_classifier.data import read_products
from rakuten_classifier.hashed_tokens import CollisionError, join_hashes, term_hashes, word_tokens
from rakuten_classifier.preprocess import product_text
from rakuten_classifier.text import WORD_PATTERN, StableTfidfVectorizer
from rakuten_classifier.word_ngrams import WordNgramCounter

AWKWARD = [
    "",
    "   ",
    "a",
    "a b  c",
    "tab\tnew\nline\r\n  x\u00a0y\u2003z",  # every kind of white space
    "İstanbul STRASSE Straße ΣΊΣΥΦΟΣ",  # lower() changes the length of İ
    "emoji 😀😀 ok 🇫🇷",  # characters outside the basic plane
    "x" * 60,
    "mot-composé l'été 3,5cm",
    "zzqqj unseen wvxk",  # n-grams the vocabulary does not know
    "snake_case __init__ x_ 12 ½½ ²³ \U0001d518\U0001d52b\U0001d526 ǅemal",  # odd word characters
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    products = read_products(SAMPLE / config.X_TRAIN_CSV)
    return [
        product_text(title, description)
        for title, description in zip(products["designation"], products["description"], strict=True)
    ]


def fitted(texts: list[str], ngram_range: tuple[int, int]) -> StableTfidfVectorizer:
    vectorizer = StableTfidfVectorizer(
        analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True, dtype=np.float32
    )
    return vectorizer.fit(texts[::2])  # half the texts: the rest hold unseen n-grams


@pytest.mark.parametrize("ngram_range", [(2, 5), (1, 3), (3, 6)])
def test_the_counts_and_weights_are_scikit_learns(texts, ngram_range, monkeypatch) -> None:
    vectorizer = fitted(texts, ngram_range)
    documents = texts + AWKWARD + [text.upper() for text in AWKWARD]
    monkeypatch.setattr(hashed_tokens, "CHUNK_TEXTS", 100)  # several chunks, assembled
    fast = vectorizer.transform(documents)
    assert vectorizer._ngram_index is not None  # the NumPy path ran
    expected = TfidfVectorizer.transform(vectorizer, documents)
    assert fast.shape == expected.shape and fast.dtype == expected.dtype
    np.testing.assert_array_equal(fast.indptr, expected.indptr)
    np.testing.assert_array_equal(fast.indices, expected.indices)
    np.testing.assert_array_equal(fast.data, expected.data)
    counts = vectorizer._ngram_index.counts(AWKWARD)
    assert counts[AWKWARD.index("")].nnz == 0 and counts[AWKWARD.index("   ")].nnz == 0
    assert vectorizer._ngram_index.counts([]).shape == (0, len(vectorizer.vocabulary_))


def test_the_index_is_rebuilt_after_pickling_and_skipped_where_it_does_not_apply(texts) -> None:
    vectorizer = fitted(texts, (2, 5))
    before = vectorizer.transform(texts[:20])
    again = pickle.loads(pickle.dumps(vectorizer))
    assert "_ngram_index" not in vars(again)
    assert (again.transform(texts[:20]) != before).nnz == 0
    words = StableTfidfVectorizer(analyzer="word", tokenizer=str.split, token_pattern=None).fit(
        texts
    )
    words.transform(texts[:3])
    assert words._ngram_index is None  # scikit-learn's own path for a tokenizer of its own


@pytest.mark.parametrize(
    ("ngram_range", "stop_words", "pattern"),
    [((1, 2), ["de", "la", "le", "et"], WORD_PATTERN), ((1, 1), None, WORD_PATTERN),
     ((2, 3), ["de"], WORD_PATTERN), ((1, 2), None, r"(?u)\b(\w+)\b")],
)  # fmt: skip
def test_word_counts_are_scikit_learns(
    texts, ngram_range, stop_words, pattern, monkeypatch
) -> None:
    vectorizer = StableTfidfVectorizer(
        analyzer="word", ngram_range=ngram_range, stop_words=stop_words, token_pattern=pattern,
        min_df=2, sublinear_tf=True, dtype=np.float32,
    ).fit(texts[::2])  # fmt: skip
    documents = texts + AWKWARD + [text.upper() for text in AWKWARD] + ["de la de la chaise"]
    monkeypatch.setattr(hashed_tokens, "CHUNK_TEXTS", 100)
    fast = vectorizer.transform(documents)
    if pattern != WORD_PATTERN:  # another pattern: scikit-learn's loop
        assert vectorizer._ngram_index is None
        return
    assert isinstance(vectorizer._ngram_index, WordNgramCounter)  # the NumPy path ran
    expected = TfidfVectorizer.transform(vectorizer, documents)
    assert fast.shape == expected.shape and fast.dtype == expected.dtype
    np.testing.assert_array_equal(fast.indptr, expected.indptr)
    np.testing.assert_array_equal(fast.indices, expected.indices)
    np.testing.assert_array_equal(fast.data, expected.data)
    assert vectorizer._ngram_index.counts([]).shape == (0, len(vectorizer.vocabulary_))


def test_a_hash_collision_falls_back_to_scikit_learn(texts, monkeypatch) -> None:
    vectorizer = fitted(texts, (2, 4))
    with monkeypatch.context() as patch:
        patch.setattr(char_ngrams, "term_hashes", lambda terms: np.zeros(len(terms), np.uint64))
        with pytest.raises(CollisionError):
            CharNgramIndex(vectorizer.vocabulary_, (2, 4))
        result = vectorizer.transform(texts[:10])
    assert vectorizer._ngram_index is None
    assert (result != TfidfVectorizer.transform(vectorizer, texts[:10])).nnz == 0
    with pytest.raises(ValueError, match="not supported"):
        CharNgramIndex({"abcd": 0}, (4, 5))


def test_the_tokeniser_finds_what_the_regular_expression_finds(texts) -> None:
    documents = texts + AWKWARD + [text.upper() for text in AWKWARD]
    found = [re.findall(WORD_PATTERN, text.lower()) for text in documents]
    flat = [token for tokens in found for token in tokens]
    tokens = word_tokens(documents)
    np.testing.assert_array_equal(tokens.hashes, term_hashes(flat))
    np.testing.assert_array_equal(tokens.lengths, [len(token) for token in flat])
    np.testing.assert_array_equal(
        tokens.owners, np.repeat(np.arange(len(documents)), [len(t) for t in found])
    )
    pairs = [f"{a} {b}" for words in found for a, b in itertools.pairwise(words)]
    same = tokens.owners[:-1] == tokens.owners[1:]
    joined = join_hashes(tokens.hashes[:-1], tokens.hashes[1:], tokens.lengths[1:])
    np.testing.assert_array_equal(joined[same], term_hashes(pairs))
    assert len(word_tokens([]).hashes) == 0


def test_word_and_space_characters_are_pythons_on_every_code_point() -> None:
    points = np.array([c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF])
    characters = [chr(c) for c in points.tolist()]
    in_regex = [re.match(r"\w", c) is not None for c in characters]
    np.testing.assert_array_equal(hashed_tokens.is_word(points), in_regex)
    splits = [len(f"a{c}b".split()) == 2 for c in characters]
    np.testing.assert_array_equal(hashed_tokens.is_space(points), splits)


def test_the_hash_table_finds_every_key_even_past_its_last_home_slot() -> None:
    # Keys whose home is the very last slot: probing runs past it into the spare slots.
    inverse = pow(int(hashed_tokens._SPREAD), -1, 2**64)
    crowded = [(((2**64 - 1 - k) * inverse) % 2**64) for k in range(40)]
    spread = np.random.default_rng(0).integers(0, 2**63, 500, dtype=np.uint64)
    keys = np.concatenate([np.array(crowded, dtype=np.uint64), spread])
    table = hashed_tokens.HashTable(keys, np.arange(len(keys)))
    absent = np.random.default_rng(1).integers(0, 2**63, 200, dtype=np.uint64)
    found = table.lookup(np.concatenate([keys, absent]))
    np.testing.assert_array_equal(found[: len(keys)], np.arange(len(keys)))
    assert (found[len(keys) :] == -1).all()
    with pytest.raises(CollisionError):
        hashed_tokens.HashTable(keys[[0, 1, 0]], np.arange(3))
