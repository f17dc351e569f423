"""Tests of rakuten_classifier.download against real HTTP servers on 127.0.0.1.

The server mimics Hugging Face: ``/resolve/main/<name>`` answers 302 to ``/cdn/<name>`` with
``X-Linked-Size`` / ``X-Linked-ETag`` headers, and the CDN hop honours Range requests. A
per-file plan scripts misbehaviour (status codes, a cut connection, an ignored Range...).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from rakuten_classifier import download
from rakuten_classifier.download import DownloadError, download_file
from rakuten_classifier.preprocess import read_photo
from rakuten_classifier.raw_import import (
    DOWNLOADED_FILES,
    ArchiveError,
    fetch_challenge_data,
    repack_photos,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
CSVS = ("X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv")
FAST = {"backoff": 0.01, "progress": False}  # keeps retries quick in tests
NET_CHUNK = 64 * 1024  # download.py's network read size


def _range_start(header: str | None) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", header or "")
    assert m, header
    return int(m[1])


# --------------------------------------------------------------------------------------------
# A scriptable HTTP server
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}  # name -> modes for the successive requests
        self.log: list[tuple[str, str, str | None]] = []  # (hop, name, Range header)
        self.lock = threading.Lock()
        self.redirect = True  # False: serve at /resolve/ directly, without X-Linked-* headers
        self.linked_headers = True

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/resolve/main/"

    def url(self, name: str) -> str:
        return self.base_url + name

    def hits(self, name: str, hop: str = "resolve") -> list[str | None]:
        """Range headers of the requests for ``name`` at ``hop`` ("resolve" or "cdn")."""
        with self.lock:
            return [rng for h, n, rng in self.log if h == hop and n == name]

    def handle_error(self, request, client_address) -> None:
        pass  # a client hanging up mid-body is part of these tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        url = urlsplit(self.path)
        rng = self.headers.get("Range")
        if url.path.startswith("/resolve/main/"):
            name = unquote(url.path.removeprefix("/resolve/main/"))
            with srv.lock:
                srv.log.append(("resolve", name, rng))
                queue = srv.plan.get(name)
                mode = queue.pop(0) if queue else "ok"
            if name not in srv.files:
                return self._plain(404)
            if mode.isdigit():
                return self._plain(int(mode))
            if not srv.redirect:
                return self._serve(name, mode, rng)
            data = srv.files[name]
            self.send_response(302)
            self.send_header("Location", f"{srv.root}/cdn/{quote(name)}?mode={mode}")
            if srv.linked_headers:
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("X-Linked-ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path.startswith("/cdn/"):
            name = unquote(url.path.removeprefix("/cdn/"))
            with srv.lock:
                srv.log.append(("cdn", name, rng))
            self._serve(name, parse_qs(url.query).get("mode", ["ok"])[0], rng)
        else:
            self._plain(404)

    def _plain(self, status: int) -> None:
        body = f"status {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, name: str, mode: str, rng: str | None) -> None:
        data = self.server.files[name]
        if mode == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and mode != "norange":
            start = int(m[1])
            end = int(m[2]) if m[2] else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("cut", "stall"):
            # Announce the whole body, send half of it, then hang up (or go silent first).
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(1.0)
            self.close_connection = True
            return
        self.wfile.write(body)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever the environment says, traffic must go straight to 127.0.0.1.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _sample_images(split: str) -> list[Path]:
    return sorted((SAMPLE / "images" / split).glob("*.jpg"))


def make_zip(
    path: Path,
    prefix: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Zip sample photos as ``<prefix>image_train/...`` and ``<prefix>image_test/...``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, n in (("image_train", n_train), ("image_test", n_test)):
            zf.writestr(f"{prefix}{split}/", b"")  # directory entries, as zip tools write them
            for img in _sample_images(split)[:n]:
                zf.write(img, f"{prefix}{split}/{img.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def images_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Every sample photo under ``images/``, plus the junk a Mac adds."""
    path = tmp_path_factory.mktemp("zip") / "images.zip"
    first = _sample_images("image_train")[0].name
    make_zip(
        path,
        "images/",
        extra={f"__MACOSX/images/image_train/._{first}": b"\x00\x05\x16\x07junk"},
    )
    return path.read_bytes()


