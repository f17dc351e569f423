"""The reference profile a model bundle carries for drift detection (bundle/profile/): what the
products it was trained on looked like, and what its models answered on products they had not
trained on.

Input side, from the training products: the class prior, the text lengths, the language mix,
the share with a usable photo, the photos' sizes and mean colours, and a sample of the photos'
backbone features through a fixed random projection (backbone features hardly move when a
photo's colours do, hence the colours). Model side, from held-out products (the validation and test
splits, predicted by the models trained without them; on training products the models are more
confident than on new ones): the predicted class mix, the confidence, a sample of the text
model's log-probabilities.

Samples are drawn with a fixed seed and the projection is a seeded Gaussian matrix (no fitted
decomposition): the same data give the same bytes on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rakuten_classifier.files import atomic_path, read_json, write_json

PROFILE_JSON = "profile.json"
PROFILE_ARRAYS = "profile.npz"
LANGUAGES = ("fr", "en", "de", "other")
SAMPLE_ROWS = 1000  # rows kept of each sample
IMAGE_DIMENSIONS = 64  # the photo features' random projection
PROJECTION_SEED = 20260101


def random_projection(width: int, dimensions: int = IMAGE_DIMENSIONS) -> np.ndarray:
    """A fixed (dimensions x width) Gaussian matrix: distances between photos' features are
    kept up to a bounded distortion (Johnson-Lindenstrauss), enough to compare two clouds."""
    rng = np.random.default_rng(PROJECTION_SEED)
    return rng.standard_normal((dimensions, width)) / np.sqrt(dimensions)


def project(features: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(features - mean) through the projection, summed elementwise in float64 rather than by a
    BLAS product, whose kernel (and so the last bits) depends on the CPU."""
    centred = np.asarray(features, dtype=np.float64) - mean
    out = np.empty((len(centred), len(matrix)))
    for start in range(0, len(centred), 64):  # bounded memory: 64 x dims x width at a time
        block = centred[start : start + 64]
        out[start : start + 64] = (block[:, None, :] * matrix[None, :, :]).sum(axis=-1)
    return out


def sample_rows(count: int, rows: int = SAMPLE_ROWS, seed: int = 0) -> np.ndarray:
    """Up to `rows` row numbers of `count`, in order, the same for the same arguments."""
    if count <= rows:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, rows, replace=False))


@dataclass
class Profile:
    codes: list[int]
    class_prior: list[float]  # training labels
    predicted_prior: list[float]  # held-out predictions
    language_shares: list[float]  # in LANGUAGES order
    photo_share: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # confidence, text_length, photo_width, photo_height, photo_colour, text_embedding,
    # image_embedding, image_mean, image_projection

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            out_dir / PROFILE_JSON,
            {
                "codes": self.codes,
                "class_prior": [round(v, 6) for v in self.class_prior],
                "predicted_prior": [round(v, 6) for v in self.predicted_prior],
                "languages": list(LANGUAGES),
                "language_shares": [round(v, 6) for v in self.language_shares],
                "photo_share": round(self.photo_share, 6),
                "samples": {name: len(values) for name, values in sorted(self.arrays.items())},
            },
        )
        with atomic_path(out_dir / PROFILE_ARRAYS) as tmp:
            np.savez(tmp, **{name: self.arrays[name] for name in sorted(self.arrays)})

    @classmethod
    def load(cls, profile_dir: Path) -> Profile:
        spec: dict[str, Any] = read_json(Path(profile_dir) / PROFILE_JSON)
        with np.load(Path(profile_dir) / PROFILE_ARRAYS) as stored:
            arrays = {name: stored[name] for name in stored.files}
        return cls(
            codes=[int(code) for code in spec["codes"]],
            class_prior=spec["class_prior"],
            predicted_prior=spec["predicted_prior"],
            language_shares=spec["language_shares"],
            photo_share=spec["photo_share"],
            arrays=arrays,
        )

    def image_embedding(self, features: np.ndarray) -> np.ndarray | None:
        """The photos' backbone features in the profile's projection (None without one)."""
        if "image_projection" not in self.arrays or not len(features):
            return None
        return project(features, self.arrays["image_mean"], self.arrays["image_projection"])


def build_profile(
    *,
    codes: list[int],
    train_labels: np.ndarray,
    text_lengths: np.ndarray,
    languages: list[str],
    has_photo: np.ndarray,
    photo_sizes: np.ndarray,
    image_features: np.ndarray | None,
    photo_colours: np.ndarray | None,
    held_out_codes: np.ndarray,
    held_out_confidence: np.ndarray,
    held_out_text_log_probabilities: np.ndarray,
) -> Profile:
    """The profile of a bundle from what its models trained on (`train_*`, the photo arrays)
    and what they answered on held-out products (`held_out_*`). `train_labels` and
    `held_out_codes` are product type codes; `photo_sizes` is (photos, 2): width, height."""
    codes = [int(code) for code in codes]
    held = sample_rows(len(held_out_codes), seed=1)
    arrays: dict[str, np.ndarray] = {
        "confidence": np.asarray(held_out_confidence, dtype=np.float64)[held],
        "text_embedding": np.asarray(held_out_text_log_probabilities, dtype=np.float64)[held],
        "text_length": np.asarray(text_lengths, dtype=np.int64)[sample_rows(len(text_lengths))],
    }
    sizes = np.asarray(photo_sizes, dtype=np.int64).reshape(-1, 2)[sample_rows(len(photo_sizes))]
    arrays["photo_width"], arrays["photo_height"] = sizes[:, 0], sizes[:, 1]
    if photo_colours is not None and len(photo_colours):
        arrays["photo_colour"] = np.asarray(photo_colours, dtype=np.float64)
    if image_features is not None and len(image_features):
        features = np.asarray(image_features, dtype=np.float64)
        mean = features.mean(axis=0)
        matrix = random_projection(features.shape[1])
        arrays["image_mean"], arrays["image_projection"] = mean, matrix
        arrays["image_embedding"] = project(
            features[sample_rows(len(features), seed=2)], mean, matrix
        )
    return Profile(
        codes=codes,
        class_prior=[float(np.mean(np.asarray(train_labels) == code)) for code in codes],
        predicted_prior=[float(np.mean(np.asarray(held_out_codes) == code)) for code in codes],
        language_shares=[
            float(np.mean([lang == code for lang in languages])) for code in LANGUAGES
        ],
        photo_share=float(np.mean(has_photo)) if len(has_photo) else 0.0,
        arrays=arrays,
    )
