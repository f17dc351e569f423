"""The figures of bench/cross_validation.py: each model's weighted F1 averaged over the
repeats with a bootstrap interval over products, and paired differences (the same resampled
products, the same folds), as a Markdown table."""

from __future__ import annotations

import numpy as np

from rakuten_classifier.metrics import bootstrap_interval, weighted_f1_score

REFERENCE = "reference (tuned TF-IDF + LinearSVC)"


def mean_f1(y: np.ndarray, answers: np.ndarray) -> float:
    """The mean over repeats (columns) of the weighted F1."""
    return float(np.mean([weighted_f1_score(y, answers[:, r]) for r in range(answers.shape[1])]))


def paired_gain(y: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    return mean_f1(y, first) - mean_f1(y, second)


def summarise(y: np.ndarray, answers: dict[str, np.ndarray], has_photo: np.ndarray) -> list:
    """One row per model and product subset: mean F1 over repeats, its interval, and the paired
    difference to the reference (to the text model for the fusion on products with a photo)."""
    rows = []
    subsets = {"all": np.ones(len(y), bool), "with photo": has_photo}
    comparisons: list[tuple[str, str, str]] = [
        (REFERENCE, "all", ""), ("text", "all", REFERENCE), ("fusion", "all", REFERENCE),
        (REFERENCE, "with photo", ""), ("text", "with photo", REFERENCE),
        ("image", "with photo", REFERENCE), ("fusion", "with photo", REFERENCE),
        ("fusion", "with photo", "text"),
    ]  # fmt: skip
    if "text*" in answers:  # the --set params against the defaults, on the same folds
        comparisons += [("text*", "all", "text"), ("fusion*", "all", "fusion"),
                        ("fusion*", "with photo", "fusion"),
                        ("fusion*", "with photo", "text*")]  # fmt: skip
    for model, subset, against in comparisons:
        keep = subsets[subset]
        truth, mine = y[keep], answers[model][keep]
        row = {"model": model, "products": subset, "n": int(keep.sum())}
        row["weighted_f1"] = round(mean_f1(truth, mine), 4)
        row["f1_interval"] = [round(v, 4) for v in bootstrap_interval(mean_f1, truth, mine)]
        if against:
            theirs = answers[against][keep]
            row["against"] = against
            row["difference"] = round(paired_gain(truth, mine, theirs), 4)
            interval = bootstrap_interval(paired_gain, truth, mine, theirs)
            row["difference_interval"] = [round(v, 4) for v in interval]
        rows.append(row)
    return rows


def render(rows: list, repeats: int, folds: int, costs: dict[str, float]) -> str:
    def points(value: float) -> str:
        return f"{value * 100:+.1f}"

    lines = [
        f"| model | products | weighted F1 ({repeats} x {folds}-fold) | 95% interval | "
        "paired difference (points) | 95% interval | prediction ms per product |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for row in rows:
        f1 = f"{row['weighted_f1']:.4f}"
        f1_ci = "{:.3f} to {:.3f}".format(*row["f1_interval"])
        difference = (
            f"{points(row['difference'])} vs {row['against']}" if "difference" in row else ""
        )
        low_high = row.get("difference_interval")
        interval = f"{points(low_high[0])} to {points(low_high[1])}" if low_high else ""
        cost = f"{costs[row['model']]:.1f}" if row["model"] in costs else ""
        cells = [row["model"], f"{row['products']} ({row['n']})", f1, f1_ci, difference]
        lines.append("| " + " | ".join([*cells, interval, cost]) + " |")
    return "\n".join(lines)
