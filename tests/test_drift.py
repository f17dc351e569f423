"""The two-sample tests drift detection rests on (on synthetic samples: mechanics, not quality),
and the checks' verdicts on windows built from the pipeline run's bundle. The drift rates on
real traffic are measured by bench/drift_rates.py (docs/monitoring.md); the live path (API,
store, exporter, Prometheus) is in test_monitoring.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rakuten_classifier.drift import DriftSettings, check_window, detect
from rakuten_classifier.drift_profile import LANGUAGES, Profile
from rakuten_classifier.drift_stats import chi_square_statistic, ks_p, mix_p, mmd_p, psi, shares

SHARES = np.array([0.4, 0.3, 0.2, 0.1])


def test_psi_is_zero_on_the_same_mix_and_large_on_a_reversed_one() -> None:
    assert psi(SHARES, SHARES) == pytest.approx(0.0, abs=1e-12)
    assert psi(SHARES, SHARES[::-1]) > 0.25
    # A category absent from one side costs a finite amount.
    assert np.isfinite(psi(SHARES, np.array([0.5, 0.5, 0.0, 0.0])))


def test_shares_count_in_the_given_order() -> None:
    assert shares(["b", "a", "b", "z"], ["a", "b", "c"]) == pytest.approx([1 / 3, 2 / 3, 0])
    assert not shares([], ["a"]).any()


def test_mix_p_holds_its_false_alarm_rate_and_detects_a_shift() -> None:
    """Under the reference shares, p < 0.05 in about 5% of windows (exact, not asymptotic);
    a reversed mix of 100 products is always detected."""
    rng = np.random.default_rng(7)
    windows = rng.multinomial(60, SHARES, size=300)
    p_values = np.array([mix_p(SHARES, counts, draws=400, seed=i) for i, counts in
                         enumerate(windows)])  # fmt: skip
    assert 0.01 <= np.mean(p_values < 0.05) <= 0.10
    assert mix_p(SHARES, np.array([10, 20, 30, 40])) < 0.001
    assert mix_p(SHARES, np.zeros(4)) == 1.0
    assert chi_square_statistic(SHARES, np.array([40, 30, 20, 10]))[0] < 0.01


def test_ks_p_separates_shifted_numbers() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 500)
    assert ks_p(reference, rng.normal(0, 1, 60))[1] > 0.01
    assert ks_p(reference, rng.normal(1, 1, 60))[1] < 1e-4
    assert ks_p(reference, np.array([])) == (0.0, 1.0)


def test_mmd_p_is_seeded_calibrated_and_detects_a_moved_cloud() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, (200, 16))
    same = [mmd_p(reference, rng.normal(0, 1, (40, 16)), 99, seed=i)[1] for i in range(40)]
    assert 0.0 <= np.mean(np.array(same) < 0.05) <= 0.15
    moved = rng.normal(0.5, 1, (40, 16))  # every coordinate moved by half a deviation
    statistic, p = mmd_p(reference, moved, 199)
    assert statistic > 0 and p == pytest.approx(1 / 200)
    assert mmd_p(reference, moved, 199) == (statistic, p)  # the same window, the same answer


def window_like(profile: Profile, rows: int, seed: int = 0) -> pd.DataFrame:
    """A window drawn from the profile's own samples: what the store would hold of traffic
    exactly like the reference."""
    rng = np.random.default_rng(seed)
    arrays = profile.arrays

    def draw(name: str) -> np.ndarray:
        return arrays[name][rng.integers(0, len(arrays[name]), rows)]

    def normalised(values: list[float]) -> np.ndarray:
        return np.asarray(values) / np.sum(values)  # the profile rounds its shares

    photo = rng.random(rows) < profile.photo_share
    image = draw("image_embedding")
    colour = draw("photo_colour")
    return pd.DataFrame(
        {
            "prdtypecode": rng.choice(profile.codes, rows, p=normalised(profile.predicted_prior)),
            "probability": draw("confidence"),
            "text_length": draw("text_length"),
            "language": rng.choice(LANGUAGES, rows, p=normalised(profile.language_shares)),
            "has_photo": photo,
            "photo_width": np.where(photo, draw("photo_width"), np.nan),
            "photo_height": np.where(photo, draw("photo_height"), np.nan),
            "text_embedding": list(draw("text_embedding")),
            "image_embedding": [list(v) if p else None for v, p in zip(image, photo, strict=True)],
            "photo_colour": [list(v) if p else None for v, p in zip(colour, photo, strict=True)],
            "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )


def test_checks_on_the_pipeline_bundle_profile(bundle_dir: Path) -> None:
    profile = Profile.load(bundle_dir / "profile")
    settings = DriftSettings(permutations=199)
    like = detect(profile, window_like(profile, 80), "v1", settings)
    assert {check.name for check in like.checks} >= {
        "predicted_mix",
        "photo_share",
        "image_embedding",
        "photo_colour",
    }
    assert not like.drifted, like.table()
    shifted = window_like(profile, 80).assign(has_photo=False, image_embedding=None,
                                              photo_colour=None)  # fmt: skip
    fired = {check.name for check in check_window(profile, shifted, settings) if check.drifted}
    assert fired == {"photo_share"}
    tiny = {check.name: check for check in check_window(profile, shifted.head(5), settings)}
    assert not any(check.drifted for check in tiny.values())
    assert "fewer than 30 rows" in tiny["confidence"].detail
