"""The whole production loop, on 127.0.0.1 and a slice of the sample (`make demo-loop`,
docs/monitoring.md):

champion trained and registered -> the API serves it from the registry (shadow mode) ->
real products it never saw as traffic, with their true types as feedback -> the same products
without their photos -> drift detected, the alert reaches a webhook -> the retraining DAG
(`airflow dags test`) adds the feedback to the training data, retrains and registers a
challenger -> the API picks it up without a restart and runs it in the champion's shadow ->
the traffic again, with feedback -> the online report compares them -> the promotion DAG's gate
promotes or refuses -> the API serves the result.

    .venv/bin/python orchestration/demo_loop.py [--work data/demo-loop] [--classes 7]

Everything it starts (MLflow, the API, the exporter, Prometheus and Alertmanager when
installed) stops at the end; the summary is `summary.json` in the work folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import requests
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitoring"))
from demo_project import IMAGES, REPO, VENV_BIN, prepare, project_env, sh
from local_stack import alertmanager, exporter, free_port, process, prometheus, receiver

from rakuten_classifier import traffic
from rakuten_classifier.serve.security import hash_password

CLI = str(VENV_BIN / "rakuten-classifier")
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
MODEL = "rakuten"


def say(message: str) -> None:
    typer.secho(f"\n== {message}", fg="cyan", bold=True)


def status(url: str) -> dict:
    return requests.get(f"{url}/status", timeout=10).json()


def variants(url: str) -> dict[str, str | None]:
    return {model["variant"]: model["registry_version"] for model in status(url)["models"]}


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def airflow(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    home = {"AIRFLOW_HOME": str(work / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "orchestration" / "dags")}  # fmt: skip
    return sh([str(AIRFLOW), *args], work, {**env, **home})


def start_api(stack: ExitStack, work: Path, env: dict[str, str], password: str) -> str:
    folder = work / "api"
    folder.mkdir()
    users = f"demo:{hash_password(password, rounds=4)}:predict+reviewer+admin\n"
    (folder / "users.txt").write_text(users)
    port = free_port()
    settings = {"SECRET": secrets.token_urlsafe(48), "USERS_FILE": "users.txt", "PORT": port,
                "MODEL_SOURCE": "registry", "MODE": "shadow", "RELOAD_SECONDS": 2,
                "DATABASE_URL": env["RAKUTEN_API_DATABASE_URL"], "STORE_TEXTS": "true",
                "STORE_SPOOL_DIR": folder / "spool",
                "MODEL_CACHE": work / "model-cache"}  # fmt: skip
    (folder / ".env").write_text("".join(f"RAKUTEN_API_{k}={v}\n" for k, v in settings.items()))
    url = f"http://127.0.0.1:{port}"
    api_env = {k: v for k, v in env.items() if k != "RAKUTEN_API_DATABASE_URL"}
    stack.enter_context(process([CLI, "serve"], folder / "server.log", f"{url}/status",
                                api_env, cwd=folder))  # fmt: skip
    return url


def replay(url: str, password: str, products: pd.DataFrame, feedback: float) -> None:
    headers = traffic.login(url, "demo", password)
    summary = traffic.replay(url, headers, products, feedback, clients=2)
    typer.echo("\n".join(summary.lines()))
    if summary.errors:
        raise RuntimeError(f"replay errors: {dict(summary.errors)}")


def loop(project: Path, work: Path, products: pd.DataFrame) -> dict:
    """The loop on a reproduced project whose remote is configured; returns the summary."""
    summary: dict = {}
    mlflow_port = free_port()
    env = project_env(
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
        RAKUTEN_API_DATABASE_URL=f"sqlite:///{work / 'store.db'}",
        RAKUTEN_PROJECT_DIR=str(project), RAKUTEN_VENV=str(VENV_BIN.parent),
        RAKUTEN_REGISTRY_USER="demo", MLFLOW_PORT=str(mlflow_port),
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{work / 'mlflow.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(work / "mlflow-artifacts"),
    )  # fmt: skip
    password = secrets.token_urlsafe(16)
    with ExitStack() as stack:
        say("MLflow, and the pipeline's bundle as the first champion")
        stack.enter_context(process([str(REPO / "deploy/mlflow/serve.sh")], work / "mlflow.log",
                                    f"{env['MLFLOW_TRACKING_URI']}/health", env))  # fmt: skip
        typer.echo(sh([CLI, "register", "--alias", "champion"], project, env).stdout.strip())
        say("The API (registry models, shadow mode), the exporter, Prometheus, Alertmanager")
        url = start_api(stack, work, env, password)
        address = stack.enter_context(exporter(work, Path(CLI), project / "params.yaml", env))
        alerts = stack.enter_context(receiver(lambda a: typer.secho(
            f"   alert {a['status']}: {a['labels']['alertname']} {a['labels'].get('check', '')}",
            fg="yellow")))  # fmt: skip
        if shutil.which("prometheus") and shutil.which("prometheus-alertmanager"):
            manager = stack.enter_context(alertmanager(work, alerts.url))
            targets = {"api": url.removeprefix("http://"), "exporter": address}
            stack.enter_context(prometheus(work, targets, manager))
        else:
            typer.echo("Prometheus or Alertmanager not installed: no alerts in this run")
        say(f"Traffic: {len(products)} products the champion never saw, all with feedback")
        replay(url, password, products, 1.0)
        say("A shifted stream: the same products without their photos")
        replay(url, password, products.assign(image_path=""), 0.0)
        drift = subprocess.run([CLI, "drift", f"--window={len(products)}",
                                f"--out={work / 'drift'}"], cwd=project, env=env, text=True,
                               capture_output=True)  # fmt: skip
        typer.echo(drift.stdout)
        summary["drift"] = [line.split()[0] for line in drift.stdout.splitlines() if " YES" in line]
        if shutil.which("prometheus"):
            wait_for(lambda: any(a["labels"]["alertname"] == "RakutenDriftDetected"
                                 for a in alerts.alerts), 120, "the drift alert")  # fmt: skip
        summary["alerts"] = sorted({a["labels"]["alertname"] for a in alerts.alerts})
        say("The retraining DAG (airflow dags test): feedback -> dvc repro -> challenger")
        airflow(work, env, "db", "migrate")
        airflow(work, env, "dags", "test", "rakuten_retraining", "-c", '{"evidence": "online"}')
        report = sorted((project / "reports" / "retraining").glob("*.md"))[-1].read_text()
        typer.echo(report)
        summary["retraining"] = report
        wait_for(lambda: "challenger" in variants(url), 60, "the API serving the challenger")
        summary["served_in_shadow"] = variants(url)
        say("The traffic again: the challenger answers in the champion's shadow")
        replay(url, password, products, 1.0)
        online = sh([CLI, "online-report", f"--out={work / 'online'}"], project, env)
        typer.echo(online.stdout)
        summary["online"] = online.stdout
        say("The promotion DAG: the gate on the paired online evidence")
        promotion = airflow(work, env, "dags", "test", "rakuten_promotion")
        summary["promotion_log"] = promotion.stdout[-3000:]
        versions = sh([CLI, "registry", "list"], project, env).stdout
        typer.echo(versions)
        champion = next(line.split()[0] for line in versions.splitlines() if "champion" in line)
        wait_for(lambda: variants(url).get("champion") == champion, 60, "the API's champion")
        summary["registry"] = versions
        summary["served_after"] = variants(url)
        say(f"The API now serves version {champion} as its champion, without a restart")
    return summary


def main(
    work: Path = typer.Option(Path("data/demo-loop"), help="Scratch folder (emptied first)."),
    classes: int = typer.Option(7, min=2, help="Product types of the slice."),
    per_class: int = typer.Option(14, min=4, help="Products of each type trained on first."),
    project: Path = typer.Option(None, help="A reproduced project (skips the preparation)."),
    traffic_dir: Path = typer.Option(None, help="X.csv and Y.csv of the traffic (with it)."),
) -> None:
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if project is None:
        say("A clone of this repository on a slice of the sample, reproduced")
        project, traffic_dir = prepare(work, classes, per_class), work / "traffic"
    products = traffic.load_products(traffic_dir / "X.csv", IMAGES, traffic_dir / "Y.csv")
    summary = loop(project.resolve(), work, products.sample(frac=1.0, random_state=0))
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(f"\nsummary: {work / 'summary.json'}")


if __name__ == "__main__":
    typer.run(main)
