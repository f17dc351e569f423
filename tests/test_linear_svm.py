"""The float32 SVM solver against scikit-learn's LinearSVC (liblinear) on the real sample's
TF-IDF: the same objective must give the same model, within the solvers' tolerance."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import SAMPLE
from sklearn.svm import LinearSVC
from test_models import TOKENIZE  # the small vocabularies of the model tests

from rakuten_classifier import config
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.linear_svm import FloatLinearSVC
from rakuten_classifier.text import fit_tokenizers


@pytest.fixture(scope="module")
def tfidf_split() -> tuple:
    """Every product type of the sample: TF-IDF (float32) of 4/5 of the rows, and the rest."""
    frame = read_products(SAMPLE / config.X_TRAIN_CSV)
    frame["prdtypecode"] = read_labels(SAMPLE / config.Y_TRAIN_CSV, frame)
    frame = product_frame(frame, SAMPLE / config.IMAGE_TRAIN_DIR)
    held = np.arange(len(frame)) % 5 == 0
    tfidf, _ = fit_tokenizers(frame["text"][~held].tolist(), TOKENIZE)
    matrix = tfidf.transform(frame["text"].tolist())
    y = frame["prdtypecode"].to_numpy()
    return matrix[~held], y[~held], matrix[held], y[held]


def test_the_float32_solver_finds_liblinears_model(tfidf_split) -> None:
    """27 one-vs-rest problems, balanced class weights (liblinear weighs only each problem's
    own class): coefficients within 1e-4, the same class for every held-out product."""
    X, y, held_X, _ = tfidf_split
    assert X.dtype == np.float32
    settings = {"C": 0.5, "class_weight": "balanced", "max_iter": 5000, "random_state": 42}
    reference = LinearSVC(**settings).fit(X.astype(np.float64), y)
    ours = FloatLinearSVC(**settings).fit(X, y)
    assert list(ours.classes_) == list(reference.classes_) and len(ours.classes_) == 27
    assert np.abs(ours.coef_ - reference.coef_).max() < 1e-4
    assert np.abs(ours.intercept_ - reference.intercept_).max() < 1e-4
    scores, expected = ours.decision_function(held_X), reference.decision_function(held_X)
    assert np.abs(scores - expected).max() < 1e-4
    assert (ours.predict(held_X) == reference.predict(held_X)).all()
    assert (ours.n_iter_ < settings["max_iter"]).all()  # every problem converged


def test_two_classes_and_the_same_bytes_twice(tfidf_split) -> None:
    """Two classes: one problem, as LinearSVC; the fit is deterministic (threads or not)."""
    X, y, held_X, _ = tfidf_split
    rows = np.isin(y, [10, 2583])
    binary = y[rows] == 2583
    reference = LinearSVC(C=1.0, class_weight="balanced").fit(X[rows].astype(np.float64), binary)
    ours = FloatLinearSVC(C=1.0, class_weight="balanced").fit(X[rows], binary)
    assert ours.coef_.shape == reference.coef_.shape == (1, X.shape[1])
    assert np.abs(ours.decision_function(held_X) - reference.decision_function(held_X)).max() < 1e-4
    again = FloatLinearSVC(C=1.0, class_weight="balanced").fit(X[rows], binary)
    assert pickle.dumps(again) == pickle.dumps(ours)


def test_one_class_is_refused_clearly(tfidf_split) -> None:
    X = tfidf_split[0]
    with pytest.raises(ValueError, match="at least 2 classes"):
        FloatLinearSVC().fit(X[:5], np.zeros(5))
