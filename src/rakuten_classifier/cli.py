"""The `rakuten-classifier` command: batch prediction and the other day-to-day entry points."""

from __future__ import annotations

from pathlib import Path

import typer

from rakuten_classifier import config

app = typer.Typer(
    help="Classify Rakuten France products (title, description, photo) into product types.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    config.setup_logging(log_level)


@app.command()
def predict(
    x_csv: Path = typer.Option(
        ...,
        help="Products CSV in the challenge layout (,designation,description,productid,imageid).",
    ),
    image_dir: Path = typer.Option(
        ..., help="Folder of the photos, image_<imageid>_product_<productid>.jpg."
    ),
    bundle: Path = typer.Option(config.BUNDLE_DIR, help="Model bundle built by the pipeline."),
    out: Path = typer.Option(..., help="Where to write index,prdtypecode,probability."),
    batch_size: int = typer.Option(64, min=1, help="Products per model call."),
) -> None:
    """Predict the product type of every row of a CSV; rows without a usable photo are
    classified from their text."""
    from rakuten_classifier.bundle import BundleError, load_bundle, predict_csv
    from rakuten_classifier.data import DataError

    if not image_dir.is_dir():
        config.logger.warning(
            "%s is not a folder: every product is classified from its text", image_dir
        )
    try:
        predict_csv(load_bundle(bundle), x_csv, image_dir, out, batch_size)
    except (BundleError, DataError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


@app.command()
def report(
    baseline: str = typer.Option(
        ..., help="Git revision (branch, tag, sha, HEAD~1) or DVC experiment name to compare with."
    ),
    target: str = typer.Option(
        "workspace", help="What is compared: 'workspace' (the files on disk) or a revision."
    ),
    out: Path | None = typer.Option(
        None, help="Folder of the report (default: reports/<target>-vs-<baseline>)."
    ),
    html: bool = typer.Option(
        True, "--html/--no-html", help="Also write report.html, one file with the images inside."
    ),
) -> None:
    """Write a Markdown report comparing two runs: metrics, params, per-class F1 and plots.
    Run it in the project folder; the baseline's files are read from git, offline."""
    from rakuten_classifier.report import ReportError, write_report

    try:
        path = write_report(Path.cwd(), baseline, target, out, html)
    except ReportError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(path)
