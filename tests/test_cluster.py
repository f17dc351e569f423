"""Batch prediction on a real Dask cluster: a `dask scheduler` and two `dask worker` processes
on 127.0.0.1, the real batch command with `--scheduler`, the sample's real products and photos,
read from a shared path or from S3 (moto on 127.0.0.1). The answer must be byte for byte the
single-process one, a worker killed mid-run included."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from conftest import BIN, SAMPLE, PipelineRun, command_env, run
from local_stack import free_port, process, wait_until
from services import BUCKET, KEY_ID, SECRET

from rakuten_classifier.cluster import SCHEDULER_VARIABLE, rows_of
from rakuten_classifier.cluster_features import PHOTO_ROOT_VARIABLE
from rakuten_classifier.cluster_predict import concatenate_parts

X_CSV = SAMPLE / "X_train_update.csv"  # 876 products, 435 with their photo
PHOTOS = SAMPLE / "images" / "image_train"
BATCH = ["--batch-size", "16", "--partition-rows", "48"]  # 19 partitions


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen]


def s3_env(endpoint: str) -> dict[str, str]:
    """What a worker needs to read s3:// photos from the test's S3 server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }


def upload(endpoint: str, key: str, data: bytes) -> str:
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def zipped(folder: Path, inside: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{inside}/{path.name}")
    return buffer.getvalue()


@contextmanager
def dask_cluster(
    logs: Path, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A scheduler and `workers` single-threaded workers (no nanny: a killed worker stays
    dead), each in its own process group, with `env` added to theirs."""
    logs.mkdir(parents=True, exist_ok=True)
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    scheduler += ["--dashboard-address", f"127.0.0.1:{dashboard}"]
    with ExitStack() as stack:
        stack.enter_context(
            process(scheduler, logs / "scheduler.log", f"http://127.0.0.1:{dashboard}/health")
        )
        started = []
        for number in range(workers):
            health = free_port()
            command = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny"]
            command += ["--host", "127.0.0.1", "--dashboard-address", f"127.0.0.1:{health}"]
            command += ["--memory-limit", "0", "--name", f"worker-{number}"]
            log = logs / f"worker-{number}.log"
            ready = f"http://127.0.0.1:{health}/health"
            # In a folder of their own: paths relative to the client's would not resolve there.
            started.append(
                stack.enter_context(
                    process(command, log, ready, env={**command_env(), **(env or {})}, cwd=logs)
                )
            )
        yield Cluster(address, started)


def predict(
    bundle: Path, out: Path, *options: str, photos: Path | str = PHOTOS
) -> subprocess.CompletedProcess:
    command = ["rakuten-classifier", "predict", "--x-csv", str(X_CSV), "--image-dir", str(photos)]
    return run([*command, "--bundle", str(bundle), "--out", str(out), *BATCH, *options], out.parent)


@dataclass
class SingleProcess:
    output: bytes
    with_photo: int  # products whose photo was used


@pytest.fixture(scope="module")
def single_process(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SingleProcess:
    out = tmp_path_factory.mktemp("single") / "preds.csv"
    result = predict(bundle_dir, out)
    used = re.search(r"(\d+) with their photo", result.stderr)
    return SingleProcess(out.read_bytes(), int(used[1]))


def test_the_cluster_predicts_the_single_process_bytes(
    bundle_dir: Path, single_process: SingleProcess, tmp_path: Path, s3_endpoint: str
) -> None:
    out, from_s3 = tmp_path / "preds.csv", tmp_path / "from-s3.csv"
    (tmp_path / "photos").symlink_to(PHOTOS)  # relative to the client's folder, not the workers'
    archive = upload(s3_endpoint, "raw/images.zip", zipped(PHOTOS, "image_train"))
    with dask_cluster(tmp_path / "logs", env=s3_env(s3_endpoint)) as cluster:
        result = predict(bundle_dir, out, "--scheduler", cluster.address, photos=Path("photos"))
        assert "19 partitions of 48" in result.stderr
        # The photos in an archive on S3, read by the workers alone.
        on_s3 = predict(
            bundle_dir, from_s3, "--scheduler", cluster.address, photos=f"{archive}/image_train"
        )
    assert out.read_bytes() == single_process.output
    assert from_s3.read_bytes() == single_process.output
    assert f"{single_process.with_photo} with a photo" in on_s3.stderr
    assert len(out.read_text().splitlines()) == 877
    # Both workers took partitions, and the partitions' folder is gone once the output is in.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert f"{single_process.with_photo} with a photo" in result.stderr  # read on the workers
    for number in range(2):
        assert "loaded model bundle" in (tmp_path / "logs" / f"worker-{number}.log").read_text()


def test_a_worker_killed_mid_run_loses_nothing(
    bundle_dir: Path, single_process: SingleProcess, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    with dask_cluster(tmp_path / "logs") as cluster:
        command = ["rakuten-classifier", "predict", "--x-csv", str(X_CSV), "--image-dir"]
        command += [str(PHOTOS), "--bundle", str(bundle_dir), "--out", str(out), *BATCH]
        client = subprocess.Popen(
            [*command, "--scheduler", cluster.address],
            cwd=tmp_path,
            env=command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def done_parts() -> int:
            return len(list(tmp_path.glob(".preds.csv.parts-*/part-*.csv")))

        wait_until(lambda: done_parts() >= 3, 300, "three partitions written")
        victim = cluster.workers[0]
        os.killpg(victim.pid, signal.SIGKILL)
        killed_after = done_parts()
        victim.wait(10)
        output, _ = client.communicate(timeout=600)
    assert client.returncode == 0, output
    assert killed_after < 19, "the run was over before the worker was killed"
    assert out.read_bytes() == single_process.output


def test_partitions_hold_whole_batches() -> None:
    assert rows_of(2048, 64) == 2048
    assert rows_of(50, 16) == 64
    assert rows_of(1, 64) == 64


def test_parts_are_joined_in_order_with_one_header(tmp_path: Path) -> None:
    parts = []
    for number, rows in enumerate(["0,10,0.5\n1,40,0.25\n", "2,50,1.0\n"]):
        part = tmp_path / f"part-{number}.csv"
        part.write_text(",prdtypecode,probability\n" + rows)
        parts.append(part)
    concatenate_parts(parts, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == (
        ",prdtypecode,probability\n0,10,0.5\n1,40,0.25\n2,50,1.0\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "part-0.csv", "part-1.csv"]


def test_the_backbone_pass_on_the_cluster_writes_the_pipelines_bytes(
    pipeline_run: PipelineRun, tmp_path: Path, s3_endpoint: str
) -> None:
    """The image_features stage with RAKUTEN_DASK_SCHEDULER, the workers reading the raw photo
    archive from S3 (RAKUTEN_DASK_PHOTO_ROOT): the same files, byte for byte, as the stage wrote
    in one process during the session's `dvc repro`."""
    out = tmp_path / "features"
    archive = (pipeline_run.root / "data" / "raw" / "images.zip").read_bytes()
    root = upload(s3_endpoint, "features-raw/images.zip", archive).removesuffix("/images.zip")
    with dask_cluster(tmp_path / "logs", env=s3_env(s3_endpoint)) as cluster:
        run(
            [sys.executable, "stages/image_features.py", "--out-dir", str(out)],
            pipeline_run.root,
            env={SCHEDULER_VARIABLE: cluster.address, PHOTO_ROOT_VARIABLE: root},
        )
    expected = pipeline_run.root / "data" / "features"
    names = sorted(path.name for path in expected.iterdir())
    assert names == sorted(path.name for path in out.iterdir())
    assert any(name.endswith(".npz") for name in names)
    for name in names:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
