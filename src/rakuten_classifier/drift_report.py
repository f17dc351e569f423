"""Running drift detection on the store (`rakuten-classifier drift`, the exporter, the
retraining DAG): the latest window of what a bundle served against its profile, kept in the
store's drift_reports table and written up as Markdown with plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import insert

from rakuten_classifier.bundle import read_manifest
from rakuten_classifier.drift import DriftResult, DriftSettings, detect
from rakuten_classifier.drift_profile import Profile
from rakuten_classifier.files import atomic_dir
from rakuten_classifier.metrics import pyplot, save_figure
from rakuten_classifier.store.database import connect, migrate
from rakuten_classifier.store.queries import latest_served
from rakuten_classifier.store.schema import DriftReport


def check_store(
    bundle_dir: Path, database_url: str, settings: DriftSettings, window: int, keep: bool = True
) -> tuple[DriftResult, Profile, pd.DataFrame]:
    """The latest `window` predictions the bundle at `bundle_dir` served, checked against its
    profile; the result is added to the store's drift reports when `keep` (the schema is
    brought up to date first; without `keep` the store is only read)."""
    version = read_manifest(bundle_dir)["model_version"]
    profile = Profile.load(Path(bundle_dir) / "profile")
    engine = connect(database_url)
    try:
        if keep:
            migrate(engine)
        traffic = latest_served(engine, version, window)
        result = detect(profile, traffic, version, settings)
        if keep:
            with engine.begin() as connection:
                connection.execute(insert(DriftReport), [result.row()])
    finally:
        engine.dispose()
    return result, profile, traffic


def write_drift_report(
    result: DriftResult, profile: Profile, traffic: pd.DataFrame, out_dir: Path
) -> Path:
    """report.md with the checks' table, and the plots a person looks at first."""
    verdict = "**drift detected**" if result.drifted else "no drift"
    fired = [check.name for check in result.checks if check.drifted]
    lines = [
        f"# Drift: model `{result.model_version}`, {result.predictions} served predictions",
        "",
        f"Window: {result.window_start} to {result.window_end}. Verdict: {verdict}"
        + (f" ({', '.join(fired)})." if fired else "."),
        "",
        "| check | test | statistic | p-value | rows | drift |",
        "|---|---|---|---|---|---|",
        *(
            f"| {c.name} | {c.test} | {c.statistic:.4f} | {c.p_value:.4f} | {c.rows} | "
            f"{'YES' if c.drifted else 'no'}{f' ({c.detail})' if c.detail else ''} |"
            for c in result.checks
        ),
        "",
        "![p-values](p_values.png)",
        "",
        "![distributions](distributions.png)",
        "",
    ]
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "report.md").write_text("\n".join(lines), encoding="utf-8")
        _plots(result, profile, traffic, tmp)
    return Path(out_dir) / "report.md"


def _plots(result: DriftResult, profile: Profile, traffic: pd.DataFrame, out_dir: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    names = [check.name for check in result.checks]
    values = [max(check.p_value, 1e-4) for check in result.checks]
    colours = ["tab:red" if check.drifted else "tab:blue" for check in result.checks]
    axes.barh(names, values, color=colours)
    axes.set_xscale("log")
    axes.set_xlabel("p-value (red: the check fired)")
    save_figure(figure, out_dir / "p_values.png")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    bins = np.linspace(0, 1, 21)
    left.hist(profile.arrays["confidence"], bins, density=True, alpha=0.5, label="reference")
    if len(traffic):
        left.hist(traffic["probability"], bins, density=True, alpha=0.5, label="window")
    left.set_xlabel("confidence (top probability)")
    left.legend()
    positions = np.arange(len(profile.codes))
    window_mix = (
        traffic["prdtypecode"].value_counts(normalize=True).reindex(profile.codes, fill_value=0)
        if len(traffic)
        else pd.Series(0.0, index=profile.codes)
    )
    right.bar(positions - 0.2, profile.predicted_prior, 0.4, label="reference")
    right.bar(positions + 0.2, window_mix.to_numpy(), 0.4, label="window")
    right.set_xticks(positions, [str(code) for code in profile.codes], rotation=90, fontsize=7)
    right.set_ylabel("share of predictions")
    right.legend()
    save_figure(figure, out_dir / "distributions.png")
