"""Load benchmark of the prediction API on loopback (`make bench-api`; not a test).

Starts `rakuten-classifier serve` on a free loopback port with a real bundle, a throw-away
user and secret, and the rate limit out of the way (one user sends everything). Then, for each
scenario, N concurrent clients each send POST /predict requests one after the other for a
fixed time: sample products by their text alone, then with their photo. Prints the latency
percentiles, the throughput and the errors (any answer but 200, or a failed connection);
exits 1 if there was any error. The clients run on the same machine as the server and share
its cores: the figures are a floor for what a dedicated server gives. Each request is encoded
once, before the clock starts, and written as bytes on a kept-alive connection (as wrk does),
so the clients take little of the CPU (printed).

    python bench/api_load.py [--bundle models/api-bundle] [--clients 8] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np
from pipeline import resident_mib  # the figures the Kubernetes requests are set from

from rakuten_classifier import config
from rakuten_classifier.data import image_paths, read_products
from rakuten_classifier.preprocess import read_photo
from rakuten_classifier.serve.security import hash_password

PASSWORD = secrets.token_urlsafe(16)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match[1].strip() if match else platform.processor() or "unknown CPU"


def sample_products(sample_dir: Path) -> list[tuple[str, str, bytes | None]]:
    """The sample's labelled products: title, description and photo bytes (None if none)."""
    products = read_products(sample_dir / config.X_TRAIN_CSV)
    paths = image_paths(products, sample_dir / config.IMAGE_TRAIN_DIR)
    return [
        (title, description, read_photo(path, missing_ok=True))
        for title, description, path in zip(
            products["designation"], products["description"], paths, strict=True
        )
    ]


def start_server(bundle: Path, workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (workdir / "users.txt").write_text(f"bench:{hash_password(PASSWORD, rounds=4)}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAKUTEN_API_")}
    env.update(
        RAKUTEN_API_SECRET=secrets.token_urlsafe(48),
        RAKUTEN_API_USERS_FILE=str(workdir / "users.txt"),
        RAKUTEN_API_BUNDLE=str(bundle.resolve()),
        RAKUTEN_API_PORT=str(port),
        RAKUTEN_API_RATE_PER_MINUTE="1e9",
        RAKUTEN_API_RATE_BURST="1000000",
    )
    log = workdir / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "rakuten-classifier"), "serve"],
            cwd=workdir,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx2.get(f"{url}/status", timeout=2).status_code == 200:
                return process, url, log
        except httpx2.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")


BOUNDARY = "rakuten-bench-7d1c9f"


def encoded_request(host: str, token: str, product: tuple[str, str, bytes | None]) -> bytes:
    """One POST /predict as bytes on the wire, built once: a load generator that encodes each
    request with an HTTP library spends the cores the server shares (the table's client CPU
    column says how much this one still takes)."""
    title, description, photo = product
    disposition = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name="
    parts = [
        f'{disposition}"{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("designation", title), ("description", description))
    ]
    if photo is not None:
        file_head = f'{disposition}"image"; filename="photo.jpg"\r\nContent-Type: image/jpeg'
        parts.append(f"{file_head}\r\n\r\n".encode() + photo + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a kept-alive connection; read the whole answer; its status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    await reader.readexactly(int(length[1]) if length else 0)
    return int(head[9:12])


async def client(
    address: tuple[str, int],
    requests: list[bytes],
    start: int,
    measure_from: float,
    until: float,
    result: Result,
) -> None:
    """Requests one after the other on one connection (reopened after a failure); those that
    start before `measure_from` warm up."""
    index = start
    connection = None
    while (began := time.perf_counter()) < until:
        request = requests[index % len(requests)]
        index += 1
        try:
            connection = connection or await asyncio.open_connection(*address)
            status = await asyncio.wait_for(exchange(*connection, request), 60)
            error = None if status == 200 else f"HTTP {status}"
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as failure:
            error = type(failure).__name__
            if connection is not None:
                connection[1].close()
            connection = None
        if began < measure_from:
            continue
        if error:
            result.errors[error] = result.errors.get(error, 0) + 1
        else:
            result.latencies.append(time.perf_counter() - began)
    if connection is not None:
        connection[1].close()


async def scenario(
    url: str,
    token: str,
    products: list[tuple[str, str, bytes | None]],
    clients: int,
    warmup: float,
    duration: float,
) -> Result:
    result = Result(seconds=duration)
    host, port = url.removeprefix("http://").split(":")
    requests = [encoded_request(f"{host}:{port}", token, product) for product in products]
    now = time.perf_counter()
    step = len(products) // clients or 1
    await asyncio.gather(
        *(
            client(
                (host, int(port)), requests, n * step, now + warmup, now + warmup + duration, result
            )
            for n in range(clients)
        )
    )
    return result


def model_calls(url: str) -> tuple[float, float]:
    """(model calls, products) so far, from the server's Prometheus metrics."""
    text = httpx2.get(f"{url}/metrics", timeout=10).text
    values = dict(
        re.findall(r"^rakuten_api_model_batch_products_(count|sum) (\S+)$", text, re.MULTILINE)
    )
    return float(values.get("count", 0)), float(values.get("sum", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=config.BUNDLE_DIR)
    parser.add_argument("--sample-dir", type=Path, default=config.SAMPLE_DIR)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    args = parser.parse_args()
    products = sample_products(args.sample_dir)
    scenarios = {
        "text": [(title, description, None) for title, description, _ in products],
        "text+image": [product for product in products if product[2] is not None],
    }
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}, "
        f"Python {platform.python_version()} (clients and server share them); "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-api-") as workdir:
        process, url, _ = start_server(args.bundle, Path(workdir))
        try:
            version = httpx2.get(f"{url}/status", timeout=10).json()["model_version"]
            token = httpx2.post(
                f"{url}/token", data={"username": "bench", "password": PASSWORD}, timeout=30
            ).json()["access_token"]
            loaded_mib, _ = resident_mib(process.pid)
            print(
                f"bundle: {args.bundle} (model {version}); {args.clients} clients, "
                f"{args.duration:g} s per scenario after {args.warmup:g} s of warm-up\n"
            )
            print(
                f"{'scenario':<11} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
                f"{'p99 ms':>7} {'products/model call':>19} {'errors':>6} {'client CPUs':>11}"
            )
            total_errors = 0
            for name, requests in scenarios.items():
                calls_before, products_before = model_calls(url)
                cpu_before = sum(os.times()[:2])
                result = asyncio.run(
                    scenario(url, token, requests, args.clients, args.warmup, args.duration)
                )
                client_cores = (sum(os.times()[:2]) - cpu_before) / (args.warmup + args.duration)
                calls, predicted = model_calls(url)
                per_call = (predicted - products_before) / max(calls - calls_before, 1)
                milliseconds = np.array(result.latencies or [np.nan]) * 1000
                p50, p95, p99 = np.percentile(milliseconds, [50, 95, 99])
                errors = sum(result.errors.values())
                total_errors += errors
                print(
                    f"{name:<11} {len(result.latencies):>8} "
                    f"{len(result.latencies) / result.seconds:>7.1f} {p50:>7.1f} {p95:>7.1f} "
                    f"{p99:>7.1f} {per_call:>19.1f} {errors:>6} {client_cores:>11.2f}"
                    + (f"  {result.errors}" if errors else "")
                )
            _, peak_mib = resident_mib(process.pid)
            print(
                f"\nserver memory: {loaded_mib:.0f} MiB resident once loaded, "
                f"{peak_mib:.0f} MiB peak"
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
