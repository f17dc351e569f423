"""The promotion gate: when a registered version may take the champion's place.

With held-out evidence (the default), the candidate's held-out score must beat the champion's by
a margin, no product type may lose more than a set amount of F1, and its prediction time,
measured here for both on the same products, must stay within a budget. With online evidence,
the challenger must not be worse than the champion on the products administrators gave the
true type of (the paired difference and its interval, from the prediction store). The limits
are params.yaml's `promotion:` section.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rakuten_classifier import config
from rakuten_classifier.bundle import Bundle
from rakuten_classifier.data import image_paths, read_products
from rakuten_classifier.online_report import Comparison
from rakuten_classifier.preprocess import read_photo


@dataclass(frozen=True)
class Policy:
    metric: str = "fusion.f1_weighted"  # manifest metrics, dotted
    min_gain: float = 0.0  # candidate - champion, at least
    max_class_drop: float = 0.25  # F1 any product type may lose
    max_latency_ratio: float = 1.5  # candidate / champion, ms per product one at a time
    max_ms_per_product: float = 250.0
    online_min_products: int = 30  # paired products with feedback
    online_tolerance: float = 0.0  # the interval's lower bound may go this far below 0

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> Policy:
        return cls(**section)


@dataclass
class Check:
    name: str
    champion: str
    candidate: str
    limit: str
    passed: bool
    detail: str = ""


@dataclass
class GateResult:
    evidence: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail or 'over its limit'}" for c in self.checks if not c.passed]

    def table(self) -> str:
        rows = [["check", "champion", "candidate", "limit", "ok"]] + [
            [c.name, c.champion, c.candidate, c.limit, "yes" if c.passed else "NO"]
            for c in self.checks
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        )


def _metric(manifest: dict[str, Any], dotted: str) -> float | None:
    node: Any = manifest.get("metrics", {})
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def held_out_checks(
    champion: dict[str, Any], candidate: dict[str, Any], policy: Policy
) -> list[Check]:
    """The manifests' held-out scores: the overall metric, then each product type's F1."""
    old, new = _metric(champion, policy.metric), _metric(candidate, policy.metric)
    checks = [
        Check(
            policy.metric,
            f"{old:.4f}" if old is not None else "n/a",
            f"{new:.4f}" if new is not None else "n/a",
            f"gain >= {policy.min_gain:+.4f}",
            old is not None and new is not None and new - old >= policy.min_gain,
            f"{(new or 0) - (old or 0):+.4f} against a required {policy.min_gain:+.4f}",
        )
    ]
    model = policy.metric.split(".")[0]
    before = champion.get("per_class_f1", {}).get(model, {})
    after = candidate.get("per_class_f1", {}).get(model, {})
    drops = {code: before[code] - after.get(code, 0.0) for code in before}
    worst = max(drops, key=lambda code: drops[code]) if drops else None
    checks.append(
        Check(
            f"{model} F1 of the worst product type",
            f"{before[worst]:.4f}" if worst else "n/a",
            f"{after.get(worst, 0.0):.4f}" if worst else "n/a",
            f"drop <= {policy.max_class_drop:.2f}",
            worst is None or drops[worst] <= policy.max_class_drop,
            f"product type {worst} loses {drops[worst]:.4f}" if worst else "no per-class F1",
        )
    )
    n_old = champion.get("metrics", {}).get(model, {}).get("n")
    n_new = candidate.get("metrics", {}).get(model, {}).get("n")
    checks.append(
        Check(
            "held-out products",
            str(n_old),
            str(n_new),
            "(information)",
            True,
            "" if n_old == n_new else "different held-out splits: the scores are not paired",
        )
    )
    return checks


def latency_checks(latency: dict[str, float], policy: Policy) -> list[Check]:
    old, new = latency["champion"], latency["candidate"]
    return [
        Check(
            "ms per product, one at a time",
            f"{old:.2f}",
            f"{new:.2f}",
            f"<= {policy.max_ms_per_product:g} and <= {policy.max_latency_ratio:g}x champion",
            new <= policy.max_ms_per_product and new <= policy.max_latency_ratio * old,
            f"{new:.2f} ms, {new / old:.2f}x the champion's {old:.2f} ms",
        )
    ]


def online_checks(paired: Comparison | None, policy: Policy) -> list[Check]:
    if paired is None or paired.products < policy.online_min_products:
        found = 0 if paired is None else paired.products
        return [
            Check(
                "paired products with feedback",
                "",
                str(found),
                f">= {policy.online_min_products}",
                False,
                f"{found} products with feedback predicted by both; "
                f"{policy.online_min_products} needed",
            )
        ]
    interval = f"[{paired.difference_low:+.4f}, {paired.difference_high:+.4f}]"
    return [
        Check(
            "accuracy on the same products",
            f"{paired.champion_accuracy:.4f}",
            f"{paired.challenger_accuracy:.4f}",
            f"gain >= {policy.min_gain:+.4f}, interval above {-policy.online_tolerance:+.4f}",
            paired.difference >= policy.min_gain
            and paired.difference_low >= -policy.online_tolerance,
            f"difference {paired.difference:+.4f}, 95% interval {interval}, "
            f"{paired.products} products",
        )
    ]


def timing_products(limit: int = 100, sample_dir: Path = config.SAMPLE_DIR) -> pd.DataFrame:
    """Real products with their photos (the embedded sample's unlabelled ones) to time models
    on: the same products for both, in the same process."""
    products = read_products(sample_dir / config.X_TEST_CSV).head(limit)
    photos = image_paths(products, sample_dir / config.IMAGE_TEST_DIR)
    products["image"] = [read_photo(path, missing_ok=True) for path in photos]
    return products


def measure_latency(
    bundles: dict[str, Bundle], products: pd.DataFrame, rounds: int = 2
) -> dict[str, float]:
    """Milliseconds per product one at a time (the API's case), each bundle in turn on the
    same products, the best of `rounds` passes (the machine's other work only adds time)."""
    rows = list(products[["designation", "description", "image"]].itertuples(index=False))
    timing = {}
    for name, bundle in bundles.items():
        bundle.predict_products([rows[0].designation], [rows[0].description], [rows[0].image])
        passes = []
        for _ in range(rounds):
            start = time.perf_counter()
            for row in rows:
                bundle.predict_products([row.designation], [row.description], [row.image])
            passes.append((time.perf_counter() - start) * 1000 / len(rows))
        timing[name] = min(passes)
    return timing
