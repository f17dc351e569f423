"""The drift reference of a bundle (`drift_profile.Profile`), built by the predict stage from
the products the shipped models trained on and from the evaluated models' answers on the
held-out splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier.bundle import Bundle, predict_frame
from rakuten_classifier.drift_profile import Profile, build_profile
from rakuten_classifier.image import ImageModel, has_frozen_backbone, load_features, load_pixels
from rakuten_classifier.preprocess import inspect_image, read_photo
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
    held_out: pd.DataFrame,
    evaluated: Bundle,
    image: ImageModel | None,
    features_dir: Path,
    image_params: dict[str, Any],
    batch_size: int = 64,
) -> Profile:
    """`trained_on`: the products the shipped models learned from; `held_out`: products the
    `evaluated` models did not (validation and test), predicted here."""
    _, prediction = predict_frame(evaluated, held_out, batch_size, progress=False)
    photos = trained_on[trained_on["has_image"]]
    sizes = np.array(
        [inspect_image(read_photo(path))[1] for path in photos["image_path"]], dtype=np.int64
    ).reshape(-1, 2)
    features = _photo_features(photos, image, features_dir, image_params) if image else None
    codes = np.asarray(evaluated.labels.codes)
    return build_profile(
        codes=list(evaluated.labels.codes),
        train_labels=codes[trained_on["label"].to_numpy()],
        text_lengths=(
            trained_on["designation"].str.len() + trained_on["description"].fillna("").str.len()
        ).to_numpy(),
        languages=[guess_language(text) for text in trained_on["text"]],
        has_photo=trained_on["has_image"].to_numpy(),
        photo_sizes=sizes,
        image_features=features,
        held_out_codes=prediction.codes,
        held_out_confidence=prediction.confidence,
        held_out_text_log_probabilities=np.log(prediction.text_probabilities + 1e-12),
    )
