"""Real servers the tests start on 127.0.0.1 and stop afterwards: PostgreSQL (Debian's
`postgresql` package, run as the `postgres` user in a temporary data directory) and the MLflow
tracking server (from .venv-mlflow, built by `make mlflow-env`), and an S3 server (moto) for DVC
remotes. Registered as a pytest plugin by conftest.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx2
import pytest
from conftest import REPO, run
from local_stack import free_port, wait_until
from moto.server import ThreadedMotoServer

POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
MLFLOW_BIN = REPO / ".venv-mlflow" / "bin" / "mlflow"
BUCKET = "dvc"  # the bucket name of the committed url (DagsHub's: s3://dvc)
KEY_ID, SECRET = "test-key-id", "test-secret-never-in-git"


@dataclass
class Postgres:
    """A PostgreSQL server of the tests' own; `stop`/`start` simulate an outage."""

    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/store"

    def _ctl(self, *args: str) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        as_postgres = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]
        subprocess.run(
            as_postgres if os.geteuid() == 0 else command,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data_dir} -c fsync=off"
        self._ctl("-w", "-l", str(self.data_dir / "server.log"), "-o", f"'{options}'", "start")

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def psql(self, sql: str) -> str:
        command = [
            str(self.bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-At",
            "-c",
            sql,
            "store",
        ]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not POSTGRES_BIN:
        pytest.fail(
            "PostgreSQL's server is not installed: `apt-get install postgresql` (.ci/run does)"
        )
    # Not under pytest's temporary folder: it is private to root, and the server runs as the
    # postgres user (initdb and the server refuse to run as root).
    root = Path(tempfile.mkdtemp(prefix="rakuten-tests-postgres-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    server = Postgres(POSTGRES_BIN[-1], data, free_port())
    init = f"{server.bin_dir / 'initdb'} -D {data} -U postgres -A trust --no-sync"
    subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c", init] if os.geteuid() == 0 else init.split(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server.start()
    try:
        createdb = [str(server.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port)]
        subprocess.run([*createdb, "-U", "postgres", "store"], check=True, timeout=60)
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` as deploy/mlflow/serve.sh starts it: one worker, no job execution, in a
    process group of its own (stopped as a whole), SQLite and local artifacts."""
    if not MLFLOW_BIN.exists():
        pytest.fail("no .venv-mlflow: run `make mlflow-env` (make test does)")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    log = root / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(MLFLOW_BIN),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            cwd=root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx2.get(f"{uri}/health", timeout=2).status_code == 200,
            180,
            "the MLflow server",
        )
        yield MlflowServer(uri, process, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 server on a free port of 127.0.0.1; nothing can reach the real AWS meanwhile:
    no shared AWS files or instance metadata, and any other host goes to a closed proxy."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            patch.setenv(name, "http://127.0.0.1:9")
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


def point_remote_at(root: Path, endpoint: str) -> None:
    """What the docs tell a user: the endpoint in the git-ignored local config."""
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], root)
    # A guard: never push anywhere but the local server.
    assert run(["dvc", "config", "remote.storage.endpointurl"], root).stdout.strip() == endpoint