@pytest.fixture
def server(images_zip: bytes) -> Iterator[_Server]:
    srv = _Server()
    srv.files = {name: (SAMPLE / name).read_bytes() for name in CSVS}
    srv.files["images.zip"] = images_zip
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _assert_photos_archive(archive: Path, counts: dict[str, int | None]) -> None:
    """`archive` holds the first `counts[split]` sample photos of each split (all with None),
    byte for byte, as `split/name`, and nothing else."""
    expected = {
        f"{split}/{photo.name}": photo
        for split, count in counts.items()
        for photo in _sample_images(split)[:count]
    }
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == sorted(expected)
    for name, photo in expected.items():
        assert read_photo(archive / name) == photo.read_bytes(), name


def _assert_challenge_layout(out: Path) -> None:
    for name in CSVS:
        assert (out / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    _assert_photos_archive(out / "images.zip", {"image_train": None, "image_test": None})
    assert sorted(p.name for p in out.iterdir()) == sorted([*CSVS, "images.zip"])


# --------------------------------------------------------------------------------------------
# fetch_challenge_data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["/", ""], ids=["trailing-slash", "no-trailing-slash"])
def test_fetch_challenge_data_builds_the_challenge_layout(
    server: _Server, tmp_path: Path, slash: str
) -> None:
    out, cache = tmp_path / "raw", tmp_path / ".download_cache"
    base = server.base_url.rstrip("/") + slash

    assert fetch_challenge_data(base, out, cache, **FAST) == out

    _assert_challenge_layout(out)
    assert sorted(p.name for p in cache.iterdir()) == sorted(DOWNLOADED_FILES)
    for name in DOWNLOADED_FILES:
        assert server.hits(name) == [None]  # one plain request each, no retry, no Range
        assert server.hits(name, "cdn") == [None]


def test_fetch_reuses_finished_downloads_after_dvc_deletes_outputs(
    server: _Server, tmp_path: Path
) -> None:
    out, cache = tmp_path / "raw", tmp_path / ".download_cache"
    fetch_challenge_data(server.base_url, out, cache, **FAST)
    shutil.rmtree(out)  # what DVC does before running the stage again
    before = len(server.log)

    fetch_challenge_data(server.base_url, out, cache, **FAST)

    assert len(server.log) == before  # nothing downloaded again
    _assert_challenge_layout(out)


def test_fetch_checks_given_checksums(server: _Server, tmp_path: Path) -> None:
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in server.files.items()}
    checksums["X_test_update.csv"] = "ab" * 32
    server.linked_headers = False  # so that the mismatch shows only after the download
    out, cache = tmp_path / "raw", tmp_path / "cache"

    with pytest.raises(DownloadError, match=r"sha256 mismatch") as err:
        fetch_challenge_data(server.base_url, out, cache, checksums=checksums, **FAST)

    assert server.url("X_test_update.csv") in str(err.value)
    assert not (cache / "X_test_update.csv").exists()
    assert not (cache / "X_test_update.csv.part").exists()
    assert not any(out.iterdir())  # a failed download leaves the outputs untouched


# --------------------------------------------------------------------------------------------
# download_file: resuming
# --------------------------------------------------------------------------------------------


def test_cut_connection_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    data = server.files["images.zip"]
    server.plan["images.zip"] = ["cut"]
    dest = tmp_path / "images.zip"

    download_file(server.url("images.zip"), dest, **FAST)

    assert dest.read_bytes() == data
    assert not dest.with_name("images.zip.part").exists()
    # Range survives the redirect and starts where the cut connection stopped (urllib3 drops
    # the network chunk it was filling, at most 64 KiB).
    first, second = server.hits("images.zip", "cdn")
    assert first is None
    assert len(data) // 2 - NET_CHUNK < _range_start(second) <= len(data) // 2


