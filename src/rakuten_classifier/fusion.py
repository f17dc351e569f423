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
            # Log-linear pooling: a weighted geometric mean of the two distributions. On the
            # sample's out-of-fold predictions it beat the arithmetic mean, and its best weight
            # moves smoothly with the validation log-loss (a steadier choice than F1 on a
            # few dozen photos).
            w = self.image_weight
            log_text, log_image = np.log(text[rows] + EPSILON), np.log(image[rows] + EPSILON)
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


def _held_out_probabilities(
    frame: Any, text_model: Any, image_model: Any, features_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text and image probabilities of `frame`'s products (image rows NaN without a photo).
    With `features_dir` (a frozen backbone) the image head runs on the cached features."""
    from rakuten_classifier.image import load_features

    text = text_model.predict_proba(frame["text"].tolist())
    has_image = frame["has_image"].to_numpy()
    image = np.full_like(text, np.nan)
    if has_image.any() and image_model is not None:
        photos = frame[has_image]
        if features_dir is not None:
            features, _ = load_features(features_dir, photos)
            image[has_image] = image_model.predict_proba_features(features)
        else:
            image[has_image] = image_model.predict_proba_photos(photos["image_path"].tolist())
    return text, image, has_image


def out_of_fold(
    params: dict[str, Any],
    train: Any,
    n_classes: int,
    features_dir: Path,
    specs: dict[str, dict[str, Any]],
    folds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions for every train product from models that did not see it: the validated
    recipes retrained on the other folds. They give the fusion hundreds of held-out products
    to learn from instead of the few dozen photos of the validation split."""
    from rakuten_classifier import image, text

    # A frozen backbone's features are cached: the held-out photos need only the head.
    cached = features_dir if image.has_frozen_backbone(params["train_image"]) else None
    text_out = np.zeros((len(train), n_classes))
    image_out = np.full((len(train), n_classes), np.nan)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=params["seed"])
    for number, (fit_rows, held_rows) in enumerate(splitter.split(train, train["label"]), 1):
        logger.info("out-of-fold predictions: fold %d/%d", number, folds)
        fit_frame, held_frame = train.iloc[fit_rows], train.iloc[held_rows]
        text_model = text.fit_recipe(params, fit_frame, n_classes, specs["text"])
        photos = fit_frame[fit_frame["has_image"]]
        image_model = image.fit_recipe(params, photos, n_classes, features_dir, specs["image"])
        probabilities = _held_out_probabilities(held_frame, text_model, image_model, cached)
        text_out[held_rows], image_out[held_rows] = probabilities[0], probabilities[1]
    return text_out, image_out, train["has_image"].to_numpy()


def train(
    params: dict[str, Any],
    processed_dir: Path,
    text_dir: Path,
    image_dir: Path,
    features_dir: Path,
    out_dir: Path,
) -> dict[str, float]:
    """The train_fusion stage: learn the combination on held-out predictions (the validation
    split, plus out-of-fold predictions on the train split when `folds` > 1)."""
    from rakuten_classifier.data import load_labels, load_split
    from rakuten_classifier.image import IMAGE_MODEL_JSON, load_image_model
    from rakuten_classifier.text import TEXT_MODEL_JSON, load_text_model

    settings = params["train_fusion"]
    val = load_split("val", processed_dir)
    # Validation photos go through the whole image model, exactly as the bundle serves them.
    held_out = [
        _held_out_probabilities(val, load_text_model(text_dir), load_image_model(image_dir))
    ]
    labels = [val["label"].to_numpy()]
    if settings["folds"] > 1:
        specs = {
            "text": read_json(Path(text_dir) / TEXT_MODEL_JSON),
            "image": read_json(Path(image_dir) / IMAGE_MODEL_JSON),
        }
        train_split = load_split("train", processed_dir)
        n_classes = len(load_labels(processed_dir).codes)
        held_out.append(
            out_of_fold(params, train_split, n_classes, features_dir, specs, settings["folds"])
        )
        labels.append(train_split["label"].to_numpy())
    text, image, has_image = (np.concatenate(parts) for parts in zip(*held_out, strict=True))
    fusion = fit_fusion(text, image, has_image, np.concatenate(labels), settings, params["seed"])
    # The validation split on its own too, for comparison with the other stages' figures.
    val_text, val_image, val_has_image = held_out[0]
    fusion.validation.update(
        held_out_products=len(has_image),
        held_out_photos=int(has_image.sum()),
        val_text_f1_weighted=weighted_f1(labels[0], val_text),
        val_fusion_f1_weighted=weighted_f1(
            labels[0], fusion.combine(val_text, val_image, val_has_image)
        ),
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fusion.save(out_dir)
    return fusion.validation
