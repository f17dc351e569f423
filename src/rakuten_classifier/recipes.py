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
from rakuten_classifier.hashed_tokens import release_freed_memory
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
    # Probabilities of a frame's products (NaN rows where the modality is missing); with a
    # features folder, a frozen backbone's cached features stand in for the photos.
    predict: Callable[[Any, pd.DataFrame, Path | None], np.ndarray]

    def spec(self, model_dir: Path) -> dict[str, Any]:
        return read_json(Path(model_dir) / self.spec_file)


def text_probabilities(model: Any, frame: pd.DataFrame, _: Path | None = None) -> np.ndarray:
    return model.predict_proba(frame["text"].tolist())


def image_probabilities(
    model: Any, frame: pd.DataFrame, features_dir: Path | None = None
) -> np.ndarray:
    """The image model's probabilities of `frame`'s products, NaN rows without a photo."""
    has_image = frame["has_image"].to_numpy()
    probabilities = np.full((len(frame), model.head.width), np.nan)
    if has_image.any():
        photos = frame[has_image]
        if features_dir is not None:
            features, _ = image.load_features(features_dir, photos)
            probabilities[has_image] = model.predict_proba_features(features)
        else:
            probabilities[has_image] = model.predict_proba_photos(photos["image_path"].tolist())
    return probabilities


TEXT = Recipe(
    "text",
    text.TEXT_MODEL_JSON,
    lambda frame: frame,
    text.fit_from_spec,
    text.save_text_model,
    text_probabilities,
)
IMAGE = Recipe(
    "image",
    image.IMAGE_MODEL_JSON,
    image.photo_rows,
    image.fit_from_spec,
    image.save_image_model,
    image_probabilities,
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
    frame: pd.DataFrame, text_model: Any, image_model: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text and image probabilities of `frame`'s products (image rows NaN without a photo),
    the photos through the whole image model, as the bundle serves them."""
    text_out = TEXT.predict(text_model, frame, None)
    image_out = (
        IMAGE.predict(image_model, frame, None)
        if image_model is not None
        else np.full_like(text_out, np.nan)
    )
    return text_out, image_out, frame["has_image"].to_numpy()


def out_of_fold(
    params: dict[str, Any],
    train: pd.DataFrame,
    n_classes: int,
    features_dir: Path,
    specs: dict[str, dict[str, Any]],
    folds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions for every train product from the validated recipes retrained on the other
    folds. All the text folds run first: they need no TensorFlow, whose gigabyte would
    otherwise sit beside a text model fitted on 80% of the full data set."""
    # A frozen backbone's features are cached: the held-out photos need only the head.
    cached = features_dir if image.has_frozen_backbone(params["train_image"]) else None
    splits = list(
        StratifiedKFold(folds, shuffle=True, random_state=params["seed"]).split(
            train, train["label"]
        )
    )
    out = {"text": np.zeros((len(train), n_classes)), "image": np.zeros((len(train), n_classes))}
    with vector_cache():  # each fold encodes most of the same texts again
        for recipe in (TEXT, IMAGE):
            spec = specs[recipe.modality]
            for number, (fit_rows, held_rows) in enumerate(splits, 1):
                logger.info("out-of-fold %s model: fold %d/%d", recipe.modality, number, folds)
                model = recipe.fit(params, train.iloc[fit_rows], n_classes, spec, features_dir)
                out[recipe.modality][held_rows] = recipe.predict(
                    model, train.iloc[held_rows], cached
                )
                # Gone before the next fold's fit, not after it: on the full data set a text
                # model (its vocabularies above all) is hundreds of MB.
                del model
                release_freed_memory()
    return out["text"], out["image"], train["has_image"].to_numpy()


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
    held_out, labels = [], [val["label"].to_numpy()]
    if settings["folds"] > 1:  # first: its text folds run before TensorFlow loads
        specs = {"text": TEXT.spec(text_dir), "image": IMAGE.spec(image_dir)}
        train_split = load_split("train", processed_dir)
        n_classes = len(load_labels(processed_dir).codes)
        held_out.append(
            out_of_fold(params, train_split, n_classes, features_dir, specs, settings["folds"])
        )
        labels.append(train_split["label"].to_numpy())
    # Validation photos go through the whole image model, exactly as the bundle serves them.
    text_model = text.load_text_model(text_dir)
    image_model = image.load_image_model(image_dir, REFERENCE_RUNTIME)
    held_out.insert(0, held_out_probabilities(val, text_model, image_model))
    del text_model, image_model
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
