"""Recipes: a validated model retrained on other rows with the settings of its validated run
(epochs, temperature), the same way for the text and the image model. Two uses:

- out-of-fold predictions for the fusion (the train_fusion stage): each train product is
  predicted by models that did not see it, so the fusion learns from hundreds of held-out
  products instead of the few dozen photos of the validation split;
- the final refit on every labelled product for the shipped bundle (the predict stage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from rakuten_classifier import config, image, text
from rakuten_classifier.calibration import log_probabilities
from rakuten_classifier.config import logger
from rakuten_classifier.data import load_labels, load_split
from rakuten_classifier.files import atomic_dir, read_json
from rakuten_classifier.fusion import fit_fusion, weighted_f1
from rakuten_classifier.litert import REFERENCE_RUNTIME
from rakuten_classifier.sentence_encoder import vector_cache


@dataclass(frozen=True)
class Recipe:
    """How one modality's model is retrained from its validated run's settings file."""

    modality: str
    spec_file: str
    rows: Callable[[pd.DataFrame], pd.DataFrame]  # the rows it learns from
    fit: Callable[[dict[str, Any], pd.DataFrame, int, dict[str, Any], Path | None], Any]
    save: Callable[[Any, Path, dict[str, Any]], None]

    def spec(self, model_dir: Path) -> dict[str, Any]:
        return read_json(Path(model_dir) / self.spec_file)


TEXT = Recipe(
    "text", text.TEXT_MODEL_JSON, lambda frame: frame, text.fit_from_spec, text.save_text_model
)
IMAGE = Recipe(
    "image", image.IMAGE_MODEL_JSON, image.photo_rows, image.fit_from_spec, image.save_image_model
)


def refit(
    recipe: Recipe,
    params: dict[str, Any],
    labelled: pd.DataFrame,
    n_classes: int,
    features_dir: Path,
    evaluated_dir: Path,
    out_dir: Path,
) -> Any:
    """The evaluated model's recipe retrained on every labelled product, for the bundle."""
    spec = recipe.spec(evaluated_dir)
    model = recipe.fit(params, labelled, n_classes, spec, features_dir)
    recipe.save(model, Path(out_dir), {**spec, "trained_on": len(recipe.rows(labelled))})
    return model


def held_out_probabilities(
    frame: pd.DataFrame, text_model: Any, image_model: Any, features_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text and image probabilities of `frame`'s products (image rows NaN without a photo).
    With `features_dir` (a frozen backbone) the image head runs on the cached features."""
    text_probabilities = text_model.predict_proba(frame["text"].tolist())
    has_image = frame["has_image"].to_numpy()
    image_probabilities = np.full_like(text_probabilities, np.nan)
    if has_image.any() and image_model is not None:
        photos = frame[has_image]
        if features_dir is not None:
            features, _ = image.load_features(features_dir, photos)
            image_probabilities[has_image] = image_model.predict_proba_features(features)
        else:
            paths = photos["image_path"].tolist()
            image_probabilities[has_image] = image_model.predict_proba_photos(paths)
    return text_probabilities, image_probabilities, has_image


def out_of_fold(
    params: dict[str, Any],
    train: pd.DataFrame,
    n_classes: int,
    features_dir: Path,
    specs: dict[str, dict[str, Any]],
    folds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions for every train product from the validated recipes retrained on the other
    folds."""
    # A frozen backbone's features are cached: the held-out photos need only the head.
    cached = features_dir if image.has_frozen_backbone(params["train_image"]) else None
    text_out = np.zeros((len(train), n_classes))
    image_out = np.full((len(train), n_classes), np.nan)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=params["seed"])
    with vector_cache():  # each fold encodes most of the same texts again
        for number, (fit_rows, held_rows) in enumerate(splitter.split(train, train["label"]), 1):
            logger.info("out-of-fold predictions: fold %d/%d", number, folds)
            fit_frame, held_frame = train.iloc[fit_rows], train.iloc[held_rows]
            text_model = TEXT.fit(params, fit_frame, n_classes, specs["text"], features_dir)
            image_model = IMAGE.fit(params, fit_frame, n_classes, specs["image"], features_dir)
            probabilities = held_out_probabilities(held_frame, text_model, image_model, cached)
            text_out[held_rows], image_out[held_rows] = probabilities[0], probabilities[1]
            # Gone before the next fold's fit, not after it: on the full data set a text model
            # (its vocabularies above all) is hundreds of MB.
            del text_model, image_model, probabilities
    return text_out, image_out, train["has_image"].to_numpy()


def train_fusion(
    params: dict[str, Any],
    processed_dir: Path,
    text_dir: Path,
    image_dir: Path,
    features_dir: Path,
    out_dir: Path,
    held_out_dir: Path = config.HELD_OUT_DIR,
) -> dict[str, dict[str, float]]:
    """The train_fusion stage: learn the combination on held-out predictions (the validation
    split, plus out-of-fold predictions on the train split when `folds` > 1), and keep those
    predictions, fused, in `held_out_dir` (drift detection's reference of new products).
    Returns the fusion's scores on all those held-out products and on the validation split."""
    settings = params["train_fusion"]
    val = load_split("val", processed_dir)
    # Validation photos go through the whole image model, exactly as the bundle serves them.
    text_model = text.load_text_model(text_dir)
    image_model = image.load_image_model(image_dir, REFERENCE_RUNTIME)
    held_out = [held_out_probabilities(val, text_model, image_model)]
    del text_model, image_model  # the out-of-fold refits below need the memory
    labels = [val["label"].to_numpy()]
    if settings["folds"] > 1:
        specs = {"text": TEXT.spec(text_dir), "image": IMAGE.spec(image_dir)}
        train_split = load_split("train", processed_dir)
        n_classes = len(load_labels(processed_dir).codes)
        held_out.append(
            out_of_fold(params, train_split, n_classes, features_dir, specs, settings["folds"])
        )
        labels.append(train_split["label"].to_numpy())
    text_held_out, image_held_out, has_image = (
        np.concatenate(parts) for parts in zip(*held_out, strict=True)
    )
    y = np.concatenate(labels)
    fusion = fit_fusion(text_held_out, image_held_out, has_image, y, settings, params["seed"])
    val_text, val_image, val_has_image = held_out[0]
    fusion.validation = {
        "held_out": {
            **fusion.validation,
            "products": len(y),
            "photos": int(has_image.sum()),
        },
        "val": {
            "text_f1_weighted": weighted_f1(labels[0], val_text),
            "fusion_f1_weighted": weighted_f1(
                labels[0], fusion.combine(val_text, val_image, val_has_image)
            ),
            "products": len(labels[0]),
        },
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fusion.save(out_dir)
    fused = fusion.combine(text_held_out, image_held_out, has_image)
    with atomic_dir(held_out_dir) as tmp:
        np.savez(
            tmp / config.HELD_OUT_FILE,
            label=y,
            predicted=fused.argmax(axis=1),
            confidence=fused.max(axis=1),
            text_log_probabilities=log_probabilities(text_held_out),
            has_image=has_image,
        )
    return fusion.validation