def test_cut_connection_without_size_headers_resumes(server: _Server, tmp_path: Path) -> None:
    # No redirect, no X-Linked-*: only Content-Length tells that the body is incomplete.
    data = server.files["images.zip"]
    server.redirect = False
    server.plan["images.zip"] = ["cut", "cut"]
    dest = tmp_path / "images.zip"

    download_file(server.url("images.zip"), dest, **FAST)

    assert dest.read_bytes() == data
    first, second, third = server.hits("images.zip")
    assert first is None
    start = _range_start(second)
    assert len(data) // 2 - NET_CHUNK < start <= len(data) // 2
    assert start + (len(data) - start) // 2 - NET_CHUNK < _range_start(third)


def test_stalled_body_times_out_and_resumes(server: _Server, tmp_path: Path) -> None:
    data = server.files["images.zip"]
    server.plan["images.zip"] = ["stall"]
    dest = tmp_path / "images.zip"

    download_file(server.url("images.zip"), dest, timeout=(2, 0.3), **FAST)

    assert dest.read_bytes() == data
    first, second = server.hits("images.zip", "cdn")
    assert first is None and _range_start(second) > 0


def test_part_left_by_an_earlier_run_is_resumed(server: _Server, tmp_path: Path) -> None:
    data = server.files["images.zip"]
    dest = tmp_path / "images.zip"
    dest.with_name("images.zip.part").write_bytes(data[:12345])

    download_file(server.url("images.zip"), dest, **FAST)

    assert dest.read_bytes() == data
    assert server.hits("images.zip", "cdn") == ["bytes=12345-"]


def test_server_ignoring_range_restarts_from_scratch(server: _Server, tmp_path: Path) -> None:
    data = server.files["images.zip"]
    server.plan["images.zip"] = ["norange"]
    dest = tmp_path / "images.zip"
    dest.with_name("images.zip.part").write_bytes(data[:5000])

    download_file(server.url("images.zip"), dest, **FAST)

    assert dest.read_bytes() == data
    assert server.hits("images.zip", "cdn") == ["bytes=5000-"]  # answered 200, whole file


def test_complete_part_is_finished_on_416(server: _Server, tmp_path: Path) -> None:
    data = server.files["X_test_update.csv"]
    dest = tmp_path / "X_test_update.csv"
    dest.with_name("X_test_update.csv.part").write_bytes(data)

    download_file(server.url("X_test_update.csv"), dest, **FAST)

    assert dest.read_bytes() == data
    assert server.hits("X_test_update.csv", "cdn") == [f"bytes={len(data)}-"]


def test_stale_part_from_another_version_is_replaced(server: _Server, tmp_path: Path) -> None:
    # The kept prefix does not match the file any more: the sha256 check catches it and the
    # download starts over once instead of failing.
    data = server.files["images.zip"]
    dest = tmp_path / "images.zip"
    dest.with_name("images.zip.part").write_bytes(b"\x00" * 4096)

    download_file(server.url("images.zip"), dest, **FAST)

    assert dest.read_bytes() == data
    assert server.hits("images.zip", "cdn") == ["bytes=4096-", None]


