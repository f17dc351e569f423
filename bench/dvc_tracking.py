"""How fast DVC handles the full data set's photos: a directory output of ~99k files versus one
images.zip archive. Prints the time of `dvc commit` (hashing and caching), of `dvc status`
(cold, warm, after one photo changed) and of `dvc push` / `dvc pull` to an S3 server on
127.0.0.1 (moto), for each layout.

    python bench/dvc_tracking.py [--rows 84916] [--test-rows 13812] [--push-rows 10000]

Push and pull use a `--push-rows` slice (the local S3 server keeps small objects in memory);
their per-file cost is what scales.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from synthetic import FULL_TEST_ROWS, FULL_TRAIN_ROWS, build_synthetic_copy

from rakuten_classifier import config
from rakuten_classifier.raw_import import archive_photos

STAGE = "stages:\n  import_raw:\n    cmd: python -c 'pass'\n    outs:\n      - data/raw\n"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def dvc_env(site_cache: Path) -> dict[str, str]:
    env = {**os.environ, **CREDENTIALS, "DVC_NO_ANALYTICS": "1"}
    env["DVC_SITE_CACHE_DIR"] = str(site_cache)  # its state database: removed for cold runs
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def link_tree(source: Path, dest: Path, limit: int | None = None) -> None:
    """Hard links (no copy) of the synthetic layout; `limit` photos per folder."""
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    if limit is not None:
        for folder in (dest / "images").iterdir():
            for extra in sorted(folder.iterdir())[limit:]:
                extra.unlink()


def archive_images(raw: Path) -> None:
    """images/ replaced by images.zip, as import_raw writes it."""
    archive_photos(raw / "images", raw / config.IMAGES_ZIP)
    shutil.rmtree(raw / "images")


def make_repo(root: Path, source: Path, layout: str, limit: int | None, env: dict) -> Path:
    root.mkdir(parents=True)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=root, env=env, check=True)
    (root / "dvc.yaml").write_text(STAGE)
    link_tree(source, root / "data" / "raw", limit)
    if layout == "archive":
        archive_images(root / "data" / "raw")
    return root


def count_files(raw: Path) -> int:
    return sum(1 for path in raw.rglob("*") if path.is_file())


def measure_status(root: Path, env: dict[str, str], site_cache: Path) -> dict[str, float]:
    figures = {"commit": timed(["dvc", "commit", "-f", "-q", "import_raw"], root, env)}
    shutil.rmtree(site_cache, ignore_errors=True)
    figures["status cold"] = timed(["dvc", "status"], root, env)
    figures["status warm"] = timed(["dvc", "status"], root, env)
    figures["status warm again"] = timed(["dvc", "status"], root, env)
    changed = next((root / "data" / "raw").rglob("*.jpg"), None) or next(
        (root / "data" / "raw").glob("*.zip")
    )
    changed.chmod(0o644)  # DVC may leave cached outputs read-only
    with changed.open("ab") as handle:
        handle.write(b"changed")
    figures["status, one photo changed"] = timed(["dvc", "status"], root, env)
    return figures


def measure_transfer(root: Path, env: dict[str, str], endpoint: str) -> dict[str, float]:
    for args in (
        ["dvc", "remote", "add", "-d", "storage", "s3://dvc/" + root.name],
        ["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint],
        ["dvc", "commit", "-f", "-q", "import_raw"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=b@b", "commit", "-qm", "data"],
    ):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
    figures = {"push": timed(["dvc", "push", "-q"], root, env)}
    clone = root.with_name(root.name + "-clone")
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], env=env, check=True)
    subprocess.run(
        ["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint],
        cwd=clone,
        env=env,
        check=True,
    )
    figures["pull into a fresh clone"] = timed(["dvc", "pull", "-q"], clone, env)
    return figures


def main(
    rows: int = FULL_TRAIN_ROWS,
    test_rows: int = FULL_TEST_ROWS,
    push_rows: int = 10_000,
    work_dir: Path | None = None,
) -> None:
    from moto.server import ThreadedMotoServer

    work = Path(work_dir or tempfile.mkdtemp(prefix="dvc-tracking-"))
    source = build_synthetic_copy(work / "synthetic", rows, test_rows)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket="dvc")
        for layout in ("directory", "archive"):
            site_cache = work / f"site-cache-{layout}"
            env = dvc_env(site_cache)
            root = make_repo(work / layout, source, layout, None, env)
            print(f"\n{layout}: data/raw holds {count_files(root / 'data/raw')} files", flush=True)
            for name, seconds in measure_status(root, env, site_cache).items():
                print(f"  {name:32s} {seconds:7.1f} s", flush=True)
            small = make_repo(work / f"{layout}-push", source, layout, push_rows, env)
            files = count_files(small / "data/raw")
            for name, seconds in measure_transfer(small, env, endpoint).items():
                label = f"{name} ({files} files)"
                print(f"  {label:32s} {seconds:7.1f} s", flush=True)
    finally:
        server.stop()
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


if __name__ == "__main__":
    typer.run(main)
