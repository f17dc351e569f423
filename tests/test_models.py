"""Text and image models on real rows of the sample: they learn, and they come back from
disk giving exactly the same probabilities."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE

from rakuten_classifier import config
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.files import write_pickle
from rakuten_classifier.image import (
    ImageModel,
    backbone_features,
    build_backbone,
    build_head,
    build_image_model,
    fit_image_model,
    load_image_model,
    load_pixels,
    save_image_model,
)
from rakuten_classifier.text import (
    fit_text_model,
    fit_tokenizers,
    load_text_model,
    save_text_model,
)
from rakuten_classifier.training import InferenceFunction

TOKENIZE = {
    "stop_words": ["french"],
    "word_ngram_max": 2,
    "char_ngram_min": 2,
    "char_ngram_max": 5,
    "min_df": 1,
    "word_max_features": 20000,
    "char_max_features": 20000,
    "vocabulary_size": 2000,
}
CNN = {
    "sequence_length": 32,
    "embedding_dim": 16,
    "filters": 16,
    "kernel_sizes": [2, 3],
    "dropout": 0.2,
    "learning_rate": 0.01,
    "batch_size": 32,
    "epochs": 3,
    "patience": 2,
    "class_weight": "balanced",
}


@pytest.fixture(scope="module")
def products() -> pd.DataFrame:
    """Four product types of the sample, all their rows, with model text and label."""
    frame = read_products(SAMPLE / config.X_TRAIN_CSV)
    frame["prdtypecode"] = read_labels(SAMPLE / config.Y_TRAIN_CSV, frame)
    frame = frame[frame["prdtypecode"].isin([10, 1160, 2583, 2905])]
    frame = product_frame(frame, SAMPLE / config.IMAGE_TRAIN_DIR)
    codes = sorted(frame["prdtypecode"].unique())
    frame["label"] = frame["prdtypecode"].map({c: k for k, c in enumerate(codes)})
    return frame


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    held = frame.index % 5 == 0
    return frame[~held], frame[held]


@pytest.mark.parametrize("kind", ["linear", "cnn"])
def test_text_model_learns_and_round_trips(kind: str, products, tmp_path: Path) -> None:
    train, held = split(products)
    tokenizers = fit_tokenizers(train["text"].tolist(), TOKENIZE)
    params = {
        "model": kind,
        "linear": {"classifier": "svm", "C": 0.5, "class_weight": "balanced"},
        "cnn": CNN,
    }
    model, epochs = fit_text_model(
        params,
        tokenizers,
        (train["text"].tolist(), train["label"].to_numpy()),
        (held["text"].tolist(), held["label"].to_numpy()),
        4,
        seed=0,
    )
    probabilities = model.predict_proba(held["text"].tolist())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    accuracy = (probabilities.argmax(axis=1) == held["label"].to_numpy()).mean()
    assert accuracy > 0.5  # four classes: chance is 0.25
    assert (epochs > 0) == (kind == "cnn")
    save_text_model(model, tmp_path, {"model": kind, "epochs": epochs})
    again = load_text_model(tmp_path)
    np.testing.assert_allclose(again.predict_proba(held["text"].tolist()), probabilities, rtol=1e-6)


def test_image_model_round_trips_with_its_preprocessing(products, tmp_path: Path) -> None:
    photos = products[products["has_image"]].head(8)
    params = {"image_size": 48, "backbone": "small_cnn", "augment": {"flip": True}}
    model = build_image_model(build_backbone("small_cnn", None, 48), build_head(4, 0.1), params)
    image_model = ImageModel.of_keras(model, 48, temperature=1.7)
    pixels = load_pixels(photos["image_path"].tolist(), 48)
    probabilities = image_model.predict_proba(pixels)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    save_image_model(image_model, tmp_path, {"backbone": "small_cnn"})
    again = load_image_model(tmp_path)
    assert again.image_size == 48 and again.temperature == 1.7
    np.testing.assert_allclose(again.predict_proba(pixels), probabilities, rtol=1e-5)
    # Inference ignores the augmentation: the same photo twice gives the same answer.
    np.testing.assert_allclose(again.predict_proba(pixels), again.predict_proba(pixels))


def test_head_on_cached_features_equals_the_whole_model_on_photos(products) -> None:
    """What out-of-fold fusion relies on for a frozen backbone."""
    photos = products[products["has_image"]].head(6)
    backbone = build_backbone("small_cnn", None, 48)
    model = build_image_model(
        backbone, build_head(4, 0.3, 0.01), {"image_size": 48, "backbone": "small_cnn"}
    )
    image_model = ImageModel.of_keras(model, 48, temperature=0.7)
    pixels = load_pixels(photos["image_path"].tolist(), 48)
    features = InferenceFunction(backbone)(pixels.astype(np.float32))
    np.testing.assert_allclose(
        image_model.predict_proba_features(features),
        image_model.predict_proba(pixels),
        rtol=1e-4,
        atol=1e-6,
    )


def test_unknown_backbone_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown 'resnet9'.*efficientnet_lite0"):
        build_backbone("resnet9", None, 64)


def test_two_phase_training_fine_tunes_only_the_last_blocks(products) -> None:
    """Phase 1 trains the head on cached features of the pretrained (offline) EfficientNet-Lite0;
    phase 2 trains the last block with it on photos, and leaves the earlier blocks alone."""
    photos = products[products["has_image"]].groupby("label").head(3)
    size = 64
    params = {
        "backbone": "efficientnet_lite0",
        "weights": "imagenet",
        "image_size": size,
        "batch_size": 8,
        "class_weight": "balanced",
        "augment": {"flip": True},
        "head": {"dropout": 0.2, "l2": 0.01, "learning_rate": 0.01, "epochs": 2, "patience": 1},
        "fine_tune": {"blocks": 1, "learning_rate": 0.01, "epochs": 1, "patience": 1},
    }
    backbone = build_backbone("efficientnet_lite0", "imagenet", size)
    _, features = backbone_features(InferenceFunction(backbone), photos, size)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in backbone.layers}
    cached = (features, photos["label"].to_numpy())
    model, epochs = fit_image_model(
        params, 0, 4, (photos, cached), None, epochs={"head": 2, "fine_tune": 1}
    )
    assert epochs == {"head": 2, "fine_tune": 1}
    trained = model.model.get_layer("efficientnet_lite0")

    def moved(name: str) -> bool:
        after = trained.get_layer(name).get_weights()
        return any(not np.allclose(a, b) for a, b in zip(before[name], after, strict=True))

    assert moved("block7a_project_conv")  # the last block learned
    assert not moved("stem_conv") and not moved("block3b_expand_conv")  # earlier ones did not
    assert not moved("block7a_project_bn")  # batch norms stay frozen


def test_the_stemmer_joins_inflections_and_pickles_to_the_same_bytes(products) -> None:
    """tokenize.stemmer: "chaises" and "chaise" are one word feature; a stop word stays out
    once stemmed; the fitted vectoriser pickles to the same bytes twice (DVC outputs)."""
    texts = ["les chaises de jardin", "une chaise pour les enfants", *products["text"].head(50)]
    params = {**TOKENIZE, "stemmer": "french"}
    first, _ = fit_tokenizers(texts, params)
    second, _ = fit_tokenizers(texts, params)
    words = first.transformer_list[0][1].vocabulary_
    assert "chais" in words and "chaises" not in words and "chaise" not in words
    assert "le" not in words and "les" not in words  # stop words, stemmed too
    plain, _ = fit_tokenizers(texts, TOKENIZE)
    assert {"chaise", "chaises"} <= set(plain.transformer_list[0][1].vocabulary_)
    assert pickle.dumps(first) == pickle.dumps(second)
    again = pickle.loads(pickle.dumps(first))
    assert (again.transform(texts) != first.transform(texts)).nnz == 0


def test_a_pickled_model_is_the_same_bytes_whatever_strings_it_shares(
    products, tmp_path: Path
) -> None:
    """Whether two equal attribute names are one string object depends on the process's
    history (the predict stage's refit pickled 43 bytes apart after a bundle was loaded): the
    file must not. Here the vectoriser's inner TF-IDF is given its outer attribute names' very
    objects, as a fresh fit may have them, against a copy read back."""
    fitted, _ = fit_tokenizers(products["text"].head(50).tolist(), TOKENIZE)
    copy = pickle.loads(pickle.dumps(fitted))
    shared = pickle.loads(pickle.dumps(fitted))
    word = shared.transformer_list[0][1]
    names = {name: name for name in vars(word)}
    word._tfidf.__dict__ = {names.get(k, k): v for k, v in vars(word._tfidf).items()}
    assert pickle.dumps(shared) != pickle.dumps(copy)  # the plain dump depends on it
    write_pickle(tmp_path / "a.pkl", shared)
    write_pickle(tmp_path / "b.pkl", copy)
    write_pickle(tmp_path / "c.pkl", fitted)
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()
    assert (tmp_path / "c.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()
