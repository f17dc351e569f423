"""The prediction API on the bundle of the pipeline run: in-process (FastAPI's TestClient) for
every refusal, and a real server (`rakuten-classifier serve`, uvicorn on a loopback port) for
the token flow, parity with the batch command, bodies cut off while streaming, and the logs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import httpx2
import jwt
import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, command_env, run
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from rakuten_classifier.bundle import MANIFEST_JSON, Bundle, BundlePrediction, load_bundle
from rakuten_classifier.cli import app as cli_app
from rakuten_classifier.files import read_json, sha256_file, write_json
from rakuten_classifier.fusion import FUSION_JSON
from rakuten_classifier.serve import Settings, SettingsError, create_app
from rakuten_classifier.serve.errors import ApiError
from rakuten_classifier.serve.predictor import Predictor
from rakuten_classifier.serve.security import hash_password
from rakuten_classifier.serve.telemetry import Metrics

SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD, rounds=4)  # the lowest cost: logins stay fast in tests
TENSORFLOW_NATIVE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")
# The start of a multipart form with a photo, its boundary `b`.
PHOTO_PART = (
    b'--b\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)
# Small limits, so that inputs over them stay small too.
LIMITS = {
    "max_upload_bytes": 200_000,
    "max_pixels": 1_000_000,
    "max_text_chars": 500,
    "batch_max": 4,
}


def settings(**overrides: object) -> Settings:
    values = {"secret": SECRET, "users": f"alice:{HASH}", **LIMITS, **overrides}
    return Settings(_env_file=None, **values)


@contextmanager
def serving(bundle: Bundle, **overrides: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings(**overrides), bundle)) as client:
        yield client


def login(client: TestClient | httpx2.Client, user: str = "alice") -> dict[str, str]:
    response = client.post("/token", data={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: a decompression bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline run's bundle with half the weight on the photo: on the tiny slice the
    fusion may learn to ignore photos (weight 0), and parity must hold where photos count."""
    dest = tmp_path_factory.mktemp("served") / "bundle"
    shutil.copytree(bundle_dir, dest)
    fusion_file = dest / "fusion" / FUSION_JSON
    write_json(fusion_file, {**read_json(fusion_file), "method": "weighted", "image_weight": 0.5})
    manifest = read_json(dest / MANIFEST_JSON)
    manifest["files"][f"fusion/{FUSION_JSON}"] = sha256_file(fusion_file)
    write_json(dest / MANIFEST_JSON, manifest)
    return dest


@pytest.fixture(scope="module")
def api_bundle(served_bundle: Path) -> Bundle:
    return load_bundle(served_bundle)


@pytest.fixture(scope="module")
def client(api_bundle: Bundle) -> Iterator[TestClient]:
    with serving(api_bundle) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, str]:
    return login(client)


@pytest.fixture(scope="module")
def photo(slice_dir: Path) -> bytes:
    return sorted((slice_dir / "images/image_train").glob("*.jpg"))[0].read_bytes()


# --- the token -----------------------------------------------------------------------------


def test_status_needs_no_token(client: TestClient, api_bundle: Bundle) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "up"
    assert body["model_version"] == api_bundle.manifest["model_version"]


def test_token_lets_its_holder_predict(client: TestClient) -> None:
    response = client.post("/token", data={"username": "alice", "password": PASSWORD})
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 60
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    answer = client.post("/predict", data={"designation": "Chaise de jardin"}, headers=headers)
    assert answer.status_code == 200, answer.text


def test_unknown_user_and_wrong_password_get_the_same_401(client: TestClient) -> None:
    answers = [
        client.post("/token", data={"username": user, "password": password})
        for user, password in (("alice", "wrong"), ("mallory", PASSWORD), ("alice", "x" * 100))
    ]
    bodies = []
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        bodies.append({k: v for k, v in answer.json().items() if k != "request_id"})
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["error"] == "bad_credentials"


