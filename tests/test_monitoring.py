"""Monitoring: the committed Prometheus, Alertmanager and Grafana configuration checked by their
own tools, then run live: a real API (champion and challenger in shadow mode, the store on
PostgreSQL) gets real traffic, the exporter checks it for drift, Prometheus scrapes both and
evaluates the alerts, Alertmanager notifies a webhook; every dashboard query has data."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import build_dashboards  # monitoring/grafana: on pytest's pythonpath (pyproject.toml)
import httpx2
import pandas as pd
import pytest
import yaml
from api_support import PASSWORD, Server, login, running_server, variant_bundle
from conftest import BIN, REPO, command_env
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel
from local_stack import (
    ALERTMANAGER,
    AMTOOL,
    PROMETHEUS,
    PROMTOOL,
    Receiver,
    alertmanager,
    exporter,
    prometheus,
    query,
    receiver,
)
from services import Postgres

from rakuten_classifier import traffic
from rakuten_classifier.store.database import connect
from rakuten_classifier.store.schema import DriftReport

MONITORING = REPO / "monitoring"
ALL_ROLES = "predict+reviewer+admin"


def require(*tools: str | None) -> None:
    if not all(tools):
        pytest.fail(
            "Prometheus or Alertmanager is missing: apt-get install prometheus "
            "prometheus-alertmanager (.ci/run does)"
        )


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_prometheus_configuration_and_alert_unit_tests_pass() -> None:
    require(PROMTOOL)
    checked = tool(PROMTOOL, "check", "config", str(MONITORING / "prometheus/prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in ("recording", "alerts"):  # every rule is read
        rules = yaml.safe_load((MONITORING / f"prometheus/rules/{name}.yml").read_text())
        count = sum(len(group["rules"]) for group in rules["groups"])
        assert f"SUCCESS: {count} rules found" in checked.stdout
    tested = tool(PROMTOOL, "test", "rules", str(MONITORING / "prometheus/tests/alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_alertmanager_configuration_is_valid() -> None:
    require(AMTOOL)
    checked = tool(AMTOOL, "check-config", str(MONITORING / "alertmanager/alertmanager.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboards_are_the_ones_the_code_builds() -> None:
    for name, text in build_dashboards.rendered().items():
        committed = (build_dashboards.DASHBOARDS_DIR / name).read_text()
        assert committed == text, f"{name} is stale: run monitoring/grafana/build_dashboards.py"
        board = Dashboard.from_json(json.loads(committed))
        panels = [panel for panel in board.panels if isinstance(panel, Panel)]
        assert panels and all(panel.targets for panel in panels)
        assert {panel.datasource.uid for panel in panels} == {"prometheus"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query."""
    found = []
    for name in build_dashboards.DASHBOARDS:
        board = json.loads((build_dashboards.DASHBOARDS_DIR / name).read_text())
        for panel in board["panels"]:
            found += [(panel["title"], target["expr"]) for target in panel.get("targets", [])]
    return found


@dataclass
class Stack:
    api: Server
    prometheus: str
    alerts: Receiver
    database_url: str
    bundle: Path
    root: Path
    drift_runs: list[subprocess.CompletedProcess] = field(default_factory=list)
    alerts_before_shift: set[tuple[str, str]] = field(default_factory=set)


