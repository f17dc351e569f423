"""The online report: how the served models do on the products administrators gave the true
product type of, read from the prediction store.

Per variant and model version: accuracy and weighted F1 on the products with feedback, each with
a bootstrap interval, the latency and the class distribution of the predictions. Then the
champion and the challenger compared: on the same products when shadow mode made both answer
them (the paired difference with its interval, and how often they agree), else each on the
products A/B testing gave it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_dir
from rakuten_classifier.metrics import bootstrap_interval, pyplot, save_figure, weighted_f1_score
from rakuten_classifier.store.database import connect
from rakuten_classifier.store.queries import read_feedback, read_predictions, with_truth

CHAMPION, CHALLENGER = "champion", "challenger"


def _accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(truth == predicted))


@dataclass
class VariantScore:
    variant: str
    model_version: str
    predictions: int
    served: int
    with_feedback: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    f1_weighted: float
    f1_low: float
    f1_high: float
    latency_p50_ms: float
    latency_p95_ms: float


def load_outcomes(database_url: str, since: datetime | None = None) -> pd.DataFrame:
    engine = connect(database_url)
    try:
        return with_truth(read_predictions(engine, since), read_feedback(engine, since))
    finally:
        engine.dispose()


def variant_scores(outcomes: pd.DataFrame, confidence: float = 0.95) -> list[VariantScore]:
    scores = []
    for (variant, version), group in outcomes.groupby(["variant", "model_version"], sort=True):
        labelled = group.dropna(subset=["truth"])
        truth = labelled["truth"].to_numpy(dtype=np.int64)
        predicted = labelled["prdtypecode"].to_numpy(dtype=np.int64)
        nan = float("nan")
        accuracy = _accuracy(truth, predicted) if len(truth) else nan
        f1 = weighted_f1_score(truth, predicted) if len(truth) else nan
        acc_ci = bootstrap_interval(_accuracy, truth, predicted, confidence=confidence)
        f1_ci = bootstrap_interval(weighted_f1_score, truth, predicted, confidence=confidence)
        scores.append(
            VariantScore(
                variant=str(variant),
                model_version=str(version),
                predictions=len(group),
                served=int(group["served"].sum()),
                with_feedback=len(labelled),
                accuracy=accuracy,
                accuracy_low=acc_ci[0],
                accuracy_high=acc_ci[1],
                f1_weighted=f1,
                f1_low=f1_ci[0],
                f1_high=f1_ci[1],
                latency_p50_ms=float(group["latency_ms"].median()),
                latency_p95_ms=float(group["latency_ms"].quantile(0.95)),
            )
        )
    return scores


@dataclass
class Comparison:
    """Champion against challenger on products with feedback. Paired (shadow mode: both
    answered the same products) when such products exist: the difference of the latest
    answers on each; otherwise (A/B testing: each product gets one variant) each variant on its
    own products, and the interval resamples the two groups apart."""

    paired: bool
    products: int  # with feedback: paired ones, or both groups together
    champion_version: str
    challenger_version: str
    champion_accuracy: float
    challenger_accuracy: float
    difference: float  # challenger - champion
    difference_low: float
    difference_high: float
    agreement: float  # paired: share of products both predicted the same class of
    predicted_by_both: int


def _latest_per_product(outcomes: pd.DataFrame, variant: str) -> pd.DataFrame:
    rows = outcomes[(outcomes["variant"] == variant) & outcomes["product_key"].notna()]
    return (
        rows.sort_values("id").drop_duplicates("product_key", keep="last").set_index("product_key")
    )


def _right(frame: pd.DataFrame) -> np.ndarray:
    labelled = frame[frame["truth"].notna()]
    return (
        labelled["prdtypecode"].to_numpy() == labelled["truth"].to_numpy(dtype=np.int64)
    ).astype(float)


def _two_sample_interval(
    first: np.ndarray, second: np.ndarray, resamples: int = 2000, confidence: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of mean(second) - mean(first), each group resampled on its own."""
    if not len(first) or not len(second):
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(0)
    gains = rng.choice(second, (resamples, len(second))).mean(axis=1) - rng.choice(
        first, (resamples, len(first))
    ).mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)


def compare(outcomes: pd.DataFrame, confidence: float = 0.95) -> Comparison | None:
    """None until both variants have answered products with feedback."""
    champion = _latest_per_product(outcomes, CHAMPION)
    challenger = _latest_per_product(outcomes, CHALLENGER)
    if not len(champion) or not len(challenger):
        return None
    both = champion.index.intersection(challenger.index)
    agreement = (
        float(
            np.mean(
                champion.loc[both, "prdtypecode"].to_numpy()
                == challenger.loc[both, "prdtypecode"].to_numpy()
            )
        )
        if len(both)
        else float("nan")
    )
    versions = {
        "champion_version": str(champion["model_version"].iloc[-1]),
        "challenger_version": str(challenger["model_version"].iloc[-1]),
    }
    labelled_both = [key for key in both if pd.notna(champion.at[key, "truth"])]
    if labelled_both:
        right_champion = _right(champion.loc[labelled_both])
        right_challenger = _right(challenger.loc[labelled_both])

        def gain(first: np.ndarray, second: np.ndarray) -> float:
            return float(np.mean(second) - np.mean(first))

        low, high = bootstrap_interval(
            gain, right_champion, right_challenger, confidence=confidence
        )
        paired, products = True, len(labelled_both)
    else:
        right_champion, right_challenger = _right(champion), _right(challenger)
        if not len(right_champion) or not len(right_challenger):
            return None
        low, high = _two_sample_interval(right_champion, right_challenger, confidence=confidence)
        paired, products = False, len(right_champion) + len(right_challenger)
    return Comparison(
        paired=paired,
        products=products,
        **versions,
        champion_accuracy=float(right_champion.mean()),
        challenger_accuracy=float(right_challenger.mean()),
        difference=float(right_challenger.mean() - right_champion.mean()),
        difference_low=low,
        difference_high=high,
        agreement=agreement,
        predicted_by_both=len(both),
    )


