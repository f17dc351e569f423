"""The monitoring stack on 127.0.0.1 for a demonstration or a test (orchestration/demo_loop.py,
tests/test_monitoring.py): Prometheus and Alertmanager (Debian's packages) with the committed
configuration made fast (scrapes and evaluations every second, alerts without their `for:`
wait, notifications without grouping delays), the monitoring exporter, and a webhook receiver
standing in for the team's chat. Each server runs in a process group of its own, stopped as a
whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

MONITORING = Path(__file__).resolve().parent
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Until `check()` is true (an exception counts as not yet); TimeoutError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet: connection refused, bad status
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def answers(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


@contextmanager
def process(
    command: list[str],
    log: Path,
    ready: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """A server in a process group of its own, up once `ready` answers 200; stopped after."""
    with open(log, "wb") as output:
        started = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        wait_until(lambda: answers(ready), timeout, f"{command[0]} at {ready}")
        yield started
    except BaseException:
        print(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGTERM)
        try:
            started.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)


@dataclass
class Receiver:
    """Alertmanager's webhook target: keeps every notification's alerts, in order, and calls
    `on_alert` with each (the demonstration prints them)."""

    url: str
    alerts: list[dict] = field(default_factory=list)
    on_alert: Callable[[dict], None] | None = None

    @staticmethod
    def _key(alert: dict) -> tuple[str, str]:
        return alert["labels"]["alertname"], alert["labels"].get("check", "")

    def ever_fired(self) -> set[tuple[str, str]]:
        """(alertname, check label) of every alert notified as firing at some point."""
        return {self._key(alert) for alert in list(self.alerts) if alert["status"] == "firing"}

    def firing(self) -> set[tuple[str, str]]:
        """Those whose latest notification says firing (not resolved since)."""
        latest = {alert["fingerprint"]: alert for alert in list(self.alerts)}
        return {self._key(alert) for alert in latest.values() if alert["status"] == "firing"}


@contextmanager
def receiver(on_alert: Callable[[dict], None] | None = None) -> Iterator[Receiver]:
    received = Receiver("", on_alert=on_alert)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            alerts = json.loads(body)["alerts"]
            received.alerts.extend(alerts)
            for alert in alerts if received.on_alert else ():
                received.on_alert(alert)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_port}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def _fast_rules(source: Path, dest: Path) -> None:
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule.pop("for", None)
    dest.write_text(yaml.safe_dump(rules, sort_keys=False))


@contextmanager
def alertmanager(root: Path, webhook: str) -> Iterator[str]:
    """The committed Alertmanager configuration, its webhook pointed at `webhook` and its
    grouping delays at a second; yields its URL."""
    if not ALERTMANAGER:
        raise FileNotFoundError("prometheus-alertmanager: apt-get install prometheus-alertmanager")
    settings = yaml.safe_load((MONITORING / "alertmanager/alertmanager.yml").read_text())
    settings["route"].update(group_wait="0s", group_interval="1s", repeat_interval="1m")
    for receiver_config in settings["receivers"]:
        for hook in receiver_config.get("webhook_configs", []):
            hook["url"] = webhook
    (root / "alertmanager.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        ALERTMANAGER,
        f"--config.file={root / 'alertmanager.yml'}",
        f"--storage.path={root / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one instance: no gossip port
    ]
    with process(command, root / "alertmanager.log", f"{url}/-/ready"):
        yield url


@contextmanager
def prometheus(root: Path, targets: dict[str, str], alertmanager_url: str) -> Iterator[str]:
    """The committed Prometheus configuration and rules, scraping `targets` (job: host:port)
    every second; yields its URL."""
    if not PROMETHEUS:
        raise FileNotFoundError("prometheus: apt-get install prometheus")
    settings = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    settings["global"].update(scrape_interval="1s", evaluation_interval="1s")
    port = free_port()
    targets = {**targets, "prometheus": f"127.0.0.1:{port}"}
    for job in settings["scrape_configs"]:
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    manager = alertmanager_url.removeprefix("http://")
    settings["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [manager]}]}]
    (root / "rules").mkdir()
    for name in settings["rule_files"]:
        _fast_rules(MONITORING / "prometheus" / name, root / name)
    (root / "prometheus.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    command = [
        PROMETHEUS,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with process(command, root / "prometheus.log", f"{url}/-/ready"):
        yield url


@contextmanager
def exporter(root: Path, cli: Path, params_file: Path, env: dict[str, str],
             *options: str) -> Iterator[str]:  # fmt: skip
    """`rakuten-classifier exporter` (the command at `cli`) refreshing every second, with
    `options` (--bundle, --database-url...); yields host:port."""
    port = free_port()
    command = [
        str(cli),
        "exporter",
        f"--port={port}",
        "--interval=1",
        f"--params-file={params_file}",
        *options,
    ]
    with process(command, root / "exporter.log", f"http://127.0.0.1:{port}/metrics", env):
        yield f"127.0.0.1:{port}"


def query(prometheus_url: str, expr: str) -> list[dict]:
    """The series an instant query returns."""
    response = requests.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]
