"""The production commands of `rakuten-classifier`: the model registry (register, promote, the
aliases' history), the online report from the prediction store, traffic replay, and the store's
schema. Each command imports what it needs when it runs: `rakuten-classifier --help` and the
other commands start without MLflow or the database drivers."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from rakuten_classifier import config

app = typer.Typer()
registry_app = typer.Typer(help="The MLflow model registry: versions and the aliases' history.")
store_app = typer.Typer(help="The prediction and feedback store.")
app.add_typer(registry_app, name="registry")
app.add_typer(store_app, name="store")

TRACKING_URI = typer.Option(
    None, "--tracking-uri", help="MLflow server [MLFLOW_TRACKING_URI, else http://127.0.0.1:5000]."
)
MODEL = typer.Option(
    "rakuten", "--model", envvar="RAKUTEN_REGISTERED_MODEL", help="The registered model's name."
)


def database_url(given: str | None) -> str:
    from rakuten_classifier.store.database import configured_url

    return configured_url(given)


DATABASE = typer.Option(
    None,
    "--database-url",
    help="The store [RAKUTEN_API_DATABASE_URL, else sqlite:///data/store/predictions.db].",
)


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command()
def register(
    bundle: Path = typer.Option(config.BUNDLE_DIR, help="The model bundle to register."),
    alias: str = typer.Option(
        None, help="challenger; or champion, for the first version (then use promote)."
    ),
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
) -> None:
    """Log the bundle in MLflow as a new version of the registered model, tagged with its git
    commit, its dvc.lock hash, its params and held-out metrics."""
    from rakuten_classifier import registry
    from rakuten_classifier.bundle import BundleError

    try:
        found = registry.register_bundle(bundle, uri=tracking_uri, name=model, alias=alias)
    except (registry.RegistryError, BundleError) as error:
        raise fail(str(error)) from error
    aliases = ", ".join(found.aliases) or "no alias"
    typer.echo(f"{model} version {found.version} ({aliases}): bundle {found.bundle_version}")


@app.command()
def promote(
    version: str = typer.Option(None, help="The candidate [default: the challenger]."),
    evidence: str = typer.Option("heldout", help="heldout (bundle metrics) or online (store)."),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses."),
    reason: str = typer.Option("", help="Why (required with --force; recorded)."),
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
    database: str = DATABASE,
    params_file: Path = typer.Option(config.PARAMS_FILE, help="Its promotion: section."),
    timing_products: int = typer.Option(
        100, min=1, help="Sample products (data.sample_dir) both models are timed on, here."
    ),
    refused_exit_code: int = typer.Option(
        1, help="The exit status when the gate refuses (the retraining DAG: 99, skipped)."
    ),
) -> None:
    """Move the champion alias to the candidate through the promotion gate: prints the
    comparison and refuses (exit 1) with the reasons, unless --force with a --reason."""
    from rakuten_classifier import promotion, registry
    from rakuten_classifier.bundle import load_bundle

    if evidence not in ("heldout", "online"):
        raise fail("--evidence is heldout or online")
    if force and not reason.strip():
        raise fail("--force needs a --reason, recorded with the promotion")
    policy = promotion.Policy.from_params(config.load_params("promotion", params_file))
    champion = registry.resolve(tracking_uri, model, registry.CHAMPION)
    candidate = (
        registry.describe(tracking_uri, model, version)
        if version
        else registry.resolve(tracking_uri, model, registry.CHALLENGER)
    )
    if candidate is None:
        raise fail(f"{model} has no challenger: give --version or register one")
    if champion is not None and champion.version == candidate.version:
        raise fail(f"version {candidate.version} is the champion already")
    if champion is None:
        registry.move_alias(
            tracking_uri, model, registry.CHAMPION, candidate.version, reason="first champion"
        )
        typer.echo(f"{model} version {candidate.version} is the first champion")
        return
    cache = registry.default_cache()
    paths = {
        "champion": registry.download_bundle(tracking_uri, champion, cache),
        "candidate": registry.download_bundle(tracking_uri, candidate, cache),
    }
    bundles = {name: load_bundle(path) for name, path in paths.items()}
    # The project's own sample products (params.yaml data.sample_dir), with their photos.
    sample = Path(config.load_params("data", params_file)["sample_dir"])
    products = promotion.timing_products(timing_products, sample)
    latency = promotion.measure_latency(bundles, products)
    if evidence == "heldout":
        checks = promotion.held_out_checks(
            bundles["champion"].manifest, bundles["candidate"].manifest, policy
        )
    else:
        from rakuten_classifier.online_report import compare, load_outcomes

        checks = promotion.online_checks(compare(load_outcomes(database_url(database))), policy)
    gate = promotion.GateResult(evidence, checks + promotion.latency_checks(latency, policy))
    typer.echo(
        f"{model}: champion version {champion.version} against candidate version "
        f"{candidate.version} ({evidence} evidence)\n\n{gate.table()}\n"
    )
    if not gate.passed and not force:
        typer.echo("refused: " + "; ".join(gate.reasons), err=True)
        raise typer.Exit(refused_exit_code)
    summary = "; ".join(f"{c.name}: {c.candidate} vs {c.champion}" for c in gate.checks)
    registry.move_alias(
        tracking_uri,
        model,
        registry.CHAMPION,
        candidate.version,
        reason=reason or "passed the promotion gate",
        evidence=evidence,
        forced=force and not gate.passed,
        gate=summary,
    )
    challenger = registry.resolve(tracking_uri, model, registry.CHALLENGER)
    if challenger is not None and challenger.version == candidate.version:
        registry.clear_alias(tracking_uri, model, registry.CHALLENGER)
    verdict = "forced past the gate" if force and not gate.passed else "passed the gate"
    typer.echo(f"{model} version {candidate.version} is the champion ({verdict})")


@registry_app.command("list")
def list_versions(tracking_uri: str = TRACKING_URI, model: str = MODEL) -> None:
    """Every version of the registered model, with its aliases and lineage."""
    from rakuten_classifier import registry

    for found in registry.versions(tracking_uri, model):
        aliases = ",".join(found.aliases) or "-"
        commit = found.tags.get("git_commit", "")[:10]
        typer.echo(f"{found.version:>4}  {aliases:<20} bundle {found.bundle_version}  git {commit}")


@registry_app.command("history")
def registry_history(tracking_uri: str = TRACKING_URI, model: str = MODEL) -> None:
    """Every alias move: when, which alias, from and to which version, who, and why."""
    from rakuten_classifier import registry

    table = registry.history(tracking_uri, model)
    typer.echo(table.to_string(index=False) if len(table) else "no alias move recorded")


@registry_app.command("pull")
def registry_pull(
    cache: Path = typer.Option(..., help="The API's model cache (RAKUTEN_API_MODEL_CACHE)."),
    alias: list[str] = typer.Option(["champion"], help="Aliases to download (repeatable)."),
    tracking_uri: str = TRACKING_URI,
    model: str = MODEL,
) -> None:
    """Download the bundles the aliases point to into a model cache, where the API finds them
    at start (a Kubernetes init container). An alias that points nowhere is skipped; the
    champion must exist."""
    from rakuten_classifier import registry

    for name in alias:
        found = registry.resolve(tracking_uri, model, name)
        if found is None:
            if name == registry.CHAMPION:
                raise fail(f"{model} has no {name} in the registry")
            typer.echo(f"{name}: none", err=True)
            continue
        path = registry.download_bundle(tracking_uri, found, cache)
        typer.echo(f"{name}: version {found.version} in {path}")


@app.command("online-report")
def online_report(
    database: str = DATABASE,
    out: Path = typer.Option(config.REPORTS_DIR / "online", help="Folder of the report."),
    days: float = typer.Option(None, help="Only the last DAYS days [default: everything]."),
) -> None:
    """Accuracy and weighted F1 of each served model on the products with feedback, with
    intervals, and the champion and challenger compared on the same products."""
    from rakuten_classifier.online_report import write_online_report

    since = datetime.now(UTC) - timedelta(days=days) if days else None
    path, _, _ = write_online_report(database_url(database), out, since)
    typer.echo((path.parent / "report.md").read_text(encoding="utf-8").split("## Plots")[0])
    typer.echo(f"report: {path}")


@app.command()
def replay(
    url: str = typer.Option("http://127.0.0.1:8000", help="The API."),
    user: str = typer.Option(..., help="An API user with the roles predict (and reviewer)."),
    x_csv: Path = typer.Option(
        config.SAMPLE_DIR / config.X_TRAIN_CSV, help="Products in the challenge layout."
    ),
    image_dir: Path = typer.Option(
        config.SAMPLE_DIR / config.IMAGE_TRAIN_DIR, help="Their photos."
    ),
    y_csv: Path = typer.Option(
        None, help="Their true product types: feedback is given for --feedback-share of them."
    ),
    split: str = typer.Option(
        None,
        help="Instead of a CSV: a split of data/processed (train, val, test), its true types "
        "included. `test` holds products the evaluated models never trained on.",
    ),
    feedback_share: float = typer.Option(0.5, min=0, max=1),
    limit: int = typer.Option(None, min=1, help="The first LIMIT products only."),
    clients: int = typer.Option(4, min=1, help="Concurrent connections."),
) -> None:
    """Send real products to a running API as traffic, and the true product type of a share
    of them as feedback (the password: RAKUTEN_REPLAY_PASSWORD, else asked)."""
    from rakuten_classifier import traffic

    password = os.environ.get("RAKUTEN_REPLAY_PASSWORD") or typer.prompt(
        "Password", hide_input=True, err=True
    )
    if split:
        products = traffic.load_split_products(split, config.PROCESSED_DIR, limit)
    else:
        products = traffic.load_products(x_csv, image_dir, y_csv, limit)
    share = feedback_share if "prdtypecode" in products else 0.0
    headers = traffic.login(url, user, password)
    summary = traffic.replay(url, headers, products, share, clients)
    for line in summary.lines():
        typer.echo(line)
    if summary.errors:
        raise typer.Exit(1)


@store_app.command("migrate")
def migrate_store(database: str = DATABASE) -> None:
    """Create or upgrade the store's tables (the API does it at start too)."""
    from rakuten_classifier.store.database import connect, migrate, redacted

    url = database_url(database)
    engine = connect(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    typer.echo(f"store schema up to date: {redacted(url)}")