def test_existing_destination_is_not_downloaded_again(server: _Server, tmp_path: Path) -> None:
    data = server.files["Y_train_CVw08PX.csv"]
    dest = tmp_path / "Y_train_CVw08PX.csv"
    dest.write_bytes(data)

    download_file(server.url(dest.name), dest, expected_sha256=hashlib.sha256(data).hexdigest())
    assert server.log == []

    dest.write_bytes(b"damaged")  # no longer matches: fetched again
    download_file(server.url(dest.name), dest, expected_sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.hits(dest.name) == [None]


# --------------------------------------------------------------------------------------------
# download_file: retries and errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["500", "503", "429", "408"])
def test_transient_status_is_retried(server: _Server, tmp_path: Path, status: str) -> None:
    server.plan["X_train_update.csv"] = [status]
    dest = tmp_path / "X_train_update.csv"

    download_file(server.url("X_train_update.csv"), dest, **FAST)

    assert dest.read_bytes() == server.files["X_train_update.csv"]
    assert server.hits("X_train_update.csv") == [None, None]


def test_persistent_500_gives_up_after_the_retries(server: _Server, tmp_path: Path) -> None:
    server.plan["X_train_update.csv"] = ["500"] * 10
    url = server.url("X_train_update.csv")
    dest = tmp_path / "X_train_update.csv"

    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=3, **FAST)

    message = str(err.value)
    assert url in message and "HTTP 500" in message and "data.hf_base_url" in message
    assert err.value.status == 500
    assert len(server.hits("X_train_update.csv")) == 4  # first try + 3 retries
    assert not dest.exists()


def test_404_fails_at_once(server: _Server, tmp_path: Path) -> None:
    url = server.url("missing.csv")
    dest = tmp_path / "missing.csv"

    with pytest.raises(DownloadError) as err:
        download_file(url, dest, **FAST)

    message = str(err.value)
    assert url in message and "HTTP 404" in message and "data.hf_base_url" in message
    assert str(dest) in message  # where to put a manually downloaded copy
    assert server.hits("missing.csv") == [None]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("linked_headers", [False, True], ids=["no-headers", "x-linked-headers"])
def test_sha256_mismatch_leaves_nothing_that_looks_finished(
    server: _Server, tmp_path: Path, linked_headers: bool
) -> None:
    server.linked_headers = linked_headers
    url = server.url("images.zip")
    dest = tmp_path / "images.zip"

    with pytest.raises(DownloadError, match="sha256") as err:
        download_file(url, dest, expected_sha256="0" * 64, **FAST)

    assert url in str(err.value)
    assert list(tmp_path.iterdir()) == []
    assert server.hits("images.zip") == [None]  # a checksum error is not retried


def test_corrupt_body_is_caught_by_the_advertised_sha256(server: _Server, tmp_path: Path) -> None:
    server.plan["images.zip"] = ["corrupt"]
    dest = tmp_path / "images.zip"

    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_file(server.url("images.zip"), dest, **FAST)

    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_an_error(server: _Server, tmp_path: Path) -> None:
    server.redirect = False  # only Content-Length tells the size
    dest = tmp_path / "X_test_update.csv"
    size = len(server.files["X_test_update.csv"])

    with pytest.raises(DownloadError, match="size mismatch"):
        download_file(server.url(dest.name), dest, expected_size=size + 1, **FAST)

    assert not dest.exists()


def test_connection_refused_fails_fast(tmp_path: Path) -> None:
    # A bound socket that does not listen: connecting to it is refused, and no other process
    # can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}/resolve/main"
        out, cache = tmp_path / "raw", tmp_path / "cache"
        start = time.monotonic()
        with pytest.raises(DownloadError) as err:
            # Default retries and back-off: the no-network case must still end quickly.
            fetch_challenge_data(base, out, cache, progress=False)
        elapsed = time.monotonic() - start

    message = str(err.value)
    assert f"{base}/X_train_update.csv" in message
    assert "refused" in message.lower() and "network" in message
    assert elapsed < 5, elapsed
    assert not any(cache.iterdir()) and not any(out.iterdir())


def test_connect_retries_stop_after_the_time_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands for connect timeouts: once the cap is spent no new connection attempt is made.
    monkeypatch.setattr(download, "_CONNECT_GIVE_UP_S", 0.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/images.zip"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="gave up after 1 attempts"):
            download_file(url, tmp_path / "images.zip", progress=False)
    assert time.monotonic() - start < 0.4  # not even the first back-off sleep


def test_invalid_base_url_says_where_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"data\.hf_base_url") as err:
        fetch_challenge_data("huggingface.co/datasets/x", tmp_path / "raw", tmp_path / "cache")
    assert "huggingface.co/datasets/x" in str(err.value)
    assert str(tmp_path / "cache") in str(err.value)


