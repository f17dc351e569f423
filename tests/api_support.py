"""What the API tests share: settings with small limits, an in-process app on the pipeline
run's bundle, a real server started as a user starts it, and login helpers. Registered as a
pytest plugin by conftest.py, so its fixtures serve every test_api_* module."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from conftest import BIN, command_env
from fastapi.testclient import TestClient
from local_stack import free_port
from PIL import Image

from rakuten_classifier.bundle import MANIFEST_JSON, Bundle, load_bundle
from rakuten_classifier.files import read_json, sha256_file, write_json
from rakuten_classifier.fusion import FUSION_JSON
from rakuten_classifier.preprocess import check_photo
from rakuten_classifier.serve import Settings, create_app
from rakuten_classifier.serve.security import hash_password

SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD, rounds=4)  # the lowest cost: logins stay fast in tests
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
    # A reload looks at the settings' bundle folder: the served one, never the repo's models/.
    overrides.setdefault("bundle", bundle.path)
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


def variant_bundle(
    source: Path, dest: Path, image_weight: float, metric_shift: float = 0.0
) -> Path:
    """A copy of a real bundle with another photo weight (another model, another version)
    and, for mechanics tests of the promotion gate, its recorded held-out scores moved by
    `metric_shift` (overall and per product type)."""
    shutil.copytree(source, dest)
    fusion_file = dest / "fusion" / FUSION_JSON
    fusion = {**read_json(fusion_file), "method": "weighted", "image_weight": image_weight}
    write_json(fusion_file, fusion)
    manifest = read_json(dest / MANIFEST_JSON)
    manifest["files"][f"fusion/{FUSION_JSON}"] = sha256_file(fusion_file)
    manifest["model_version"] = sha256_file(fusion_file)[:12]
    for scores in manifest["metrics"].values():
        for key in ("accuracy", "f1_weighted", "f1_macro"):
            if key in scores:
                scores[key] = round(min(1.0, max(0.0, scores[key] + metric_shift)), 4)
    for scores in manifest["per_class_f1"].values():
        for code in scores:
            scores[code] = min(1.0, max(0.0, scores[code] + metric_shift))
    write_json(dest / MANIFEST_JSON, manifest)
    return dest


@pytest.fixture(scope="session")
def served_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline run's bundle with half the weight on the photo: on the tiny slice the
    fusion may learn to ignore photos (weight 0), and parity must hold where photos count."""
    return variant_bundle(bundle_dir, tmp_path_factory.mktemp("served") / "bundle", 0.5)


@pytest.fixture(scope="session")
def api_bundle(served_bundle: Path) -> Bundle:
    return load_bundle(served_bundle)


@pytest.fixture(scope="module")
def client(api_bundle: Bundle) -> Iterator[TestClient]:
    with serving(api_bundle) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, str]:
    return login(client)


def usable_photos(folder: Path) -> list[Path]:
    """The photos of `folder` that decode (the slice holds one truncated on purpose)."""
    return [path for path in sorted(folder.glob("*.jpg")) if check_photo(path) is None]


@pytest.fixture(scope="session")
def photo(slice_dir: Path) -> bytes:
    return usable_photos(slice_dir / "images/image_train")[0].read_bytes()


@dataclass
class Server:
    url: str
    port: int
    log: Path
    process: subprocess.Popen


def serve_env(**variables: str) -> dict[str, str]:
    env = command_env()
    for name in [name for name in env if name.startswith("RAKUTEN_API_")]:
        del env[name]
    return {**env, **{f"RAKUTEN_API_{k.upper()}": v for k, v in variables.items()}}


@contextmanager
def running_server(
    root: Path, bundle: Path, roles: str = "predict", **variables: object
) -> Iterator[Server]:
    """`rakuten-classifier serve` as a user starts it, in `root`, with its settings in a .env
    file there (`variables`: more RAKUTEN_API_* settings, by lowercase name); user alice has
    `roles`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.txt").write_text(f"alice:{HASH}:{roles}\n")
    port = free_port()
    lines = {
        "secret": SECRET,
        "users_file": "users.txt",
        "bundle": bundle,
        "port": port,
        "max_upload_bytes": LIMITS["max_upload_bytes"],
        **variables,
    }
    (root / ".env").write_text(
        "".join(f"RAKUTEN_API_{name.upper()}={value}\n" for name, value in lines.items())
    )
    log = root / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(BIN / "rakuten-classifier"), "serve"],
            cwd=root,
            env=serve_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server stopped ({process.returncode}):\n{log.read_text()}")
            try:
                if httpx2.get(f"{url}/status", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not come up:\n{log.read_text()}")
            time.sleep(0.5)
        yield Server(url, port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, served_bundle: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("api"), served_bundle) as started:
        yield started


def login_real(server: Server) -> dict[str, str]:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        return login(http)


def raw_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < response_length(data):
        chunk = sock.recv(65_536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def response_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0