def _token(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    now = datetime.now(UTC)
    base = {"sub": "alice", "iss": "rakuten-classifier", "iat": now, "exp": now + timedelta(1)}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    ("authorization", "kind"),
    [
        (None, "missing_token"),
        ("Basic YWxpY2U6cGFzc3dvcmQ=", "missing_token"),
        ("Bearer not-a-token", "invalid_token"),
        (
            f"Bearer {_token({}, key='another secret of at least thirty-two bytes')}",
            "invalid_token",
        ),
        (f"Bearer {_token({'exp': datetime.now(UTC) - timedelta(seconds=5)})}", "token_expired"),
        (f"Bearer {_token({}, key='', algorithm='none')}", "invalid_token"),
        (f"Bearer {_token({'sub': 'mallory'})}", "invalid_token"),
    ],
    ids=["none", "basic", "garbage", "forged", "expired", "unsigned", "unknown-user"],
)
def test_requests_without_a_valid_token_get_401(
    client: TestClient, authorization: str | None, kind: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        client.post("/predict", data={"designation": "Chaise"}, headers=headers),
        client.post("/predict/batch", json={"products": [{"designation": "x"}]}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == kind
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_rate_limit_is_per_user(api_bundle: Bundle) -> None:
    users = f"alice:{HASH},bob:{HASH}"
    with serving(api_bundle, users=users, rate_burst=2, rate_per_minute=1) as limited:
        alice, bob = login(limited, "alice"), login(limited, "bob")
        form = {"designation": "Chaise de jardin"}
        statuses = [limited.post("/predict", data=form, headers=alice).status_code for _ in "ab"]
        assert statuses == [200, 200]
        refused = limited.post("/predict", data=form, headers=alice)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert limited.post("/predict", data=form, headers=bob).status_code == 200


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "kind", "field"),
    [
        ({"designation": "   "}, "empty_designation", "designation"),
        ({"description": "only a description"}, "invalid_request", None),
        ({"designation": "x" * 501}, "text_too_long", "designation"),
        ({"designation": "Chaise", "description": "y" * 501}, "text_too_long", "description"),
        ({"designation": "Chaise", "product_id": "9" * 300}, "invalid_field", "product_id"),
    ],
    ids=["empty", "missing", "long-title", "long-description", "long-metadata"],
)
def test_bad_text_gets_422(
    client: TestClient, auth: dict[str, str], form: dict[str, str], kind: str, field: str | None
) -> None:
    response = client.post("/predict", data=form, headers=auth)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == kind and body.get("field") == field
    assert body["request_id"] == response.headers["X-Request-ID"]


