"""The drift reference of a bundle (`drift_profile.Profile`), built by the predict stage from
the products the shipped models trained on and from the evaluated models' answers on the
held-out splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier.bundle import BundlePrediction, mean_colours
from rakuten_classifier.drift_profile import Profile, build_profile, sample_rows
from rakuten_classifier.image import ImageModel, has_frozen_backbone, load_features, load_pixels
from rakuten_classifier.preprocess import inspect_image, product_text, read_photo
from rakuten_classifier.profiling import guess_language


def _photo_features(
    photos: pd.DataFrame, image: ImageModel, features_dir: Path, image_params: dict[str, Any]
) -> np.ndarray:
    """The shipped image model's backbone features of the photos: the cached ones when its
    backbone is the frozen pretrained one, else computed (a fine-tuned backbone)."""
    if has_frozen_backbone(image_params):
        return load_features(features_dir, photos)[0]
    paths = photos["image_path"].tolist()
    parts = [
        image.features(load_pixels(paths[i : i + 64], image.image_size))
        for i in range(0, len(paths), 64)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def reference_profile(
    trained_on: pd.DataFrame,
    held_out_file: Path,
    codes: list[int],
    image: ImageModel | None,
    features_dir: Path,
    image_params: dict[str, Any],
) -> Profile:
    """`trained_on`: the products the shipped models learned from; `held_out_file`: the
    train_fusion stage's fused predictions on products the models predicting them had not
    trained on (the validation split and the out-of-fold train split)."""
    photos = trained_on[trained_on["has_image"]]
    sizes = np.array(
        [inspect_image(read_photo(path))[1] for path in photos["image_path"]], dtype=np.int64
    ).reshape(-1, 2)
    features = _photo_features(photos, image, features_dir, image_params) if image else None
    colours = None
    if image is not None:
        sampled = photos["image_path"].iloc[sample_rows(len(photos), seed=4)].tolist()
        colours = np.concatenate(
            [mean_colours(load_pixels(sampled[i : i + 64], image.image_size))
             for i in range(0, len(sampled), 64)]
        ) if sampled else None  # fmt: skip
    code_of = np.asarray(codes)
    with np.load(held_out_file) as held_out:
        predicted = code_of[held_out["predicted"]]
        confidence = held_out["confidence"]
        text_log_probabilities = held_out["text_log_probabilities"]
    return build_profile(
        codes=list(codes),
        train_labels=code_of[trained_on["label"].to_numpy()],
        text_lengths=(
            trained_on["designation"].str.len() + trained_on["description"].fillna("").str.len()
        ).to_numpy(),
        languages=[guess_language(text) for text in trained_on["text"]],
        has_photo=trained_on["has_image"].to_numpy(),
        photo_sizes=sizes,
        image_features=features,
        photo_colours=colours,
        held_out_codes=predicted,
        held_out_confidence=confidence,
        held_out_text_log_probabilities=text_log_probabilities,
    )


def observation(
    designation: str,
    description: str,
    photo_size: tuple[int, int] | None,
    prediction: BundlePrediction,
    row: int,
    profile: Profile | None,
) -> dict[str, Any]:
    """What drift detection sees of one predicted product, as the prediction store keeps it:
    its text length and language, its photo, the model's answer, and the representations the
    profile's reference samples are compared with (the text model's log-probabilities, the
    photo's projected backbone features)."""
    width, height = photo_size or (None, None)
    features, colour = prediction.features_of(row), prediction.colour_of(row)
    image_embedding = None
    if features is not None and profile is not None:
        projected = profile.image_embedding(features[None, :])
        image_embedding = None if projected is None else projected[0].round(4).tolist()
    return {
        "text_length": len(designation) + len(description),
        "language": guess_language(product_text(designation, description)),
        "has_photo": photo_size is not None,
        "photo_used": bool(prediction.image_used[row]),
        "photo_width": width,
        "photo_height": height,
        "prdtypecode": int(prediction.codes[row]),
        "probability": float(prediction.confidence[row]),
        "text_embedding": np.log(prediction.text_probabilities[row] + 1e-12).round(4).tolist(),
        "image_embedding": image_embedding,
        "photo_colour": None if colour is None else colour.round(2).tolist(),
    }
