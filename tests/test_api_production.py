"""The API in production: roles, feedback, champion and challenger (A/B and shadow), models
from the registry swapped without a failed request, and the prediction store surviving its
database going down in the middle of the traffic."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import pandas as pd
import pytest
from api_support import (
    HASH,
    Server,
    login,
    running_server,
    serving,
    settings,
    variant_bundle,
)
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rakuten_classifier import registry
from rakuten_classifier.bundle import Bundle, load_bundle
from rakuten_classifier.serve import create_app
from rakuten_classifier.store.database import connect
from rakuten_classifier.store.queries import read_feedback, read_predictions

ALL_ROLES = "predict+reviewer+admin"


@pytest.fixture(scope="module")
def challenger_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(variant_bundle(bundle_dir, tmp_path_factory.mktemp("c") / "b", 0.8))


def store_of(tmp_path: Path) -> dict[str, object]:
    return {
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "store_spool_dir": tmp_path / "spool",
    }


def stored(tmp_path: Path, client: TestClient) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the app's store holds once its writer has caught up."""
    assert client.app.state.service.store.flush(30)
    engine = connect(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        return read_predictions(engine), read_feedback(engine)
    finally:
        engine.dispose()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- roles and feedback ------------------------------------------------------------------------


def test_each_endpoint_needs_its_role(api_bundle: Bundle, tmp_path: Path) -> None:
    users = f"alice:{HASH}:predict,rita:{HASH}:reviewer,adam:{HASH}:admin"
    with serving(api_bundle, users=users, **store_of(tmp_path)) as api:
        alice, rita, adam = (login(api, user) for user in ("alice", "rita", "adam"))
        truth = {"product_id": "123", "prdtypecode": api_bundle.labels.codes[0]}
        assert api.post("/feedback", json=truth, headers=alice).status_code == 403
        forbidden = api.post("/admin/reload", headers=rita)
        assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
        assert "role 'admin'" in forbidden.json()["detail"]
        assert api.post("/predict", data={"designation": "Chaise"}, headers=rita).status_code == 403
        assert api.post("/feedback", json=truth, headers=rita).status_code == 202
        assert (
            api.post("/predict", data={"designation": "Chaise"}, headers=alice).status_code == 200
        )
        reload = api.post("/admin/reload", headers=adam)
        assert reload.status_code == 200, reload.text


def test_feedback_is_checked_then_kept(api_bundle: Bundle, tmp_path: Path) -> None:
    with serving(api_bundle, users=f"rita:{HASH}:predict+reviewer", **store_of(tmp_path)) as api:
        headers = login(api, "rita")
        code = api_bundle.labels.codes[3]
        answer = api.post(
            "/predict", data={"designation": "Chaise", "product_id": "p-9"}, headers=headers
        )
        unknown = api.post(
            "/feedback", json={"product_id": "p-9", "prdtypecode": 7}, headers=headers
        )
        assert (unknown.status_code, unknown.json()["error"]) == (422, "unknown_prdtypecode")
        nameless = api.post("/feedback", json={"prdtypecode": code}, headers=headers)
        assert (nameless.status_code, nameless.json()["error"]) == (422, "missing_product")
        given = api.post(
            "/feedback",
            json={"product_id": "p-9", "prdtypecode": code, "comment": "relabelled"},
            headers=headers,
        )
        assert given.status_code == 202 and given.json()["status"] == "accepted"
        predictions, feedback = stored(tmp_path, api)
    row = predictions.iloc[0]
    assert row["request_id"] == answer.headers["X-Request-ID"]
    assert (row["product_id"], row["variant"], bool(row["served"])) == ("p-9", "champion", True)
    assert row["prdtypecode"] == answer.json()["prdtypecode"]
    assert row["designation"] is None  # texts are kept only with RAKUTEN_API_STORE_TEXTS
    assert len(row["top"]) == 5 and row["language"] in ("fr", "en", "de", "other")
    assert feedback.iloc[0][["product_id", "prdtypecode", "user"]].tolist() == ["p-9", code, "rita"]


# --- champion and challenger ---------------------------------------------------------------


def test_ab_testing_sends_a_stable_share_of_products_to_the_challenger(
    api_bundle: Bundle, challenger_bundle: Bundle, tmp_path: Path
) -> None:
    options = {"mode": "ab", "challenger_share": 0.5, **store_of(tmp_path)}
    with TestClient(create_app(settings(**options), api_bundle, challenger_bundle)) as api:
        headers = login(api)
        variants = {}
        for number in range(40):
            form = {"designation": f"Chaise de jardin {number}", "product_id": f"sku-{number}"}
            variants[number] = api.post("/predict", data=form, headers=headers).json()
        again = api.post(
            "/predict", data={"designation": "Chaise", "product_id": "sku-7"}, headers=headers
        ).json()
        exposition = api.get("/metrics").text
        predictions, _ = stored(tmp_path, api)
    counts = Counter(answer["variant"] for answer in variants.values())
    assert counts["champion"] >= 10 and counts["challenger"] >= 10, counts
    assert again["variant"] == variants[7]["variant"]  # the same product, the same variant
    versions = {a["variant"]: a["model_version"] for a in variants.values()}
    assert versions == {"champion": api_bundle.version, "challenger": challenger_bundle.version}
    assert metric(exposition, "rakuten_api_predictions_total", variant="challenger") == counts[
        "challenger"
    ] + (again["variant"] == "challenger")
    assert Counter(predictions["variant"]) == Counter(
        [a["variant"] for a in variants.values()] + [again["variant"]]
    )
    assert predictions["served"].all()


def test_shadow_mode_stores_the_challengers_answers(
    api_bundle: Bundle, challenger_bundle: Bundle, tmp_path: Path
) -> None:
    app = create_app(settings(mode="shadow", **store_of(tmp_path)), api_bundle, challenger_bundle)
    with TestClient(app) as api:
        headers = login(api)
        answers = [
            api.post("/predict", data={"designation": f"Lampe {n}"}, headers=headers)
            for n in range(6)
        ]
        deadline = time.monotonic() + 30
        while api.app.state.service.pending_shadows and time.monotonic() < deadline:
            time.sleep(0.05)
        predictions, _ = stored(tmp_path, api)
    assert {answer.json()["variant"] for answer in answers} == {"champion"}
    served = predictions[predictions["served"]]
    shadow = predictions[~predictions["served"]]
    assert set(served["variant"]) == {"champion"} and set(shadow["variant"]) == {"challenger"}
    requests = sorted(answer.headers["X-Request-ID"] for answer in answers)
    assert sorted(shadow["request_id"]) == requests == sorted(served["request_id"])
    assert set(shadow["model_version"]) == {challenger_bundle.version}


# --- a real server: models from the registry, swapped under traffic -------------------------


class Traffic:
    """Clients sending products to a real server until stopped, counting every answer."""

    def __init__(self, server: Server, clients: int = 3) -> None:
        self.server = server
        self.statuses: Counter = Counter()
        self.versions: list[str] = []
        self._stop = threading.Event()
        with httpx2.Client(base_url=server.url, timeout=60) as http:
            self.headers = login(http)
        self._threads = [threading.Thread(target=self._send, args=(n,)) for n in range(clients)]

    def _send(self, client: int) -> None:
        with httpx2.Client(base_url=self.server.url, timeout=120, headers=self.headers) as http:
            number = 0
            while not self._stop.is_set():
                number += 1
                form = {"designation": f"Tente pliante {client}-{number}"}
                response = http.post("/predict", data=form)
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def status(server: Server) -> dict:
    return httpx2.get(f"{server.url}/status", timeout=30).json()


@pytest.mark.slow
def test_an_alias_moved_in_the_registry_is_served_without_a_failed_request(
    mlflow_server, bundle_dir: Path, tmp_path: Path
) -> None:
    uri, name = mlflow_server.uri, "rakuten-serving"
    first = variant_bundle(bundle_dir, tmp_path / "first", 0.25)
    second = variant_bundle(bundle_dir, tmp_path / "second", 0.75)
    registry.register_bundle(first, uri=uri, name=name, alias="champion")
    v2 = registry.register_bundle(second, uri=uri, name=name)
    settings = {
        "model_source": "registry",
        "registry_uri": uri,
        "registered_model": name,
        "model_cache": tmp_path / "cache",
        "reload_seconds": 2,
        "rate_per_minute": 1_000_000,
        "rate_burst": 100_000,
    }
    with running_server(tmp_path / "api", first, roles=ALL_ROLES, **settings) as server:
        before = status(server)["model_version"]
        with Traffic(server) as traffic:
            time.sleep(1.0)
            registry.move_alias(uri, name, "champion", v2.version, reason="test swap")
            with httpx2.Client(base_url=server.url, timeout=120) as http:
                reload = http.post("/admin/reload", headers=traffic.headers)
            time.sleep(1.5)
        assert reload.status_code == 200, reload.text
        assert reload.json()["changed"] == ["champion"]
        after = status(server)
        # The periodic check (every 2 s) picks up an alias moved without a call too.
        registry.move_alias(uri, name, "champion", "1", reason="back")
        deadline = time.monotonic() + 30
        while status(server)["model_version"] != before and time.monotonic() < deadline:
            time.sleep(0.5)
        back = status(server)["model_version"]
    assert set(traffic.statuses) == {200}, traffic.statuses  # not one failed request
    assert before == load_bundle(first).version
    assert after["model_version"] == load_bundle(second).version
    assert after["models"][0]["registry_version"] == v2.version
    assert traffic.versions[0] == before and traffic.versions[-1] == after["model_version"]
    assert back == before


@pytest.mark.slow
def test_the_database_going_down_loses_no_prediction(
    postgres, served_bundle: Path, tmp_path: Path
) -> None:
    """PostgreSQL stopped in the middle of the traffic: every prediction is still answered,
    the backlog metric rises, then drains once the database is back, and every answered
    prediction is in the database, once."""
    postgres.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    settings = {
        "database_url": postgres.url,
        "store_max_queue": 20,  # so that the outage also fills the spool on disk
        "rate_per_minute": 1_000_000,
        "rate_burst": 100_000,
    }
    with running_server(tmp_path / "api", served_bundle, **settings) as server:
        scrape = lambda: httpx2.get(f"{server.url}/metrics", timeout=30).text  # noqa: E731
        with Traffic(server, clients=2) as traffic:
            time.sleep(1.5)
            postgres.stop()
            time.sleep(4.0)
            during = scrape()
            postgres.start()
            time.sleep(1.0)
        deadline = time.monotonic() + 90
        while metric(scrape(), "rakuten_store_backlog") and time.monotonic() < deadline:
            time.sleep(0.5)
        after = scrape()
    answered = traffic.statuses[200]
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert metric(during, "rakuten_store_backlog") > 20  # queue full: the spool took the rest
    assert metric(during, "rakuten_store_up") == 0
    assert metric(after, "rakuten_store_backlog") == 0 and metric(after, "rakuten_store_up") == 1
    rows = postgres.psql("select count(*), count(distinct uid) from predictions").split("|")
    assert [int(value) for value in rows] == [answered, answered]