def _bad_photos(photo: bytes) -> dict[str, tuple[bytes, int, str]]:
    return {
        "not-an-image": (b"%PDF-1.4 not a photo", 415, "not_an_image"),
        "unsupported-format": (encode(Image.new("RGB", (8, 8)), "PPM"), 415, "unsupported_format"),
        "truncated": (photo[: len(photo) // 2], 422, "corrupt"),
        "decompression-bomb": (png_header(50_000, 50_000), 413, "too_many_pixels"),
        "over-pixel-limit": (encode(Image.new("L", (1001, 1000)), "PNG"), 413, "too_many_pixels"),
        "over-byte-limit": (b"\xff\xd8" + b"\0" * 230_000, 413, "image_too_large"),
        "over-body-limit": (b"\xff" * 1_000_000, 413, "too_large"),
    }


@pytest.mark.parametrize("case", list(_bad_photos(b"")))
def test_bad_photo_is_refused_and_the_server_goes_on(
    client: TestClient, auth: dict[str, str], photo: bytes, case: str
) -> None:
    data, status, kind = _bad_photos(photo)[case]
    response = client.post(
        "/predict",
        data={"designation": "Chaise"},
        files={"image": ("photo.jpg", data, "image/jpeg")},
        headers=auth,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind
    good = client.post(
        "/predict",
        data={"designation": "Chaise"},
        files={"image": ("photo.jpg", photo, "image/jpeg")},
        headers=auth,
    )
    assert good.status_code == 200
    assert good.json()["modalities"] == ["text", "image"]


def test_body_streamed_over_the_limit_is_cut_off(client: TestClient, auth: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield PHOTO_PART
        yield from [b"x" * 65_536] * 20

    response = client.post(
        "/predict",
        content=chunks(),
        headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_batch_answers_every_product_in_order(
    client: TestClient, auth: dict[str, str], photo: bytes
) -> None:
    encoded = base64.b64encode(photo).decode()
    products = [
        {"designation": "Chaise de jardin", "product_id": 12, "imageid": "34"},
        {"designation": "", "description": "no title"},
        {"designation": "Figurine", "image": f"data:image/jpeg;base64,{encoded}"},
        {"designation": "Lampe", "image": base64.b64encode(b"not a photo").decode()},
    ]
    response = client.post("/predict/batch", json={"products": products}, headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 2)
    results = body["results"]
    assert [item["index"] for item in results] == [0, 1, 2, 3]
    assert [item["status"] for item in results] == [200, 422, 200, 415]
    assert results[0]["product_id"] == 12 and results[0]["imageid"] == "34"
    assert results[1]["error"] == "empty_designation"
    assert results[2]["modalities"] == ["text", "image"]
    assert results[3]["error"] == "not_an_image"
    # Each answer is the one that product gets alone.
    alone = client.post(
        "/predict",
        data={"designation": "Figurine"},
        files={"image": ("p.jpg", photo, "image/jpeg")},
        headers=auth,
    ).json()
    assert alone["prdtypecode"] == results[2]["prdtypecode"]
    assert alone["probability"] == pytest.approx(results[2]["probability"], abs=1e-6)


def test_batch_over_the_limit_gets_413(client: TestClient, auth: dict[str, str]) -> None:
    products = [{"designation": f"Produit {n}"} for n in range(LIMITS["batch_max"] + 1)]
    response = client.post("/predict/batch", json={"products": products}, headers=auth)
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    empty = client.post("/predict/batch", json={"products": []}, headers=auth)
    assert empty.status_code == 422
    not_json = client.post(
        "/predict/batch", content=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and not_json.json()["error"] == "invalid_request"


class FailingBundle(Bundle):
    """The real bundle, failing on one product: a model error must stay with its request."""

    def predict_products(
        self,
        designations: Sequence[str],
        descriptions: Sequence[str | None],
        images: Sequence[bytes | None],
    ) -> BundlePrediction:
        if "boom" in designations:
            raise RuntimeError("the model failed")
        return super().predict_products(designations, descriptions, images)


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
        try:  # queued before the worker first runs: they wait together
            requests = [predictor.predict([title], [""], [None]) for title in titles]
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
    # One call for the four, which failed, then one call per request.
    calls = metrics.registry.get_sample_value("rakuten_api_model_batch_products_count")
    products = metrics.registry.get_sample_value("rakuten_api_model_batch_products_sum")
    assert (calls, products) == (5, 8)


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


@dataclass
class Server:
    url: str
    port: int
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_env(**variables: str) -> dict[str, str]:
    env = command_env()
    for name in [name for name in env if name.startswith("RAKUTEN_API_")]:
        del env[name]
    return {**env, **{f"RAKUTEN_API_{k.upper()}": v for k, v in variables.items()}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, served_bundle: Path) -> Iterator[Server]:
    """`rakuten-classifier serve` as a user starts it, settings from a .env file."""
    root = tmp_path_factory.mktemp("api")
    (root / "users.txt").write_text(f"alice:{HASH}\n")
    port = _free_port()
    (root / ".env").write_text(
        f"RAKUTEN_API_SECRET={SECRET}\nRAKUTEN_API_USERS_FILE=users.txt\n"
        f"RAKUTEN_API_BUNDLE={served_bundle}\nRAKUTEN_API_PORT={port}\n"
        f"RAKUTEN_API_MAX_UPLOAD_BYTES={LIMITS['max_upload_bytes']}\n"
    )
    log = root / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(BIN / "rakuten-classifier"), "serve"],
            cwd=root,
            env=_serve_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server stopped ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx2.get(f"{url}/status", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not come up:\n{log.read_text()}")
        time.sleep(0.5)
    yield Server(url, port, log)
    process.terminate()
    process.wait(timeout=60)


def login_real(server: Server) -> dict[str, str]:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        return login(http)


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
    has_photo = products["photo"].map(Path.exists)
    chosen = pd.concat([products[has_photo].head(6), products[~has_photo].head(6)])
    photo_rows = [True] * 6 + [False] * 6
    chosen.drop(columns="photo").to_csv(tmp_path / "products.csv")
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
        if row.photo.exists():
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


def _raw_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65_536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def test_oversized_upload_is_refused_before_it_is_sent(server: Server) -> None:
    """A declared 100 MB body gets its 413 without one byte of it sent; a chunked body is cut
    off once over the limit, long before its end."""
    token = login_real(server)["Authorization"]
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Content-Length: 100000000\r\n\r\n".encode())
        status, body = _raw_response(sock)
    assert (status, body["error"]) == (413, "too_large")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        # A photo part of 512 KiB that would never end, over the ~270 KB limit.
        for chunk in [PHOTO_PART] + [b"x" * 65_536] * 8:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, body = _raw_response(sock)
    assert (status, body["error"]) == (413, "too_large")


def test_logs_are_json_lines_with_request_ids_and_no_secrets(server: Server) -> None:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        http.post("/token", data={"username": "alice", "password": "not the password"})
        headers = {**login(http), "X-Request-ID": "trace-logs"}
        http.post("/predict", data={"designation": "Chaise"}, headers=headers)
    time.sleep(0.5)  # the log line is written after the response
    text = server.log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    # TensorFlow's C++ core prints two lines of its own when it loads, before any Python code
    # can format them; everything else is JSON.
    entries = [json.loads(line) for line in lines if not TENSORFLOW_NATIVE.match(line)]
    assert len(entries) >= len(lines) - 4
    request = [e for e in entries if e.get("request_id") == "trace-logs"]
    assert request and request[-1]["path"] == "/predict" and request[-1]["status"] == 200
    assert request[-1]["user"] == "alice"
    for secret in (SECRET, PASSWORD, "not the password", HASH, headers["Authorization"][7:]):
        assert secret not in text


def test_serve_refuses_to_start_without_a_long_secret(tmp_path: Path) -> None:
    env = _serve_env(secret="too-short-a-secret", users=f"alice:{HASH}")
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
