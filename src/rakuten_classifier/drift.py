"""Drift detection: a window of production traffic (the served predictions in the store) against
the reference profile of the bundle that served it.

Each check is a two-sample test (`drift_stats`): the predicted product type mix (PSI and
chi-square), the language mix and the share of products with a photo (chi-square), the
confidence, the text length and the photos' width and height (Kolmogorov-Smirnov), the text
model's log-probabilities, the photos' projected backbone features and their mean colours
(MMD, permutation p-value). A check fires when its p-value is under `p_value` (and, for the
product type mix, its PSI over `psi`); the thresholds are params.yaml's `drift:` section, chosen
from the false alarm rates measured by bench/drift_rates.py (docs/monitoring.md).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier.drift_profile import LANGUAGES, Profile, sample_rows
from rakuten_classifier.drift_stats import ks_p, mix_p, mmd_p, psi, shares


@dataclass(frozen=True)
class DriftSettings:
    p_value: float = 0.005  # a check fires under this p-value
    psi: float = 0.25  # and the product type mix only when its PSI is over this too
    permutations: int = 999  # of the MMD tests (the smallest p-value: 1/1000)
    reference_rows: int = 300  # of the reference samples the MMD tests compare with
    min_rows: int = 30  # a check on fewer window rows is not run

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> DriftSettings:
        return cls(**{k: v for k, v in section.items() if k in cls.__dataclass_fields__})


@dataclass
class Check:
    name: str
    test: str
    statistic: float
    p_value: float
    rows: int
    drifted: bool
    detail: str = ""


def _vectors(column: pd.Series) -> np.ndarray:
    rows = [value for value in column if isinstance(value, list) and value]
    return np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def _skipped(name: str, test: str, rows: int, settings: DriftSettings) -> Check:
    return Check(name, test, 0.0, 1.0, rows, False, f"fewer than {settings.min_rows} rows")


def _share_checks(profile: Profile, window: pd.DataFrame, settings: DriftSettings) -> list[Check]:
    """The product type mix the model predicts, the languages, the share with a photo."""
    rows = len(window)
    if rows < settings.min_rows:
        names = (("predicted_mix", "psi+chi2"), ("language_mix", "chi2"), ("photo_share", "chi2"))
        return [_skipped(name, test, rows, settings) for name, test in names]
    mix = shares(window["prdtypecode"].tolist(), profile.codes)
    index = psi(np.asarray(profile.predicted_prior), mix)
    p_mix = mix_p(np.asarray(profile.predicted_prior), mix * rows)
    languages = shares(window["language"].tolist(), list(LANGUAGES))
    p_languages = mix_p(np.asarray(profile.language_shares), languages * rows)
    photo = float(window["has_photo"].astype(bool).mean())
    expected = np.array([1 - profile.photo_share, profile.photo_share])
    p_photo = mix_p(expected, np.array([1 - photo, photo]) * rows)
    fired = settings.p_value
    return [
        Check("predicted_mix", "psi+chi2", index, p_mix, rows,
              p_mix < fired and index > settings.psi, f"PSI {index:.3f}"),
        Check("language_mix", "chi2", psi(np.asarray(profile.language_shares), languages),
              p_languages, rows, p_languages < fired),
        Check("photo_share", "chi2", photo - profile.photo_share, p_photo, rows, p_photo < fired,
              f"{photo:.2f} with a photo, {profile.photo_share:.2f} in training"),
    ]  # fmt: skip


def check_window(profile: Profile, window: pd.DataFrame, settings: DriftSettings) -> list[Check]:
    """Every check of `window` (served predictions: prdtypecode, probability, text_length,
    language, has_photo, photo_width, photo_height, text_embedding, image_embedding)."""
    arrays = profile.arrays
    checks = _share_checks(profile, window, settings)
    photos = window[window["has_photo"].astype(bool)]
    numbers = {
        "confidence": (arrays["confidence"], window["probability"].to_numpy(float)),
        "text_length": (arrays["text_length"], window["text_length"].to_numpy(float)),
        "photo_width": (arrays["photo_width"], photos["photo_width"].dropna().to_numpy(float)),
        "photo_height": (arrays["photo_height"], photos["photo_height"].dropna().to_numpy(float)),
    }
    for name, (reference, values) in numbers.items():
        if len(values) < settings.min_rows:
            checks.append(_skipped(name, "ks", len(values), settings))
            continue
        statistic, p = ks_p(reference, values)
        checks.append(Check(name, "ks", statistic, p, len(values), p < settings.p_value))
    vectors = {
        "text_embedding": (arrays.get("text_embedding"), _vectors(window["text_embedding"])),
        "image_embedding": (arrays.get("image_embedding"), _vectors(window["image_embedding"])),
        "photo_colour": (arrays.get("photo_colour"), _vectors(window["photo_colour"])),
    }
    for name, (reference, values) in vectors.items():
        if reference is None or len(values) < settings.min_rows:
            checks.append(_skipped(name, "mmd", len(values), settings))
            continue
        reference = reference[sample_rows(len(reference), settings.reference_rows, seed=3)]
        statistic, p = mmd_p(reference, values, settings.permutations)
        checks.append(Check(name, "mmd", statistic, p, len(values), p < settings.p_value))
    return checks


@dataclass
class DriftResult:
    model_version: str
    window_start: datetime | None
    window_end: datetime | None
    predictions: int
    checks: list[Check]

    @property
    def drifted(self) -> bool:
        return any(check.drifted for check in self.checks)

    def row(self) -> dict[str, Any]:
        """For the store's drift_reports table."""
        return {
            "uid": uuid.uuid4().hex,
            "created_at": datetime.now(UTC),
            "model_version": self.model_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "predictions": self.predictions,
            "drifted": self.drifted,
            "checks": [asdict(check) for check in self.checks],
        }

    def table(self) -> str:
        lines = [f"{'check':<16} {'test':<9} {'statistic':>10} {'p-value':>9} {'rows':>5}  drift"]
        for c in self.checks:
            cells = f"{c.name:<16} {c.test:<9} {c.statistic:>10.4f} {c.p_value:>9.4f} {c.rows:>5}"
            detail = f"  ({c.detail})" if c.detail else ""
            lines.append(f"{cells}  {'YES' if c.drifted else 'no'}{detail}")
        return "\n".join(lines)


def detect(
    profile: Profile, window: pd.DataFrame, model_version: str, settings: DriftSettings
) -> DriftResult:
    times = window["created_at"] if "created_at" in window and len(window) else None
    return DriftResult(
        model_version,
        times.min().to_pydatetime() if times is not None else None,
        times.max().to_pydatetime() if times is not None else None,
        len(window),
        check_window(profile, window, settings),
    )
