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
def metrics(
    path: Path = typer.Option(
        config.METRICS_DIR / "test.json", help="Metrics of the predict stage."
    ),
) -> None:
    """Print the held-out test metrics of each model as one table."""
    import pandas as pd

    from rakuten_classifier.files import read_json

    if not path.exists():
        typer.echo(f"error: {path} not found: run `make run` (or `dvc repro`) first", err=True)
        raise typer.Exit(2)
    table = pd.DataFrame(read_json(path)).T
    columns = [
        "n",
        "accuracy",
        "f1_weighted",
        "f1_macro",
        "ms_per_product_batch",
        "ms_per_product_single",
    ]
    models = [
        name for name in ("text", "image", "fusion", "fusion_with_photo") if name in table.index
    ]
    table = table.reindex(index=models, columns=columns)
    table["n"] = table["n"].astype("Int64")
    typer.echo(f"Held-out test split ({path}):")
    typer.echo(table.to_string(na_rep="-", float_format=lambda value: f"{value:.4g}"))