def drift_command(stack: Stack, window: int, out: str) -> subprocess.CompletedProcess:
    args = ["drift", f"--bundle={stack.bundle}", f"--database-url={stack.database_url}",
            f"--window={window}", f"--out={stack.root / out}", "--fail-on-drift",
            f"--params-file={REPO / 'params.yaml'}"]  # fmt: skip
    return subprocess.run([str(BIN / "rakuten-classifier"), *args], capture_output=True,
                          text=True, env=command_env(), timeout=300)  # fmt: skip


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(
    bundle_dir: Path,
    fresh_products: pd.DataFrame,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Everything up, then two phases of traffic: the fresh products as they are, then the
    same products without their photo (a shift drift detection must see)."""
    require(PROMETHEUS, ALERTMANAGER)
    root = tmp_path_factory.mktemp("monitoring")
    postgres.psql("DROP DATABASE IF EXISTS monitoring")
    postgres.psql("CREATE DATABASE monitoring")
    database_url = postgres.url.rsplit("/", 1)[0] + "/monitoring"
    champion = variant_bundle(bundle_dir, root / "champion", 0.5)
    challenger = variant_bundle(bundle_dir, root / "challenger", 0.8)
    settings = {
        "mode": "shadow",
        "challenger_bundle": challenger,
        "database_url": database_url,
        "store_spool_dir": root / "spool",
        "rate_per_minute": 60,  # a burst after the replays runs into 429s
        "rate_burst": 400,
    }
    with (
        running_server(root / "api", champion, roles=ALL_ROLES, **settings) as api,
        receiver() as alerts,
        alertmanager(root, alerts.url) as manager,
        exporter(
            root,
            BIN / "rakuten-classifier",
            REPO / "params.yaml",
            command_env(),
            f"--bundle={champion}",
            f"--database-url={database_url}",
        ) as exporter_address,
        prometheus(
            root, {"api": f"127.0.0.1:{api.port}", "exporter": exporter_address}, manager
        ) as prometheus_url,
    ):
        stack = Stack(api, prometheus_url, alerts, database_url, champion, root)
        headers = traffic.login(api.url, "alice", PASSWORD)
        summary = traffic.replay(api.url, headers, fresh_products, 0.5, clients=2)
        assert not summary.errors, summary.lines()
        stack.drift_runs.append(drift_command(stack, len(fresh_products), "drift-fresh"))
        time.sleep(5)  # the exporter and the rules see the first phase
        stack.alerts_before_shift = alerts.ever_fired()
        without_photos = fresh_products.assign(image_path="")
        summary = traffic.replay(api.url, headers, without_photos, 0.0, clients=2)
        assert not summary.errors, summary.lines()
        stack.drift_runs.append(drift_command(stack, len(fresh_products), "drift-shifted"))
        with httpx2.Client(base_url=api.url, timeout=60) as http:
            auth = login(http)
            assert http.post("/admin/reload", headers=auth).status_code == 200
            assert http.post("/predict", data={"designation": " "}, headers=auth).status_code
            for _ in range(500):  # until the rate limit answers
                if http.post("/predict", data={"designation": "Chaise"}, headers=auth)\
                        .status_code == 429:  # fmt: skip
                    break
        yield stack


def fired(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split()[0] for line in result.stdout.splitlines() if "  YES" in line}


def test_fresh_products_raise_no_drift_on_inputs_or_representations(stack: Stack) -> None:
    """The served predictions' texts, photos and representations match the profile's: only
    the predicted product type mix may fire, since the fresh products' mix is uneven."""
    fresh = stack.drift_runs[0]
    assert "served predictions" in fresh.stdout, fresh.stderr
    assert fired(fresh) <= {"predicted_mix"}, fresh.stdout
    assert fresh.returncode == (3 if fired(fresh) else 0)


def test_traffic_without_photos_is_detected(stack: Stack) -> None:
    shifted = stack.drift_runs[1]
    assert shifted.returncode == 3, shifted.stdout + shifted.stderr
    assert "photo_share" in fired(shifted), shifted.stdout
    report = (stack.root / "drift-shifted" / "report.md").read_text()
    assert "**drift detected**" in report and "| photo_share | chi2 |" in report
    assert (stack.root / "drift-shifted" / "p_values.png").stat().st_size > 1000
    engine = connect(stack.database_url)
    try:
        with engine.connect() as connection:
            reports = connection.execute(DriftReport.__table__.select()).mappings().all()
    finally:
        engine.dispose()
    assert [row["drifted"] for row in reports][-1] is True
    assert len(reports) == 2


def test_drift_alert_reaches_the_webhook(stack: Stack) -> None:
    assert ("RakutenDriftDetected", "photo_share") not in stack.alerts_before_shift
    wait_for(lambda: ("RakutenDriftDetected", "photo_share") in stack.alerts.firing(), 60,
             "no photo_share drift alert arrived")  # fmt: skip
    assert not {name for name, _ in stack.alerts.ever_fired()} & {
        "RakutenApiDown", "RakutenStoreDown", "RakutenExporterDown", "RakutenServerErrors"
    }  # fmt: skip


def test_every_dashboard_query_has_data(stack: Stack) -> None:
    missing = []
    for title, expr in dashboard_queries():
        if not any(query(stack.prometheus, expr) for _ in _retries(20)):
            missing.append(f"{title}: {expr}")
    assert not missing, "queries without data:\n" + "\n".join(missing)


def _retries(seconds: int) -> Iterator[None]:
    """Up to `seconds` tries, a second apart (rates need two scrapes)."""
    for attempt in range(seconds):
        if attempt:
            time.sleep(1)
        yield None


def test_api_down_alert_when_the_api_stops(stack: Stack) -> None:
    """Last: it stops the API."""
    assert ("RakutenApiDown", "") not in stack.alerts.ever_fired()
    stack.api.process.terminate()
    stack.api.process.wait(timeout=60)
    wait_for(lambda: ("RakutenApiDown", "") in stack.alerts.firing(), 60,
             "no RakutenApiDown alert arrived")  # fmt: skip
