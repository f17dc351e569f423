"""Two-sample tests for drift: is a window of production traffic drawn from the same
distribution as the reference the model was trained and checked on?

- categorical shares (predicted product types, languages, photo or not): the population
  stability index, and a chi-square test of the window's counts against the reference shares;
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


def chi_square_p(reference_shares: np.ndarray, window_counts: np.ndarray) -> float:
    """p-value of the window's counts under the reference shares (categories the reference
    never saw are merged into the smallest expected cell so the test stays defined)."""
    counts = np.asarray(window_counts, dtype=float)
    total = counts.sum()
    if total == 0:
        return 1.0
    expected = (np.asarray(reference_shares, dtype=float) + SHARE_FLOOR) * total
    expected *= total / expected.sum()
    return float(stats.chisquare(counts, expected).pvalue)


def ks_p(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test; (0, 1) when a side is
    empty."""
    reference, window = np.asarray(reference, float), np.asarray(window, float)
    if not len(reference) or not len(window):
        return 0.0, 1.0
    result = stats.ks_2samp(reference, window)
    return float(result.statistic), float(result.pvalue)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Summed elementwise rather than through BLAS (a matrix product): the same bits on
    # every machine, and these matrices are small.
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)


def mmd_p(
    reference: np.ndarray,
    window: np.ndarray,
    permutations: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """(MMD², p-value): the squared maximum mean discrepancy between the two samples with a
    Gaussian kernel (bandwidth: the median distance of the pooled sample), and the share of
    random relabellings of the pooled sample whose MMD² is at least as large."""
    reference, window = np.asarray(reference, float), np.asarray(window, float)
    if len(reference) < 2 or len(window) < 2:
        return 0.0, 1.0
    pooled = np.concatenate([reference, window])
    distances = _squared_distances(pooled, pooled)
    bandwidth = np.median(distances[np.triu_indices(len(pooled), k=1)])
    kernel = np.exp(-distances / max(bandwidth, 1e-12))
    n = len(reference)

    def statistic(first: np.ndarray) -> float:
        second = ~first
        within_first = kernel[np.ix_(first, first)]
        within_second = kernel[np.ix_(second, second)]
        between = kernel[np.ix_(first, second)]
        m1, m2 = first.sum(), second.sum()
        # Unbiased: the diagonal (a point with itself) left out.
        term1 = (within_first.sum() - np.trace(within_first)) / (m1 * (m1 - 1))
        term2 = (within_second.sum() - np.trace(within_second)) / (m2 * (m2 - 1))
        return float(term1 + term2 - 2 * between.mean())

    labels = np.zeros(len(pooled), dtype=bool)
    labels[:n] = True
    observed = statistic(labels)
    rng = np.random.default_rng(seed)
    larger = sum(statistic(rng.permutation(labels)) >= observed for _ in range(permutations))
    return observed, (larger + 1) / (permutations + 1)
