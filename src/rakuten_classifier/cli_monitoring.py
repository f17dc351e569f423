"""The monitoring commands of `rakuten-classifier`: drift detection on the prediction store
and the Prometheus exporter of drift and online accuracy (docs/monitoring.md). Like the
production commands, each imports what it needs when it runs."""

from __future__ import annotations

from pathlib import Path

import typer

from rakuten_classifier import config
from rakuten_classifier.cli_production import DATABASE, MODEL, TRACKING_URI, database_url, fail

app = typer.Typer()


def champion_bundle(bundle: Path | None, tracking_uri: str | None, model: str) -> Path:
    """A bundle folder: `bundle`, else the registry's champion (downloaded once)."""
    from rakuten_classifier import registry

    if bundle is not None:
        return bundle
    found = registry.resolve(tracking_uri, model, registry.CHAMPION)
    if found is None:
        raise fail(f"{model} has no champion in the registry: give --bundle")
    return registry.download_bundle(tracking_uri, found, registry.default_cache())


@app.command()
def drift(
    bundle: Path = typer.Option(
        None, help="The bundle whose traffic is checked [default: the registry's champion]."
    ),
    window: int = typer.Option(None, help="Latest served predictions [drift.window]."),
    database: str = DATABASE,
    out: Path = typer.Option(config.REPORTS_DIR / "drift", help="Folder of the report."),
    fail_on_drift: bool = typer.Option(False, help="Exit 3 when a check fires."),
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
    params_file: Path = typer.Option(config.PARAMS_FILE, help="Its drift: section."),
) -> None:
    """Compare the latest traffic a bundle served (from the prediction store) with the
    bundle's reference profile: each check's statistic and p-value, stored, and a report."""
    from rakuten_classifier.drift import DriftSettings
    from rakuten_classifier.drift_report import check_store, write_drift_report

    section = config.load_params("drift", params_file)
    settings = DriftSettings.from_params(section)
    folder = champion_bundle(bundle, tracking_uri, model)
    result, profile, traffic = check_store(
        folder, database_url(database), settings, window or section["window"]
    )
    path = write_drift_report(result, profile, traffic, out)
    typer.echo(f"model {result.model_version}: {result.predictions} served predictions\n")
    typer.echo(result.table())
    typer.echo(f"\n{'drift detected' if result.drifted else 'no drift'}; report: {path}")
    if fail_on_drift and result.drifted:
        raise typer.Exit(3)


@app.command()
def exporter(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(9105, help="Port of /metrics."),
    interval: float = typer.Option(60, help="Seconds between two refreshes."),
    bundle: Path = typer.Option(
        None, help="The champion's bundle [default: the registry's champion, looked up each time]."
    ),
    database: str = DATABASE,
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
    params_file: Path = typer.Option(config.PARAMS_FILE, help="Its drift: section."),
) -> None:
    """Serve Prometheus gauges of drift and online accuracy, computed from the store."""
    from rakuten_classifier.drift import DriftSettings
    from rakuten_classifier.exporter import Exporter

    section = config.load_params("drift", params_file)
    Exporter(
        database_url(database),
        lambda: champion_bundle(bundle, tracking_uri, model),
        DriftSettings.from_params(section),
        section["window"],
    ).serve(host, port, interval)
