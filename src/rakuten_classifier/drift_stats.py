"""Two-sample tests for drift: is a window of production traffic drawn from the same
distribution as the reference the model was trained and checked on?

- categorical shares (predicted product types, languages, photo or not): the population
  stability index, and the chi-square statistic of the window's counts against the reference
  shares, its p-value from multinomial windows drawn from those shares;
- numbers (confidence, text length, photo size): the two-sample Kolmogorov-Smirnov test;
- vectors (text and photo representations): the maximum mean discrepancy with a Gaussian
  kernel, its p-value from permutations.

scipy and numpy only; every random draw takes a seed, so the same window gives the same
answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

# Added to every share before the PSI's logarithm: a category absent on one side costs a
# finite amount (the usual smoothing).
SHARE_FLOOR = 1e-4


def shares(values: Sequence[object], categories: Sequence[object]) -> np.ndarray:
    """The share of each category among `values` (in `categories`' order)."""
    counts = np.array([sum(value == category for value in values) for category in categories])
    total = counts.sum()
    return counts / total if total else np.zeros(len(categories))


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Population stability index: sum of (w - r) * ln(w / r) over the categories. Rules of
    thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift."""
    reference = np.asarray(reference, dtype=float) + SHARE_FLOOR
    window = np.asarray(window, dtype=float) + SHARE_FLOOR
    reference, window = reference / reference.sum(), window / window.sum()
    return float(np.sum((window - reference) * np.log(window / reference)))


def chi_square_statistic(expected_shares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson's statistic of each row of `counts` against the shares (rows: samples)."""
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    expected = (np.asarray(expected_shares, dtype=float) + SHARE_FLOOR) * counts.sum(
        axis=1, keepdims=True
    )
    expected /= expected.sum(axis=1, keepdims=True) / counts.sum(axis=1, keepdims=True)
    return ((counts - expected) ** 2 / expected).sum(axis=1)


def mix_p(reference_shares: np.ndarray, window_counts: np.ndarray, draws: int = 2000,
          seed: int = 0) -> float:  # fmt: skip
    """p-value of the window's category counts under the reference shares, from `draws`
    multinomial windows of the same size drawn from those shares: exact where the chi-square
    approximation is not (27 product types in a window of 100 expect under 4 of each)."""
    counts = np.asarray(window_counts, dtype=float)
    total = round(float(counts.sum()))
    if total == 0:
        return 1.0
    shares = np.asarray(reference_shares, dtype=float) + SHARE_FLOOR
    shares /= shares.sum()
    observed = chi_square_statistic(shares, counts)[0]
    simulated = np.random.default_rng(seed).multinomial(total, shares, size=draws)
    larger = int(np.sum(chi_square_statistic(shares, simulated) >= observed - 1e-9))
    return (larger + 1) / (draws + 1)


def ks_p(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test; (0, 1) when a side is
    empty."""
    reference, window = np.asarray(reference, float), np.asarray(window, float)
    if not len(reference) or not len(window):
        return 0.0, 1.0
    result = stats.ks_2samp(reference, window)
    return float(result.statistic), float(result.pvalue)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2 * a @ b.T


def mmd_p(
    reference: np.ndarray,
    window: np.ndarray,
    permutations: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """(MMD², p-value): the (biased) squared maximum mean discrepancy between the two samples
    with a Gaussian kernel whose bandwidth is the median distance of the pooled sample, and
    the share of random relabellings of the pooled sample whose MMD² is at least as large.

    With weights w (1/n on one sample, -1/m on the other), MMD² = w' K w: every relabelling is
    one weight vector, so all permutations cost one matrix product."""
    reference, window = np.asarray(reference, float), np.asarray(window, float)
    if len(reference) < 2 or len(window) < 2:
        return 0.0, 1.0
    pooled = np.concatenate([reference, window])
    distances = np.maximum(_squared_distances(pooled, pooled), 0.0)
    bandwidth = np.median(distances[np.triu_indices(len(pooled), k=1)])
    kernel = np.exp(-distances / max(bandwidth, 1e-12))
    n, m = len(reference), len(window)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    rng = np.random.default_rng(seed)
    weights = np.stack([base] + [rng.permutation(base) for _ in range(permutations)])
    statistics = np.einsum("pi,pi->p", weights @ kernel, weights)
    observed = float(statistics[0])
    larger = int(np.sum(statistics[1:] >= observed - 1e-12))
    return observed, (larger + 1) / (permutations + 1)
