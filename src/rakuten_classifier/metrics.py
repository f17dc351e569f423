"""Metrics, timings and plots: what `dvc metrics show/diff` compares and what people look at."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from rakuten_classifier.files import atomic_path
from rakuten_classifier.labels import LabelMap


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, weighted F1 (the challenge's metric) and macro F1 (every class counts the same)."""
    if len(y_true) == 0:
        return {"n": 0}
    return {
        "n": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "f1_weighted": round(
            float(f1_score(y_true, y_pred, average="weighted", zero_division=0)), 4
        ),
        "f1_macro": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
    }


def bootstrap_interval(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of `statistic(*arrays)`: the rows of all the arrays are
    resampled together, so a statistic of paired columns (two models on the same products)
    keeps them paired."""
    count = len(arrays[0])
    if count == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            statistic(*(array[rows] for array in arrays))
            for rows in rng.integers(0, count, size=(resamples, count))
        ]
    )
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def weighted_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's `f1_score(average="weighted", zero_division=0)` in counting form: the same
    number ~40x faster, which the bootstrap intervals (thousands of calls) need."""
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    truth, predicted = codes[: len(y_true)], codes[len(y_true) :]
    support = np.bincount(truth, minlength=len(classes))
    true_positive = np.bincount(truth[truth == predicted], minlength=len(classes))
    predicted_count = np.bincount(predicted, minlength=len(classes))
    denominator = support + predicted_count  # 2tp + fp + fn
    f1 = np.divide(
        2 * true_positive, denominator, out=np.zeros(len(classes)), where=denominator > 0
    )
    return float(f1 @ support / support.sum()) if support.sum() else 0.0


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, labels: LabelMap) -> pd.DataFrame:
    """Precision, recall, F1 and support for every product type, by code and name."""
    classes = np.arange(len(labels.codes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return pd.DataFrame(
        {
            "prdtypecode": labels.codes,
            "name": [labels.name(code) for code in labels.codes],
            "precision": precision.round(4),
            "recall": recall.round(4),
            "f1": f1.round(4),
            "support": support,
        }
    )


def time_per_product(
    predict: Callable[[Sequence[Any]], Any], items: Sequence[Any], batch_size: int, singles: int
) -> dict[str, float]:
    """Milliseconds per product, measured: in batches over all items, and one at a time over
    the first `singles` items (the API's case). One warm-up call is not counted."""
    if not len(items):
        return {}
    predict(items[:1])
    start = time.perf_counter()
    for first in range(0, len(items), batch_size):
        predict(items[first : first + batch_size])
    batch_ms = (time.perf_counter() - start) * 1000 / len(items)
    count = min(singles, len(items))
    start = time.perf_counter()
    for row in range(count):
        predict(items[row : row + 1])
    single_ms = (time.perf_counter() - start) * 1000 / count
    return {
        "ms_per_product_batch": round(batch_ms, 3),
        "ms_per_product_single": round(single_ms, 3),
    }


# --- plots ----------------------------------------------------------------------------------


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(figure)


def plot_confusion(
    actual: Sequence[int], predicted: Sequence[int], labels: LabelMap, path: Path, title: str
) -> None:
    """Row-normalised confusion matrix of product type codes (recall on the diagonal), with
    the counts written in the cells."""
    plt = pyplot()
    classes = np.arange(len(labels.codes))
    counts = confusion_matrix(actual, predicted, labels=list(labels.codes))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = [f"{code} {labels.name(code)[:22]}" for code in labels.codes]
    size = max(6.0, 0.38 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    shown = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            colour = "white" if rates[row, column] > 0.6 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=6, color=colour)
    axes.set_xticks(classes, names, rotation=90, fontsize=7)
    axes.set_yticks(classes, names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title)
    figure.colorbar(shown, ax=axes, fraction=0.04, label="share of the actual class")
    save_figure(figure, path)


def plot_per_class_f1(scores: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """One horizontal bar per product type and model, sorted by the last model's F1."""
    plt = pyplot()
    last = next(reversed(scores.values()))
    order = last.sort_values("f1")["prdtypecode"].tolist()
    figure, axes = plt.subplots(figsize=(8, max(4.0, 0.3 * len(order) + 1)))
    height = 0.8 / len(scores)
    for offset, (model, frame) in enumerate(scores.items()):
        frame = frame.set_index("prdtypecode").loc[order]
        positions = np.arange(len(order)) + offset * height
        axes.barh(positions, frame["f1"], height=height, label=model)
    names = [f"{code} {last.set_index('prdtypecode').at[code, 'name'][:28]}" for code in order]
    axes.set_yticks(np.arange(len(order)) + 0.4 - height / 2, names, fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1")
    axes.set_title(title)
    axes.legend(loc="lower right")
    save_figure(figure, path)


def plot_f1_change(changes: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """How far each product type's F1 moved between two runs, one panel per model (green up,
    red down). Frames are indexed by product type code, with `name` and `change` columns; the
    rows follow the first model's change, so a class sits at the same height in every panel."""
    plt = pyplot()
    first = next(iter(changes.values()))
    order = first["change"].fillna(0).sort_values().index.tolist()
    figure, grid = plt.subplots(
        1,
        len(changes),
        figsize=(3.5 * len(changes) + 2.5, max(4.0, 0.3 * len(order) + 1)),
        sharey=True,
        squeeze=False,
    )
    positions = np.arange(len(order))
    # One scale for every panel, so bars of the same length mean the same change.
    limit = max(0.05, *(float(frame["change"].abs().max()) * 1.1 for frame in changes.values()))
    for axes, (model, frame) in zip(grid[0], changes.items(), strict=True):
        values = frame["change"].reindex(order).fillna(0)
        colours = ["tab:green" if value > 0 else "tab:red" for value in values]
        axes.barh(positions, values, color=colours)
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlim(-limit, limit)
        axes.set_title(model)
        axes.set_xlabel("F1 change")
    names = [f"{code} {first.at[code, 'name'][:28]}" for code in order]
    grid[0][0].set_yticks(positions, names, fontsize=7)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_training_curves(histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Loss and accuracy per epoch (train and validation) of each Keras model, side by side."""
    plt = pyplot()
    histories = {name: frame for name, frame in histories.items() if len(frame)}
    if not histories:
        return
    figure, grid = plt.subplots(2, len(histories), figsize=(5 * len(histories), 6), squeeze=False)
    for column, (name, frame) in enumerate(histories.items()):
        for row, metric in enumerate(("loss", "accuracy")):
            axes = grid[row][column]
            for prefix, style in (("", "-"), ("val_", "--")):
                if prefix + metric in frame:
                    axes.plot(frame.index + 1, frame[prefix + metric], style, label=prefix + metric)
            axes.set_title(f"{name}: {metric}")
            axes.set_xlabel("epoch")
            axes.legend()
    save_figure(figure, path)


def read_dvclive_history(live_dir: Path) -> pd.DataFrame:
    """Per-epoch metrics the Keras callback logged through DVCLive, Keras-named (`loss`,
    `val_loss`...): DVCLive files them as `plots/metrics/{train,eval}/<metric>.tsv`."""
    root = Path(live_dir) / "plots" / "metrics"
    columns = {}
    for tsv in sorted(root.rglob("*.tsv")):
        split = tsv.parent.name
        name = {"train": tsv.stem, "eval": f"val_{tsv.stem}"}.get(split, f"{split}_{tsv.stem}")
        columns[name] = pd.read_csv(tsv, sep="\t").set_index("step")[tsv.stem]
    return pd.DataFrame(columns)
