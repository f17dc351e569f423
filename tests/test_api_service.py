"""The API as a service: requests that wait share a model call, metrics, settings, a real
server started as a user starts it (parity with the batch command, logs), and its schema
checked by a fuzzer."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import httpx2
import pandas as pd
import pytest
import yaml
from api_support import (
    HASH,
    PASSWORD,
    SECRET,
    Server,
    login,
    login_real,
    running_server,
    serve_env,
    settings,
    usable_photos,
)
from conftest import BIN, REPO, run
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from rakuten_classifier.bundle import Bundle, BundlePrediction, PreparedProducts
from rakuten_classifier.cli import app as cli_app
from rakuten_classifier.serve import Settings, SettingsError, create_app
from rakuten_classifier.serve.errors import ApiError
from rakuten_classifier.serve.predictor import Predictor
from rakuten_classifier.serve.telemetry import Metrics

# Lines native code prints straight to stderr: TensorFlow's C++ core as it loads, LiteRT once
# as it creates its CPU kernels (neither goes through Python's logging).
TENSORFLOW_NATIVE = re.compile(
    r"^(WARNING: All log messages before absl|[IWE]\d{4} |INFO: Created TensorFlow Lite XNNPACK)"
)


class FailingBundle(Bundle):
    """The real bundle, failing on one product: a model error must stay with its request.
    A product titled "hold" keeps the model busy until `release` is set."""

    release = threading.Event()

    def predict_prepared(self, prepared: PreparedProducts) -> BundlePrediction:
        if "boom" in prepared.texts:
            raise RuntimeError("the model failed")
        if "hold" in prepared.texts:
            self.release.wait(30)
        return super().predict_prepared(prepared)


def test_waiting_requests_share_a_model_call_and_a_failure_stays_with_its_own(
    api_bundle: Bundle,
) -> None:
    bundle = FailingBundle(
        **{f.name: getattr(api_bundle, f.name) for f in dataclasses.fields(Bundle)}
    )
    metrics = Metrics()
    titles = ["Chaise de jardin", "Figurine", "boom", "Tente pliante"]

    async def predict_together() -> list[object]:
        predictor = Predictor(bundle, metrics, max_pending=100)
        await predictor.start()
        try:  # queued while the worker is busy: they wait together
            busy = asyncio.ensure_future(predictor.predict(["hold"], [""], [None]))
            while predictor.pending < 1 or not predictor._queue.empty():
                await asyncio.sleep(0.01)  # the worker has taken "hold"
            requests = [
                asyncio.ensure_future(predictor.predict([title], [""], [None])) for title in titles
            ]
            while predictor._queue.qsize() < len(titles):
                await asyncio.sleep(0.01)
            FailingBundle.release.set()
            await busy
            return await asyncio.gather(*requests, return_exceptions=True)
        finally:
            await predictor.stop()

    answers = asyncio.run(predict_together())
    assert isinstance(answers[2], ApiError) and answers[2].status == 500
    for title, answer in zip(titles, answers, strict=True):
        if title != "boom":
            prediction, row = answer
            alone = api_bundle.predict_products([title], [""], [None]).probabilities[0]
            assert prediction.probabilities[row] == pytest.approx(alone, abs=1e-9)
    # "hold", then one call for the four, which failed, then one call per request.
    calls = metrics.registry.get_sample_value("rakuten_api_model_batch_products_count")
    products = metrics.registry.get_sample_value("rakuten_api_model_batch_products_sum")
    assert (calls, products) == (6, 9)


# --- metrics and settings ------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_predictions_and_errors(
    client: TestClient, auth: dict[str, str], api_bundle: Bundle
) -> None:
    before = client.get("/metrics").text
    answer = client.post("/predict", data={"designation": "Chaise de jardin"}, headers=auth)
    client.post("/predict", data={"designation": " "}, headers=auth)
    after = client.get("/metrics").text
    code = str(answer.json()["prdtypecode"])
    ok = {"endpoint": "/predict", "method": "POST", "status": "200"}
    for name, labels in (
        ("rakuten_api_requests_total", ok),
        ("rakuten_api_request_duration_seconds_count", ok),
        ("rakuten_api_predictions_total", {"prdtypecode": code, "modalities": "text"}),
        ("rakuten_api_errors_total", {"kind": "empty_designation"}),
    ):
        assert _sample(after, name, **labels) == _sample(before, name, **labels) + 1, name
    assert _sample(after, "rakuten_api_model_info", version=api_bundle.version) == 1


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"secret": None}, "RAKUTEN_API_SECRET is not set"),
        ({"secret": "too-short-a-secret"}, "at least 32 bytes"),
        ({"users": ""}, "RAKUTEN_API_USERS_FILE"),
        ({"users": "alice"}, "RAKUTEN_API_USERS entry 1: expected username:bcrypt_hash"),
        ({"users": f"ali ce:{HASH}"}, "RAKUTEN_API_USERS entry 1: expected username:bcrypt_hash"),
        ({"users": "", "users_file": "nowhere.txt"}, "nowhere.txt not found"),
    ],
    ids=["no-secret", "short-secret", "no-user", "no-hash", "bad-name", "no-users-file"],
)
def test_app_refuses_to_start_with_bad_settings(
    api_bundle: Bundle, overrides: dict[str, object], names: str
) -> None:
    with pytest.raises(SettingsError, match=names) as error:
        create_app(settings(**overrides), api_bundle)
    assert "too-short-a-secret" not in str(error.value)


def test_params_yaml_lists_the_defaults_of_the_code() -> None:
    listed = yaml.safe_load((REPO / "params.yaml").read_text())["serve"]
    for name, value in listed.items():
        assert Settings.model_fields[name].default == value, name


def test_hash_password_prints_a_line_for_the_users_file() -> None:
    result = CliRunner().invoke(
        cli_app, ["hash-password", "--user", "bob", "--rounds", "4"], input="s3cret\ns3cret\n"
    )
    assert result.exit_code == 0, result.output
    user, hashed = result.stdout.strip().splitlines()[-1].split(":", 1)
    assert user == "bob" and bcrypt.checkpw(b"s3cret", hashed.encode())
    assert "s3cret" not in result.stdout
    refused = CliRunner().invoke(cli_app, ["hash-password", "--user", "a:b"], input="x\nx\n")
    assert refused.exit_code == 2 and "username" in refused.stderr


# --- a real server -------------------------------------------------------------------------


def test_real_server_serves_token_holders(server: Server, photo: bytes) -> None:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/status").json()["status"] == "up"
        form = {"designation": "Chaise de jardin", "product_identifier": "SKU-1"}
        assert http.post("/predict", data=form).status_code == 401
        wrong = http.post("/token", data={"username": "alice", "password": "nope"})
        assert wrong.status_code == 401
        headers = {**login(http), "X-Request-ID": "trace-42"}
        response = http.post(
            "/predict", data=form, files={"image": ("p.jpg", photo, "image/jpeg")}, headers=headers
        )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "trace-42"
    body = response.json()
    assert body["product_identifier"] == "SKU-1" and body["modalities"] == ["text", "image"]
    assert len(body["top"]) == 5 and body["top"][0]["prdtypecode"] == body["prdtypecode"]
    assert body["latency_ms"] > 0


def test_api_and_batch_command_give_the_same_answers(
    server: Server, slice_dir: Path, served_bundle: Path, tmp_path: Path
) -> None:
    """Sample products with and without photo: the classes and probabilities the API gives
    (one at a time and in a batch) are those of `rakuten-classifier predict`."""
    products = pd.read_csv(
        slice_dir / "X_train_update.csv", index_col=0, dtype=str, keep_default_na=False
    )
    photos = slice_dir / "images/image_train"
    products["photo"] = [
        photos / f"image_{row.imageid}_product_{row.productid}.jpg" for row in products.itertuples()
    ]
    products["usable"] = products["photo"].isin(usable_photos(photos))
    has_photo = products["usable"]
    chosen = pd.concat([products[has_photo].head(6), products[~has_photo].head(6)])
    photo_rows = [True] * 6 + [False] * 6
    chosen.drop(columns=["photo", "usable"]).to_csv(tmp_path / "products.csv")
    run(
        [
            "rakuten-classifier",
            "predict",
            "--x-csv",
            str(tmp_path / "products.csv"),
            "--image-dir",
            str(photos),
            "--bundle",
            str(served_bundle),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        tmp_path,
    )
    expected = pd.read_csv(tmp_path / "out.csv", index_col=0)

    def product(row: pd.Series) -> dict[str, object]:
        item = {"designation": row.designation, "description": row.description}
        if row.usable:
            item["image"] = base64.b64encode(row.photo.read_bytes()).decode()
        return item

    with httpx2.Client(base_url=server.url, timeout=60, headers=login_real(server)) as http:
        products = [product(row) for _, row in chosen.iterrows()]
        texts = [{k: v for k, v in item.items() if k != "image"} for item in products]
        batch = http.post("/predict/batch", json={"products": products}).json()["results"]
        singles = [
            http.post(
                "/predict",
                data=text,
                files={"image": ("p.jpg", base64.b64decode(item["image"]))}
                if "image" in item
                else None,
            ).json()
            for item, text in zip(products, texts, strict=True)
        ]
        text_only = http.post("/predict/batch", json={"products": texts}).json()["results"]
    for answers in (batch, singles):
        assert [a["prdtypecode"] for a in answers] == expected["prdtypecode"].tolist()
        probabilities = [a["probability"] for a in answers]
        assert probabilities == pytest.approx(expected["probability"].tolist(), abs=1e-6)
        used = [a["modalities"] == ["text", "image"] for a in answers]
        assert used == photo_rows
    # The photos weigh in: the same products without them get other probabilities.
    changed = [
        abs(a["probability"] - b["probability"]) for a, b in zip(batch, text_only, strict=True)
    ]
    assert [change > 1e-6 for change in changed] == photo_rows


def test_logs_are_json_lines_with_request_ids_and_no_secrets(server: Server) -> None:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        http.post("/token", data={"username": "alice", "password": "not the password"})
        headers = {**login(http), "X-Request-ID": "trace-logs"}
        http.post("/predict", data={"designation": "Chaise"}, headers=headers)
    time.sleep(0.5)  # the log line is written after the response
    text = server.log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    # Native code prints a few lines of its own (TENSORFLOW_NATIVE); everything else is JSON.
    entries = [json.loads(line) for line in lines if not TENSORFLOW_NATIVE.match(line)]
    assert len(entries) >= len(lines) - 4
    request = [e for e in entries if e.get("request_id") == "trace-logs"]
    assert request and request[-1]["path"] == "/predict" and request[-1]["status"] == 200
    assert request[-1]["user"] == "alice"
    for secret in (SECRET, PASSWORD, "not the password", HASH, headers["Authorization"][7:]):
        assert secret not in text


def test_serve_refuses_to_start_without_a_long_secret(tmp_path: Path) -> None:
    env = serve_env(secret="too-short-a-secret", users=f"alice:{HASH}")
    result = subprocess.run(
        [str(BIN / "rakuten-classifier"), "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "RAKUTEN_API_SECRET is 18 bytes long; it must be at least 32 bytes" in result.stderr
    assert "too-short-a-secret" not in result.stderr + result.stdout


# --- the schema ----------------------------------------------------------------------------


def test_the_schema_documents_every_refusal_with_its_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    expected = {
        ("/token", "post"): {"400", "401", "413", "422", "429", "431", "503"},
        ("/predict", "post"): {"400", "401", "413", "415", "422", "429", "431", "503"},
        ("/predict/batch", "post"): {"400", "401", "413", "422", "429", "431", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, statuses - set(responses))
        for status in statuses:
            body = responses[status]["content"]["application/json"]["schema"]
            assert body == error, (path, status)
    components = schema["components"]["schemas"]
    fields = components["ErrorResponse"]["properties"]
    assert {"error", "detail", "field", "fields", "request_id"} <= set(fields)
    form = components["Body_predict_predict_post"]
    assert "designation" in form["required"]
    assert form["properties"]["designation"]["minLength"] == 1
    products = components["BatchRequest"]["properties"]["products"]
    assert products["minItems"] == 1 and "1 to 4" in products["description"]


@pytest.mark.slow
def test_a_schema_fuzzer_finds_nothing(tmp_path: Path, served_bundle: Path, photo: bytes) -> None:
    """schemathesis against a real server with a token, every check on but one: every answer is
    one the schema documents, with the documented body, and invalid requests are refused.
    positive_data_acceptance is left out: it takes a request the schema allows to be one the API
    must accept, and JSON Schema cannot say that a photo's bytes must be an image or that a
    title needs a visible character (those refusals, 415 and 422, are documented)."""
    relaxed = {
        "rate_per_minute": 1_000_000,
        "rate_burst": 100_000,
        "login_per_minute": 1_000_000,
        "login_burst": 100_000,
    }
    with running_server(tmp_path, served_bundle, **relaxed) as fuzzed:
        token = login_real(fuzzed)["Authorization"]
        result = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                f"{fuzzed.url}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--header",
                f"Authorization: {token}",
                "--max-examples",
                "60",
                "--seed",
                "1",
                # One worker thread: two parse lambdas' source with `ast` at once, and CPython
                # 3.11.7 shares the AST constructor's depth counter between threads
                # (python/cpython#106905, "AST constructor recursion depth mismatch").
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--suppress-health-check",
                "all",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