# --- the report ---------------------------------------------------------------------------------


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN != NaN


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def render(scores: list[VariantScore], paired: Comparison | None, outcomes: pd.DataFrame) -> str:
    lines = [
        "# Online report: the served models on products with feedback",
        "",
        f"{len(outcomes)} predictions in the store, {int(outcomes['truth'].notna().sum())} of "
        "them on products whose true product type an administrator gave. Intervals: 95% "
        "bootstrap over those products.",
        "",
        "## Per variant and model version",
        "",
    ]
    rows = [
        [
            s.variant,
            f"`{s.model_version}`",
            str(s.predictions),
            str(s.served),
            str(s.with_feedback),
            f"{_number(s.accuracy)} [{_number(s.accuracy_low)}, {_number(s.accuracy_high)}]",
            f"{_number(s.f1_weighted)} [{_number(s.f1_low)}, {_number(s.f1_high)}]",
            f"{_number(s.latency_p50_ms, 1)} / {_number(s.latency_p95_ms, 1)}",
        ]
        for s in scores
    ]
    header = [
        "variant",
        "model",
        "predictions",
        "served",
        "with feedback",
        "accuracy",
        "weighted F1",
        "latency p50 / p95 ms",
    ]
    lines += _table(header, rows)
    lines += ["## Champion and challenger", ""]
    if paired is None:
        lines += ["Not both variants have answered products with feedback yet.", ""]
    else:
        how = (
            f"on the same {paired.products} products (shadow mode; they agree on "
            f"{paired.agreement:.1%} of the {paired.predicted_by_both} products both answered)"
            if paired.paired
            else f"each on its own products ({paired.products} with feedback in all: A/B "
            "testing sends a product to one variant; the interval resamples the two apart)"
        )
        lines += [
            f"Compared {how}: champion `{paired.champion_version}` "
            f"{_number(paired.champion_accuracy)}, challenger `{paired.challenger_version}` "
            f"{_number(paired.challenger_accuracy)}; difference (challenger - champion) "
            f"{_number(paired.difference)} [{_number(paired.difference_low)}, "
            f"{_number(paired.difference_high)}].",
            "",
        ]
    lines += [
        "## Plots",
        "",
        "![accuracy per variant](accuracy.png)",
        "",
        "![predicted product types per variant](classes.png)",
        "",
    ]
    return "\n".join(lines)


def _plots(scores: list[VariantScore], outcomes: pd.DataFrame, out_dir: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 0.6 * max(len(scores), 2) + 1.5))
    for row, score in enumerate(scores):
        if score.accuracy == score.accuracy:
            error = [[score.accuracy - score.accuracy_low], [score.accuracy_high - score.accuracy]]
            axes.errorbar(score.accuracy, row, xerr=error, fmt="o", capsize=4)
    axes.set_yticks(range(len(scores)), [f"{s.variant} {s.model_version}" for s in scores])
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy on products with feedback (95% interval)")
    save_figure(figure, out_dir / "accuracy.png")
    shares = (
        outcomes.groupby("variant")["prdtypecode"]
        .value_counts(normalize=True)
        .unstack(fill_value=0)
    )
    figure, axes = plt.subplots(figsize=(10, 4))
    if len(shares):
        shares.T.plot.bar(ax=axes)
    axes.set_ylabel("share of predictions")
    axes.set_xlabel("predicted product type")
    save_figure(figure, out_dir / "classes.png")


def write_online_report(
    database_url: str, out_dir: Path, since: datetime | None = None
) -> tuple[Path, list[VariantScore], Comparison | None]:
    """Markdown (report.md), the numbers (report.json) and PNGs in `out_dir`."""
    outcomes = load_outcomes(database_url, since)
    scores = variant_scores(outcomes)
    paired = compare(outcomes)
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "report.md").write_text(render(scores, paired, outcomes), encoding="utf-8")
        numbers: dict[str, Any] = {
            "variants": [asdict(score) for score in scores],
            "paired": asdict(paired) if paired else None,
        }
        pd.Series(numbers).to_json(tmp / "report.json", indent=2)
        _plots(scores, outcomes, tmp)
    logger.info("online report written to %s", out_dir)
    return Path(out_dir) / "report.md", scores, paired
