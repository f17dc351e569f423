"""The `rakuten-classifier` command: batch prediction and the other day-to-day entry points."""

from __future__ import annotations

from pathlib import Path

import typer

from rakuten_classifier import cli_monitoring, cli_production, cli_retraining, config

app = typer.Typer(
    help="Classify Rakuten France products (title, description, photo) into product types.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(cli_production.app)
app.add_typer(cli_monitoring.app)
app.add_typer(cli_retraining.app)


@app.callback()
def main(
    log_level: str = typer.Option(
        None, envvar="RAKUTEN_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR [default: INFO]."
    ),
) -> None:
    config.setup_logging(log_level)


@app.command()
def predict(
    x_csv: Path = typer.Option(
        ...,
        help="Products CSV in the challenge layout (,designation,description,productid,imageid).",
    ),
    image_dir: str = typer.Option(
        ...,
        help="Folder of the photos, image_<imageid>_product_<productid>.jpg, or a folder "
        "inside a zip archive (data/raw/images.zip/image_test); either may be a URL read "
        "through fsspec (s3://bucket/raw/images.zip/image_test; endpoint and keys from AWS_*).",
    ),
    bundle: Path = typer.Option(config.BUNDLE_DIR, help="Model bundle built by the pipeline."),
    out: Path = typer.Option(..., help="Where to write index,prdtypecode,probability."),
    batch_size: int = typer.Option(64, min=1, help="Products per model call."),
    scheduler: str | None = typer.Option(
        None,
        envvar="RAKUTEN_DASK_SCHEDULER",
        help="Dask scheduler address (tcp://host:8786): predict on that cluster, in "
        "partitions; the bundle and photos must be readable by the workers at the same paths.",
    ),
    partition_rows: int = typer.Option(
        2048, min=1, help="With --scheduler: products per partition (whole batches)."
    ),
    image_runtime: str | None = typer.Option(
        None,
        help="Run the photo model with litert or keras (the reference); default: the runtime "
        "the bundle was evaluated with (its predict.image_runtime).",
    ),
) -> None:
    """Predict the product type of every row of a CSV; rows without a usable photo are
    classified from their text."""
    from rakuten_classifier.bundle import BundleError, load_bundle, predict_csv
    from rakuten_classifier.data import DataError
    from rakuten_classifier.litert import RUNTIMES
    from rakuten_classifier.preprocess import is_url, split_archive_path

    if image_runtime not in (None, *RUNTIMES):
        raise typer.BadParameter(
            f"expected one of {', '.join(RUNTIMES)}", param_hint="--image-runtime"
        )

    local = not is_url(image_dir)
    if local and not Path(image_dir).is_dir() and split_archive_path(image_dir) is None:
        config.logger.warning(
            "%s is not a folder: every product is classified from its text", image_dir
        )
    try:
        if scheduler:
            # Dask is imported only here: a second of start-up the one-process command skips.
            from rakuten_classifier.cluster_predict import predict_csv_on_cluster

            predict_csv_on_cluster(
                scheduler, bundle, x_csv, image_dir, out, batch_size, partition_rows
            )
        else:
            predict_csv(
                load_bundle(bundle, image_runtime=image_runtime), x_csv, image_dir, out, batch_size
            )
    except (BundleError, DataError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


@app.command()
def metrics(
    path: Path = typer.Option(
        config.METRICS_DIR / "test.json", help="Metrics of the predict stage."
    ),
) -> None:
    """Print the held-out test metrics of each model as one table, with the prediction times
    the predict stage measured on this machine (metrics/timing.json) when it has run here."""
    import pandas as pd

    from rakuten_classifier.files import read_json

    if not path.exists():
        typer.echo(f"error: {path} not found: run `make run` (or `dvc repro`) first", err=True)
        raise typer.Exit(2)
    table = pd.DataFrame(read_json(path)).T
    timing_file = path.parent / config.TIMING_JSON
    if timing_file.exists():
        table = table.join(pd.DataFrame(read_json(timing_file)).T)
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
    typer.echo(f"Held-out test split ({path}; times of this machine from {timing_file}):")
    typer.echo(table.to_string(na_rep="-", float_format=lambda value: f"{value:.4g}"))


@app.command("hash-password")
def hash_password(
    user: str = typer.Option(
        None, help="Print USER:HASH[:ROLES], a line for RAKUTEN_API_USERS_FILE."
    ),
    roles: str = typer.Option(
        None, help="Roles joined with '+': predict, reviewer, admin [default: predict]."
    ),
    rounds: int = typer.Option(12, min=4, max=16, help="bcrypt cost: 2^rounds iterations."),
) -> None:
    """Make the bcrypt hash of an API user's password (asked twice, never echoed). Only the
    line goes to standard output, so `... --user alice >> api_users.txt` adds a user."""
    from rakuten_classifier.serve.security import hash_password as make_hash
    from rakuten_classifier.serve.settings import ROLES, USERNAME

    if user is not None and not USERNAME.match(user):
        typer.echo("error: a username is 1 to 64 letters, digits or ._@-", err=True)
        raise typer.Exit(2)
    wanted = [role for role in (roles or "").split("+") if role]
    if unknown := sorted(set(wanted) - set(ROLES)):
        typer.echo(f"error: unknown role(s) {', '.join(unknown)}: {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        hashed = make_hash(password, rounds)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    suffix = f":{'+'.join(wanted)}" if wanted else ""
    typer.echo(f"{user}:{hashed}{suffix}" if user else hashed)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [RAKUTEN_API_HOST: 127.0.0.1]."),
    port: int = typer.Option(None, help="Port [RAKUTEN_API_PORT: 8000]."),
    bundle: Path = typer.Option(None, help="Model bundle [RAKUTEN_API_BUNDLE: models/bundle]."),
) -> None:
    """Serve the prediction API with uvicorn. Settings come from the environment or .env
    (RAKUTEN_API_*, see .env.example and docs/api.md); the options override them."""
    import uvicorn

    from rakuten_classifier.bundle import BundleError
    from rakuten_classifier.serve import SettingsError, create_app, load_settings

    try:
        settings = load_settings(host=host, port=port, bundle=bundle)
        application = create_app(settings)
    except (SettingsError, BundleError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    # Logging is the app's (JSON lines, one per request): uvicorn's own access log would
    # repeat each request without its id. h11 reads request heads up to header_read_bytes
    # whole, so that an oversized one gets the app's 431 instead of a cut connection.
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http="h11",
        h11_max_incomplete_event_size=settings.header_read_bytes,
    )


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
