"""Dual coordinate descent for the L2-regularised squared-hinge linear SVM, one-vs-rest, on a
float32 CSR matrix (compiled by Numba).

The algorithm is liblinear's (Hsieh et al., ICML 2008; `solve_l2r_l1l2_svc` with the L2 loss,
shrinking included), which scikit-learn's LinearSVC runs. liblinear needs a float64 copy of the
matrix and then its own copy of that (28 bytes a non-zero in all); this one reads the float32
matrix as it is (8 bytes), so the text model's fit on the full data set's 85k products
(100 million non-zeros) fits in 3 GB. The classes are solved in parallel threads; each has its
own random generator seeded from (seed, class), so the result does not depend on the threads.
Compiled once per machine and kept (Numba's cache: `__pycache__` beside this file where it can
write there, else NUMBA_CACHE_DIR or the user's cache folder); the first fit pays 3 s.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_UINT64_MASK = (1 << 64) - 1


@njit(cache=True, inline="always")
def _next_random(state: np.ndarray) -> np.uint64:
    # xorshift64*: a small generator each class owns (Numba's global one is per thread).
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(2685821657736338717)


@njit(cache=True)
def _solve_one(indptr, indices, data, positive, c_positive, c_negative, tol, max_iter, seed, w):
    """One binary problem (`positive`: +1 rows) into `w` (features, then the bias). Returns the
    iterations run."""
    n = len(indptr) - 1
    bias = w.shape[0] - 1
    y = np.where(positive, 1.0, -1.0)
    diag = np.where(positive, 0.5 / c_positive, 0.5 / c_negative)
    squared_norms = np.empty(n)
    for i in range(n):
        total = 1.0  # the bias feature's value, 1
        for k in range(indptr[i], indptr[i + 1]):
            total += np.float64(data[k]) * np.float64(data[k])
        squared_norms[i] = total + diag[i]
    alpha = np.zeros(n)
    index = np.arange(n)
    state = np.array([np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1)])
    active = n
    # Shrinking's threshold (liblinear's PGmax_old); with no upper bound on alpha (the squared
    # hinge) only rows at zero are shrunk, so its lower twin is not needed.
    high_old = np.inf
    iteration = 0
    while iteration < max_iter:
        high_new, low_new = -np.inf, np.inf
        for i in range(active):  # a random order of the active rows
            j = i + np.int64(_next_random(state) % np.uint64(active - i))
            index[i], index[j] = index[j], index[i]
        s = 0
        while s < active:
            i = index[s]
            margin = w[bias]
            for k in range(indptr[i], indptr[i + 1]):
                margin += w[indices[k]] * data[k]
            gradient = y[i] * margin - 1.0 + alpha[i] * diag[i]
            projected = gradient
            if alpha[i] == 0.0:
                if gradient > high_old:  # shrinking: at its bound and likely to stay there
                    active -= 1
                    index[s], index[active] = index[active], index[s]
                    continue
                if gradient > 0.0:
                    projected = 0.0
            high_new = max(high_new, projected)
            low_new = min(low_new, projected)
            if abs(projected) > 1e-12:
                previous = alpha[i]
                alpha[i] = max(alpha[i] - gradient / squared_norms[i], 0.0)
                step = (alpha[i] - previous) * y[i]
                w[bias] += step
                for k in range(indptr[i], indptr[i + 1]):
                    w[indices[k]] += step * data[k]
            s += 1
        iteration += 1
        if high_new - low_new <= tol:
            if active == n:
                break
            active = n  # converged on the active rows: check every row once more
            high_old = np.inf
            continue
        high_old = high_new if high_new > 0.0 else np.inf
    return iteration


@njit(parallel=True, cache=True)
def _solve_one_vs_rest(indptr, indices, data, labels, problems, c_positive, c_negative, tol,
                       max_iter, seed, weights, iterations):  # fmt: skip
    for problem in prange(len(problems)):
        positive = labels == problems[problem]
        iterations[problem] = _solve_one(
            indptr, indices, data, positive, c_positive[problem], c_negative[problem], tol,
            max_iter, seed + np.uint64(problem), weights[problem],
        )  # fmt: skip


def solve(
    matrix: object,
    labels: np.ndarray,
    positive_classes: np.ndarray,
    c_positive: np.ndarray,
    c_negative: np.ndarray,
    tol: float,
    max_iter: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (problems x (features + bias)) of each binary problem `labels ==
    positive_classes[p]`, and the iterations each took. `matrix`: CSR, float32 or float64."""
    weights = np.zeros((len(positive_classes), matrix.shape[1] + 1))
    iterations = np.zeros(len(positive_classes), dtype=np.int64)
    _solve_one_vs_rest(
        matrix.indptr.astype(np.int64, copy=False),
        matrix.indices,
        matrix.data,
        np.asarray(labels, dtype=np.int64),
        np.asarray(positive_classes, dtype=np.int64),
        np.asarray(c_positive, dtype=np.float64),
        np.asarray(c_negative, dtype=np.float64),
        float(tol),
        int(max_iter),
        np.uint64(seed & _UINT64_MASK),
        weights,
        iterations,
    )
    return weights, iterations
