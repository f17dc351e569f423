"""Probabilities from scores: softmax with a temperature, the log-loss it is fitted by, and the
one guarded logarithm every module takes of a probability."""

from __future__ import annotations

import numpy as np

# Added before taking the log of a probability: a class given exactly 0 costs log(1e-12), not -inf.
EPSILON = 1e-12


# 0.01 to 100 in 160 even steps of log(t), each rounded to 4 significant digits: NumPy's exp
# differs in the last bit between CPUs, which would change the chosen value's file bytes.
TEMPERATURES = tuple(float(f"{10 ** (k / 40):.4g}") for k in range(-80, 81))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log(p), float64, finite even where p is 0."""
    return np.log(np.asarray(probabilities, dtype=np.float64) + EPSILON)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (float64, stable for large scores)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true classes."""
    rows = np.arange(len(y))
    return float(-log_probabilities(np.asarray(probabilities)[rows, y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the validation log-loss (a grid in log space).

    A linear SVM's margins are not probabilities, and small-data networks are over-confident;
    one scalar calibrates either without changing which class wins.
    """
    losses = [log_loss(softmax(logits, t), y) for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(losses))]
