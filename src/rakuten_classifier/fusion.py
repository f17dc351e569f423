"""Fusion: calibrated probabilities, and their combination across text and photo.

A product without a usable photo is classified from its text alone. The fused model is chosen
on the validation split and never scores below the text model there: if combining does not
help, the fusion falls back to the text model's probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from rakuten_classifier.config import logger
from rakuten_classifier.files import read_json, write_json

FUSION_JSON = "fusion.json"
EPSILON = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(probabilities[np.arange(len(y)), y] + EPSILON).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the validation log-loss (a grid in log space).

    A linear SVM's margins are not probabilities, and small-data networks are over-confident;
    one scalar calibrates either without changing which class wins.
    """
    grid = np.exp(np.linspace(np.log(0.01), np.log(100.0), 161))
    losses = [log_loss(softmax(logits, t), y) for t in grid]
    return float(grid[int(np.argmin(losses))])


def weighted_f1(y: np.ndarray, probabilities: np.ndarray) -> float:
    return float(f1_score(y, probabilities.argmax(axis=1), average="weighted", zero_division=0))


def _stacking_features(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per product and class: each modality's log-probability, alone and scaled by that
    modality's confidence (its top probability), so a sure photo can outweigh an unsure text."""
    log_text, log_image = np.log(text + EPSILON), np.log(image + EPSILON)
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
            w = self.image_weight
            fused[rows] = (1.0 - w) * text[rows] + w * image[rows]
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
    best: tuple[float, float, float] | None = None
    for w in np.round(np.arange(0.0, 1.0 + step / 2, step), 6):
        fused = Fusion("weighted", float(w)).combine(text, image, has_image)
        key = (weighted_f1(y, fused), -log_loss(fused, y), -w)  # ties: lower loss, then less image
        if best is None or key > best:
            best = key
    return Fusion("weighted", float(-best[2]))


def _fit_stacking(text, image, y, l2: float) -> list[float]:
    """Multinomial conditional-logit weights of the four stacking features, L2-pulled towards
    'text alone' (1, 0, 0, 0) so that a small validation split cannot push them far."""
    features = _stacking_features(text, image)
    prior = np.array([1.0, 0.0, 0.0, 0.0])
    rows = np.arange(len(y))

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        probabilities = softmax(features @ weights)
        loss = (
            -np.log(probabilities[rows, y] + EPSILON).mean() + l2 * ((weights - prior) ** 2).sum()
        )
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


def train(
    params: dict[str, Any],
    seed: int,
    processed_dir: Path,
    text_dir: Path,
    image_dir: Path,
    out_dir: Path,
) -> dict[str, float]:
    """The train_fusion stage: both models' validation probabilities in, the fusion out."""
    from rakuten_classifier.data import load_split
    from rakuten_classifier.image import load_image_model, load_pixels
    from rakuten_classifier.text import load_text_model

    val = load_split("val", processed_dir)
    y = val["label"].to_numpy()
    text = load_text_model(text_dir).predict_proba(val["text"].tolist())
    has_image = val["has_image"].to_numpy()
    image = np.full_like(text, np.nan)
    if has_image.any():
        image_model = load_image_model(image_dir)
        pixels = load_pixels(val.loc[has_image, "image_path"].tolist(), image_model.image_size)
        image[has_image] = image_model.predict_proba(pixels)
    fusion = fit_fusion(text, image, has_image, y, params, seed)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fusion.save(out_dir)
    return fusion.validation
