"""The retraining commands of `rakuten-classifier`, which the retraining DAG
(orchestration/dags/rakuten_retraining.py) runs between its `dvc` steps: whether to retrain
(drift, new feedback) and the export of the store's feedback as a DVC-tracked batch."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rakuten_classifier import config
from rakuten_classifier.cli_monitoring import champion_bundle
from rakuten_classifier.cli_production import DATABASE, MODEL, TRACKING_URI, database_url

app = typer.Typer()

FEEDBACK_DIR = typer.Option(config.FEEDBACK_DIR, help="Where the feedback batches are.")


@app.command("retrain-check")
def retrain_check(
    bundle: Path = typer.Option(
        None, help="The champion's bundle [default: the registry's champion]."
    ),
    database: str = DATABASE,
    feedback_dir: Path = FEEDBACK_DIR,
    skip_exit_code: int = typer.Option(
        0, help="The exit status when retraining is not needed (the DAG: 99, skipped)."
    ),
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
    params_file: Path = typer.Option(config.PARAMS_FILE, help="Its retrain: and drift: sections."),
) -> None:
    """Decide whether to retrain: the champion's latest traffic drifted (the check is stored
    in the store's drift reports), or enough feedback arrived since the last exported batch.
    Prints the decision as one JSON line."""
    from rakuten_classifier.drift import DriftSettings
    from rakuten_classifier.drift_report import check_store
    from rakuten_classifier.feedback_export import new_feedback_count

    policy = config.load_params("retrain", params_file)
    section = config.load_params("drift", params_file)
    url = database_url(database)
    folder = champion_bundle(bundle, tracking_uri, model)
    result, _, _ = check_store(folder, url, DriftSettings.from_params(section), section["window"])
    new_feedback = new_feedback_count(url, feedback_dir)
    reasons = []
    if policy["on_drift"] and result.drifted:
        fired = [check.name for check in result.checks if check.drifted]
        reasons.append(f"drift on {', '.join(fired)}")
    if new_feedback >= policy["min_new_feedback"]:
        reasons.append(f"{new_feedback} new feedback rows (>= {policy['min_new_feedback']})")
    decision = {
        "retrain": bool(reasons),
        "reasons": reasons,
        "model_version": result.model_version,
        "window": result.predictions,
        "new_feedback": new_feedback,
    }
    typer.echo(json.dumps(decision))
    if not reasons:
        raise typer.Exit(skip_exit_code)


@app.command("feedback-export")
def feedback_export(
    database: str = DATABASE,
    feedback_dir: Path = FEEDBACK_DIR,
    image_dir: Path = typer.Option(
        None, help="The catalogue's photos (challenge names) [retrain.image_dir]."
    ),
    params_file: Path = typer.Option(config.PARAMS_FILE, help="Its retrain: section."),
) -> None:
    """Write the products that got feedback since the last batch as a new batch under
    data/feedback (then `dvc add` it); prints the batch folder last, or nothing new."""
    from rakuten_classifier.feedback_export import export_feedback

    photos = image_dir or Path(config.load_params("retrain", params_file)["image_dir"])
    result = export_feedback(database_url(database), feedback_dir, photos)
    for line in result.lines():
        typer.echo(line, err=True)
    if result.batch is not None:
        typer.echo(str(result.batch))
