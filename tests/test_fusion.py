"""Calibration and fusion on synthetic probabilities (mechanics: the real models' fusion is
checked in the pipeline tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from rakuten_classifier.calibration import fit_temperature, softmax
from rakuten_classifier.fusion import Fusion, fit_fusion, weighted_f1
from rakuten_classifier.metrics import weighted_f1_score

CLASSES = 6


def noisy_probabilities(y: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose top class is right for about `accuracy` of the rows."""
    logits = rng.normal(0, 1, (len(y), CLASSES))
    right = rng.random(len(y)) < accuracy
    logits[np.arange(len(y))[right], y[right]] += 3.0
    return softmax(logits)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_softmax_rows_sum_to_one_and_temperature_keeps_the_winner(rng) -> None:
    logits = rng.normal(0, 3, (50, CLASSES))
    for temperature in (0.1, 1.0, 10.0):
        probabilities = softmax(logits, temperature)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
        assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_fit_temperature_recovers_the_true_one(rng) -> None:
    logits = rng.normal(0, 4, (4000, CLASSES))
    true_temperature = 2.5
    y = np.array([rng.choice(CLASSES, p=p) for p in softmax(logits, true_temperature)])
    assert fit_temperature(logits, y) == pytest.approx(true_temperature, rel=0.15)


def test_rows_without_photo_keep_the_text_probabilities(rng) -> None:
    y = rng.integers(0, CLASSES, 40)
    text, image = noisy_probabilities(y, 0.6, rng), noisy_probabilities(y, 0.9, rng)
    has_image = np.arange(40) % 2 == 0
    image[~has_image] = np.nan  # what the bundle passes for rows without a photo
    for fusion in (Fusion("weighted", 0.5), Fusion("stacking", coefficients=[1, 1, 0, 0])):
        fused = fusion.combine(text, image, has_image)
        np.testing.assert_array_equal(fused[~has_image], text[~has_image])
        assert not np.isnan(fused).any()


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_an_informative_photo_is_used(method: str, rng) -> None:
    y = rng.integers(0, CLASSES, 600)
    text, image = noisy_probabilities(y, 0.5, rng), noisy_probabilities(y, 0.8, rng)
    has_image = np.ones(len(y), dtype=bool)
    fusion = fit_fusion(
        text, image, has_image, y, {"method": method, "weight_step": 0.05, "l2": 0.01}
    )
    assert fusion.method == method
    fused = fusion.combine(text, image, has_image)
    assert weighted_f1(y, fused) > weighted_f1(y, text) + 0.1


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_fusion_never_scores_below_text_on_its_validation(method: str) -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, CLASSES, 120)
        text = noisy_probabilities(y, 0.7, rng)
        image = softmax(rng.normal(0, 2, (len(y), CLASSES)))  # a photo model that knows nothing
        has_image = rng.random(len(y)) < 0.5
        fusion = fit_fusion(
            text, image, has_image, y, {"method": method, "weight_step": 0.05, "l2": 0.01}
        )
        scores = fusion.validation
        assert scores["fusion_f1_weighted"] >= scores["text_f1_weighted"]


def test_fusion_round_trip(tmp_path: Path) -> None:
    fusion = Fusion("stacking", coefficients=[1.2, 0.4, -0.1, 0.3], validation={"x": 0.5})
    fusion.save(tmp_path)
    assert Fusion.load(tmp_path) == fusion


def test_unknown_method_is_refused(rng) -> None:
    y = rng.integers(0, CLASSES, 20)
    text = noisy_probabilities(y, 0.5, rng)
    with pytest.raises(ValueError, match="unknown 'vote'"):
        fit_fusion(text, text, np.ones(20, bool), y, {"method": "vote"})


def test_counting_weighted_f1_equals_sklearn(rng) -> None:
    """The bootstraps' fast weighted F1 gives sklearn's number, predicted-only codes and empty
    input included."""
    for size in (1, 3, 40, 400):
        truth = rng.integers(0, 27, size)
        predicted = np.where(rng.random(size) < 0.6, truth, rng.integers(0, 30, size))
        expected = f1_score(truth, predicted, average="weighted", zero_division=0)
        assert weighted_f1_score(truth, predicted) == pytest.approx(expected, abs=1e-12)
    assert weighted_f1_score(np.array([], int), np.array([], int)) == 0.0
