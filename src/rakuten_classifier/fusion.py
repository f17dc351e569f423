"""Fusion: how the calibrated text and photo probabilities combine.

A product without a usable photo is classified from its text alone. The combination is learned
on held-out predictions and never scores below the text model there: if combining does not
help, the fusion falls back to the text model's probabilities. (`recipes` makes those held-out
predictions, in the train_fusion stage.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from rakuten_classifier.calibration import log_loss, log_probabilities, softmax
from rakuten_classifier.config import logger
from rakuten_classifier.files import read_json, write_json

FUSION_JSON = "fusion.json"


def weighted_f1(y: np.ndarray, probabilities: np.ndarray) -> float:
    return float(f1_score(y, probabilities.argmax(axis=1), average="weighted", zero_division=0))


def _stacking_features(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per product and class: each modality's log-probability, alone and scaled by that
    modality's confidence (its top probability), so a sure photo can outweigh an unsure text."""
    log_text, log_image = log_probabilities(text), log_probabilities(image)
    confidence_text = text.max(axis=1, keepdims=True)
    confidence_image = image.max(axis=1, keepdims=True)
    return np.stack(
        [log_text, log_image, confidence_text * log_text, confidence_image * log_image], axis=-1
    )


@dataclass
class Fusion:
    """How text and photo probabilities combine; `method` is text_only, weighted or stacking."""

    method: str = "text_only"
    image_weight: float = 0.0
    coefficients: list[float] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)

    def combine(
        self, text: np.ndarray, image: np.ndarray | None, has_image: np.ndarray
    ) -> np.ndarray:
        """Fused probabilities; rows without a usable photo keep the text probabilities."""
        fused = np.array(text, dtype=np.float64, copy=True)
        if image is None or self.method == "text_only" or not has_image.any():
            return fused
        rows = np.asarray(has_image, dtype=bool)
        if self.method == "weighted":
            # Log-linear pooling: a weighted geometric mean of the two distributions. On the
            # sample's out-of-fold predictions it beat the arithmetic mean, and its best weight
            # moves smoothly with the validation log-loss (a steadier choice than F1 on a
            # few dozen photos).
            w = self.image_weight
            log_text, log_image = log_probabilities(text[rows]), log_probabilities(image[rows])
            fused[rows] = softmax((1.0 - w) * log_text + w * log_image)
        elif self.method == "stacking":
            scores = _stacking_features(text[rows], image[rows]) @ np.asarray(self.coefficients)
            fused[rows] = softmax(scores)
        else:
            raise ValueError(f"unknown fusion method '{self.method}'")
        return fused

    def save(self, out_dir: Path) -> None:
        write_json(Path(out_dir) / FUSION_JSON, asdict(self))

    @classmethod
    def load(cls, model_dir: Path) -> Fusion:
        return cls(**read_json(Path(model_dir) / FUSION_JSON))


def _fit_weighted(text, image, has_image, y, step: float) -> Fusion:
    """The image weight with the lowest validation log-loss (ties: the smaller weight)."""
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    losses = [
        log_loss(Fusion("weighted", float(w)).combine(text, image, has_image), y) for w in grid
    ]
    return Fusion("weighted", float(grid[int(np.argmin(losses))]))


def _fit_stacking(text, image, y, l2: float) -> list[float]:
    """Multinomial conditional-logit weights of the four stacking features, L2-pulled towards
    'text alone' (1, 0, 0, 0) so that a small validation split cannot push them far."""
    features = _stacking_features(text, image)
    prior = np.array([1.0, 0.0, 0.0, 0.0])
    rows = np.arange(len(y))

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        probabilities = softmax(features @ weights)
        loss = log_loss(probabilities, y) + l2 * ((weights - prior) ** 2).sum()
        # d loss / d w: (p - onehot) weighted features, averaged over products.
        residual = probabilities.copy()
        residual[rows, y] -= 1.0
        gradient = np.einsum("nk,nkf->f", residual, features) / len(y) + 2 * l2 * (weights - prior)
        return loss, gradient

    result = minimize(objective, prior, jac=True, method="L-BFGS-B")
    return [float(w) for w in result.x]


def _cross_validated_stacking(text, image, y, l2: float, seed: int) -> np.ndarray | None:
    """Out-of-fold stacked probabilities, to judge stacking on rows it was not fitted on;
    None when some class has a single photo in validation (nothing to hold out)."""
    out = np.array(text, dtype=np.float64, copy=True)
    counts = np.bincount(y)
    folds = min(5, int(counts[counts > 0].min())) if len(y) else 0
    if folds < 2:
        return None
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(text, y):
        weights = _fit_stacking(text[fit_rows], image[fit_rows], y[fit_rows], l2)
        out[held_rows] = softmax(_stacking_features(text[held_rows], image[held_rows]) @ weights)
    return out


def fit_fusion(
    text: np.ndarray,
    image: np.ndarray,
    has_image: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    seed: int = 0,
) -> Fusion:
    """Learn the combination on the validation split; fall back to text if it does not help."""
    method = params["method"]
    has_image = np.asarray(has_image, dtype=bool)
    text_f1 = weighted_f1(y, text)
    if method == "weighted":
        fusion = _fit_weighted(text, image, has_image, y, params["weight_step"])
        fused_f1 = weighted_f1(y, fusion.combine(text, image, has_image))
    elif method == "stacking":
        rows = np.flatnonzero(has_image)
        fusion = Fusion(
            "stacking", coefficients=_fit_stacking(text[rows], image[rows], y[rows], params["l2"])
        )
        held_out = _cross_validated_stacking(text[rows], image[rows], y[rows], params["l2"], seed)
        fused_f1 = -1.0  # unvalidated stacking is not trusted over text
        if held_out is not None:
            fused = np.array(text, dtype=np.float64, copy=True)
            fused[rows] = held_out
            fused_f1 = weighted_f1(y, fused)  # out-of-fold: an honest estimate
    else:
        raise ValueError(f"train_fusion.method: unknown '{method}' (weighted or stacking)")
    if fused_f1 < text_f1:
        logger.warning(
            "%s fusion scores %.4f < text alone %.4f on validation: using text alone",
            method,
            fused_f1,
            text_f1,
        )
        fusion, fused_f1 = Fusion("text_only"), text_f1
    fusion.validation = {"text_f1_weighted": text_f1, "fusion_f1_weighted": fused_f1}
    logger.info("fusion: %s", fusion)
    return fusion