# --------------------------------------------------------------------------------------------
# repack_photos: the downloaded archive into data/raw's images.zip, in one pass
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "images/", "images/images/", "rakuten/data/"])
def test_repack_finds_the_photos_whatever_the_prefix(tmp_path: Path, prefix: str) -> None:
    zip_path = make_zip(
        tmp_path / "images.zip",
        prefix,
        n_train=20,
        n_test=7,
        extra={
            f"__MACOSX/{prefix}image_train/._x.jpg": b"junk",
            f"{prefix}image_train/.DS_Store": b"junk",
            "README.txt": b"hello",
        },
    )
    dest = tmp_path / "raw" / "images.zip"

    counts = repack_photos(zip_path, dest)

    assert counts == {"image_train": 20, "image_test": 7}
    _assert_photos_archive(dest, {"image_train": 20, "image_test": 7})
    assert [p.name for p in dest.parent.iterdir()] == ["images.zip"]  # no temporary file left


def test_repacking_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """Whatever order and compression the download has: sorted, stored, fixed dates."""
    photos = _sample_images("image_train")[:6]
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    with zipfile.ZipFile(first, "w", zipfile.ZIP_DEFLATED) as zf:
        for photo in photos:
            zf.write(photo, f"images/image_train/{photo.name}")
    with zipfile.ZipFile(second, "w", zipfile.ZIP_STORED) as zf:
        for photo in reversed(photos):
            zf.write(photo, f"other/image_train/{photo.name}")
    repack_photos(first, tmp_path / "a.zip")
    repack_photos(second, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


@pytest.mark.parametrize(
    "member",
    ["../evil.jpg", "/tmp/image_train/evil.jpg", "images/image_train/../../../evil.jpg"],
)
def test_repack_refuses_zip_slip(tmp_path: Path, member: str) -> None:
    zip_path = make_zip(
        tmp_path / "images.zip", "images/", n_train=3, n_test=2, extra={member: b"evil"}
    )
    dest = tmp_path / "a" / "raw" / "images.zip"

    with pytest.raises(ArchiveError, match="unsafe"):
        repack_photos(zip_path, dest)

    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.jpg"))


def test_repack_without_image_train_names_the_zip(tmp_path: Path) -> None:
    zip_path = tmp_path / "photos.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(_sample_images("image_test")[0], "photos/image_test/x.jpg")
        zf.write(_sample_images("image_test")[1], "photos/y.jpg")

    with pytest.raises(ArchiveError, match="image_train") as err:
        repack_photos(zip_path, tmp_path / "raw" / "images.zip")

    assert str(zip_path) in str(err.value)


def test_failed_repack_leaves_nothing_half_written(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "images.zip", "images/", n_train=5, n_test=5)
    with zipfile.ZipFile(zip_path) as zf:
        last = zf.infolist()[-1]  # the last test photo: the others are copied first
    raw = bytearray(zip_path.read_bytes())
    data_start = last.header_offset + 30 + len(last.filename.encode()) + len(last.extra)
    raw[data_start + last.file_size // 2] ^= 0xFF
    zip_path.write_bytes(bytes(raw))
    dest = tmp_path / "raw" / "images.zip"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous archive")

    with pytest.raises(ArchiveError, match="corrupt"):
        repack_photos(zip_path, dest)

    assert [p.name for p in dest.parent.iterdir()] == ["images.zip"]  # no temporary file left
    assert dest.read_bytes() == b"the previous archive"


def test_repack_rejects_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    not_zip = tmp_path / "images.zip"
    not_zip.write_bytes(b"<html>Not found</html>")

    with pytest.raises(ArchiveError, match="cannot open"):
        repack_photos(not_zip, tmp_path / "raw" / "images.zip")
