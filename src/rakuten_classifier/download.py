"""Robust download of the full Rakuten France challenge data set (Hugging Face mirror).

The DVC stage ``import_raw`` calls :func:`fetch_challenge_data`. DVC deletes a stage's outputs
before running it, so finished and partial downloads live in a separate ``cache_dir``: an
interrupted 2.5 GB download resumes where it stopped and a finished one is not fetched again.

Guarantees:
- a partial download never looks finished: bytes go to ``<name>.part``, which is renamed only
  after its size and sha256 have been checked (whenever they are known);
- transient failures (5xx, 408, 429, resets, timeouts, cut bodies) are retried with
  exponential back-off, keeping what was received and resuming with an HTTP Range request;
- a machine without network fails within seconds with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from tqdm import tqdm

from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_dir, atomic_path, sha256_file

CHALLENGE_FILES: tuple[str, ...] = (
    "X_train_update.csv",
    "Y_train_CVw08PX.csv",
    "X_test_update.csv",
    "images.zip",
)
SPLITS: tuple[str, ...] = ("image_train", "image_test")

_CHUNK = 1024 * 1024  # for local reads (hashing, extraction)
# When a connection is cut, urllib3 drops the read buffer it was filling: small network chunks
# keep almost everything that was received for the resume.
_NET_CHUNK = 64 * 1024
_MAX_DELAY = 60.0  # longest single back-off sleep, Retry-After included
# With no network at all, retrying a refused connection or a failed DNS lookup many times only
# delays the error: a couple of quick retries cover a blip, then the user gets the message.
_CONNECT_RETRIES = 2
_CONNECT_BACKOFF = 0.5
# ...and when connecting itself times out (packets silently dropped), no new connection attempt
# starts after this many seconds, so the error comes within ~30 s with a 10 s connect timeout.
_CONNECT_GIVE_UP_S = 20.0
_USER_AGENT = "rakuten-classifier (python-requests)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_JUNK_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names the URL, the cause and a remedy."""

    def __init__(
        self,
        url: str,
        problem: str,
        *,
        status: int | None = None,
        dest: Path | None = None,
        hint: str | None = None,
        manual: str | None = None,
    ) -> None:
        self.url = url
        self.problem = problem
        self.status = status
        self.dest = dest
        manual = manual or (
            f"download the file manually and save it as {dest}"
            if dest
            else "download the file manually into the download cache directory"
        )
        advice = hint or (
            "Check the network connection and proxy settings (HTTPS_PROXY), and the base URL "
            "in params.yaml (data.hf_base_url)"
        )
        super().__init__(
            f"Could not download {url}: {problem}. {advice}; or {manual}, then run again."
        )


class ArchiveError(RuntimeError):
    """The images archive is unusable (not a zip, unsafe member paths, wrong layout)."""


# --------------------------------------------------------------------------------------------
# Downloading one file
# --------------------------------------------------------------------------------------------


class _Retry(Exception):
    """Internal: an attempt failed in a way worth retrying."""

    def __init__(
        self,
        problem: str,
        *,
        status: int | None = None,
        connect: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.connect = connect  # no connection could be opened (refused, DNS, connect timeout)
        self.retry_after = retry_after


class _Restart(Exception):
    """Internal: the partial file is unusable; start again from byte 0 at once."""


class _ChecksumMismatch(Exception):
    """Internal: the finished file does not match the expected sha256."""


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.strip().removeprefix("W/").strip('"').lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:") :]
    if not _SHA256_RE.match(digest):
        raise ValueError(f"not a sha256 hex digest: {value!r}")
    return digest


def _describe_exception(exc: BaseException) -> tuple[str, bool]:
    """Return (short description, True when no connection could be opened at all)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"connection timed out ({exc})", True
    # requests wraps urllib3 which wraps the OSError: walk the chain to find the root cause.
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, socket.gaierror):
            return f"DNS lookup failed ({cur})", True
        if isinstance(cur, ConnectionRefusedError) or (
            isinstance(cur, OSError)
            and cur.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)
        ):
            return f"connection failed ({cur})", True
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None)])
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    if isinstance(exc, requests.exceptions.Timeout):
        return f"network timeout ({exc})", False
    return f"network error ({type(exc).__name__}: {exc})", False


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes a-b/total`` or ``bytes */total`` -> (start, total); unknown parts are None."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _header(responses: Iterable[requests.Response], name: str) -> str | None:
    """Last value of a header over the redirect chain (HF puts X-Linked-* on the 302)."""
    value = None
    for r in responses:
        if name in r.headers:
            value = r.headers[name]
    return value


@dataclass
class _Download:
    url: str
    dest: Path
    part: Path
    session: requests.Session
    expected_sha256: str | None
    expected_size: int | None
    timeout: float | tuple[float, float]
    progress: bool

    def __post_init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.hashed = 0  # bytes of .part fed to self.hasher
        self.total: int | None = self.expected_size
        self.remote_sha256: str | None = None
        self.got_response = False  # once the server answered, connect errors are transient
        self.bar: tqdm | None = None

    # ---- helpers ---------------------------------------------------------------------------

    def _error(self, problem: str, *, status: int | None = None, hint: str | None = None):
        return DownloadError(self.url, problem, status=status, dest=self.dest, hint=hint)

    def _reset_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.hashed = 0

    def _sync_hasher(self, offset: int) -> None:
        # A .part left by an earlier run must be hashed before new bytes are appended.
        if self.hashed == offset:
            return
        self.hasher = hashlib.sha256()
        self.hashed = 0
        with self.part.open("rb") as f:
            while chunk := f.read(_CHUNK):
                self.hasher.update(chunk)
                self.hashed += len(chunk)

    def _update_bar(self, offset: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=self.total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self.dest.name,
                disable=None if self.progress else True,  # None: off when not a TTY
                leave=False,
            )
        else:
            self.bar.total = self.total
            self.bar.n = offset
            self.bar.refresh()

    def _learn_total(self, total: int | None, source: str) -> None:
        if total is None:
            return
        if self.total is None:
            self.total = total
        elif total != self.total:
            raise self._error(
                f"size mismatch: expected {self.total} bytes but {source} says {total}",
                hint="The file may have changed upstream: check the expected size/checksum "
                "passed by the caller and the base URL in params.yaml (data.hf_base_url)",
            )

    # ---- one HTTP attempt ------------------------------------------------------------------

    def attempt(self) -> None:
        """Fetch the missing bytes into .part; returns once .part holds the whole body."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        if self.total is not None and offset > self.total:
            logger.warning("%s is larger than the file (%d bytes); restarting", self.part, offset)
            self._reset_part()
            offset = 0
        if self.total is not None and offset == self.total and offset > 0:
            return  # a previous run got every byte but stopped before the rename
        headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except requests.exceptions.InvalidURL as exc:
            raise self._error(f"invalid URL ({exc})") from exc
        except requests.RequestException as exc:
            problem, connect = _describe_exception(exc)
            raise _Retry(problem, connect=connect and not self.got_response) from exc
        self.got_response = True
        with resp:
            self._handle(resp, offset)

    def _handle(self, resp: requests.Response, offset: int) -> None:
        status = resp.status_code
        reason = f"HTTP {status} {resp.reason or ''}".strip()
        chain = [*resp.history, resp]

        advertised = _header(chain, "X-Linked-ETag")
        if advertised:
            # Not a sha256 (e.g. a git blob id): nothing to check against.
            with contextlib.suppress(ValueError):
                self.remote_sha256 = _normalise_sha256(advertised)
        if (
            self.expected_sha256
            and self.remote_sha256
            and self.expected_sha256 != self.remote_sha256
        ):
            raise self._error(
                f"the server advertises sha256 {self.remote_sha256} but {self.expected_sha256} "
                "is expected",
                status=status,
                hint="The data set may have changed upstream: check the expected checksum and "
                "the base URL in params.yaml (data.hf_base_url)",
            )
        linked_size = _header(chain, "X-Linked-Size")
        if linked_size and linked_size.strip().isdigit():
            self._learn_total(int(linked_size), "the X-Linked-Size header")

        if status == 416 and offset:
            _, total = _parse_content_range(resp.headers.get("Content-Range"))
            total = total if total is not None else self.total
            if total == offset:
                return  # the .part was already complete
            logger.warning("Server refused to resume %s (HTTP 416); restarting", self.url)
            self._reset_part()
            raise _Restart
        if status in (408, 429) or status >= 500:
            raise _Retry(
                reason,
                status=status,
                retry_after=_parse_retry_after(resp.headers.get("Retry-After")),
            )
        if status >= 400:
            hint = None
            if status == 404:
                hint = (
                    "The file does not exist at that address: check the base URL in params.yaml "
                    "(data.hf_base_url) and the file name"
                )
            elif status in (401, 403):
                hint = (
                    "Access was refused: check the base URL in params.yaml (data.hf_base_url), "
                    "that the data set is public, and any proxy in between"
                )
            raise self._error(reason, status=status, hint=hint)
        if status not in (200, 206):
            raise self._error(f"unexpected answer {reason}", status=status)

        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        length_header = resp.headers.get("Content-Length", "")
        body_length = int(length_header) if length_header.isdigit() and not encoded else None

        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset and offset == 0:
                content_range = resp.headers.get("Content-Range")
                raise self._error(
                    f"unexpected partial answer (Content-Range {content_range!r}) to a request "
                    "without Range",
                    status=status,
                )
            if start != offset:
                logger.warning(
                    "Unexpected partial answer for %s (Content-Range %r, wanted byte %d); "
                    "restarting",
                    self.url,
                    resp.headers.get("Content-Range"),
                    offset,
                )
                self._reset_part()
                raise _Restart
            # In a 206 Content-Length is the length of the range, not of the file.
            self._learn_total(total, "Content-Range")
            mode = "ab"
            self._sync_hasher(offset)
        else:
            if offset:
                logger.info("Server ignored the Range request for %s; restarting", self.url)
            offset = 0
            self.hasher = hashlib.sha256()
            self.hashed = 0
            if body_length is not None:
                self._learn_total(body_length, "Content-Length")
            mode = "wb"

        self._update_bar(offset)
        received = 0
        try:
            with self.part.open(mode) as f:
                try:
                    for chunk in resp.iter_content(chunk_size=_NET_CHUNK):
                        f.write(chunk)
                        self.hasher.update(chunk)
                        self.hashed += len(chunk)
                        received += len(chunk)
                        if self.bar is not None:
                            self.bar.update(len(chunk))
                # requests wraps network errors, but a bare socket error must not be taken
                # for a failed write to disk below.
                except (requests.RequestException, ConnectionError, TimeoutError) as exc:
                    problem, _ = _describe_exception(exc)
                    raise _Retry(
                        f"connection lost after {offset + received} bytes ({problem})"
                    ) from exc
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise self._error(
                f"cannot write {self.part} ({exc})",
                hint="Check the free disk space and permissions of the download cache directory",
            ) from exc

        size = offset + received
        if body_length is not None and received < body_length:
            raise _Retry(f"incomplete body: got {received} of {body_length} bytes")
        if self.total is not None and size < self.total:
            raise _Retry(f"incomplete body: have {size} of {self.total} bytes")
        if self.total is not None and size > self.total:
            self._reset_part()
            raise self._error(
                f"received {size} bytes but the file has {self.total}; the partial file was deleted"
            )

    # ---- verification ----------------------------------------------------------------------

    def verify_part(self) -> str:
        size = self.part.stat().st_size
        if self.total is not None and size != self.total:
            self._reset_part()
            raise self._error(f"size mismatch: got {size} bytes, expected {self.total}")
        self._sync_hasher(size)
        digest = self.hasher.hexdigest()
        wanted = self.expected_sha256 or self.remote_sha256
        if wanted and digest != wanted:
            self._reset_part()
            raise _ChecksumMismatch(f"sha256 mismatch: got {digest}, expected {wanted}")
        return digest


def _existing_is_valid(dest: Path, expected_sha256: str | None, expected_size: int | None) -> bool:
    # Only download_file creates dest, and only after verification, so without expectations an
    # existing file is trusted: this also lets a finished cache work offline.
    if expected_size is not None and dest.stat().st_size != expected_size:
        logger.warning("%s has the wrong size; downloading it again", dest)
        return False
    if expected_sha256 is not None and sha256_file(dest) != expected_sha256:
        logger.warning("%s has the wrong sha256; downloading it again", dest)
        return False
    return True


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float | tuple[float, float] = (10, 60),
    session: requests.Session | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` resumably and verify it; return ``dest``.

    Bytes are streamed to ``dest + ".part"``, resumed with a Range request after an
    interruption (in this call or an earlier run), and renamed to ``dest`` only once the size
    (expected_size, X-Linked-Size, Content-Range or Content-Length) and the sha256
    (expected_sha256, else the X-Linked-ETag header) match, when known. Transient failures are
    retried up to ``retries`` times with back-off ``backoff * 2**n`` seconds (attempts that
    received bytes do not use up the budget); other 4xx answers fail at once. If no connection
    can be opened at all, only a couple of quick retries are made. If ``dest`` already exists
    and matches the expectations, nothing is downloaded.

    Raises DownloadError naming the URL, the cause and a remedy.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    expected_sha256 = _normalise_sha256(expected_sha256)
    if dest.is_file():
        if _existing_is_valid(dest, expected_sha256, expected_size):
            logger.info("Already downloaded: %s", dest)
            part.unlink(missing_ok=True)
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)

    own_session = session is None
    sess = session if session is not None else requests.Session()
    job = _Download(
        url=url,
        dest=dest,
        part=part,
        session=sess,
        expected_sha256=expected_sha256,
        expected_size=expected_size,
        timeout=timeout,
        progress=progress,
    )
    resumed = part.exists() and part.stat().st_size > 0
    if resumed:
        logger.info("Resuming %s from byte %d", url, part.stat().st_size)
    else:
        logger.info("Downloading %s", url)
    failures = 0
    started = time.monotonic()
    try:
        while True:
            size_before = part.stat().st_size if part.exists() else 0
            try:
                job.attempt()
                digest = job.verify_part()
                break
            except _Restart:
                continue
            except _ChecksumMismatch as exc:
                if resumed:
                    # The kept prefix may come from an older version of the file: start over once.
                    logger.warning("%s after resuming %s; downloading it afresh", exc, url)
                    resumed = False
                    continue
                raise job._error(
                    f"{exc}; the partial file was deleted",
                    hint="Run again to download it afresh; if the file changed upstream, update "
                    "the expected checksum, and check the base URL in params.yaml "
                    "(data.hf_base_url)",
                ) from None
            except _Retry as exc:
                # An attempt that grew the .part does not use up the retry budget, so a flaky
                # link still finishes a large file (each such attempt shortens what is left).
                if part.exists() and part.stat().st_size > size_before:
                    failures = 0
                failures += 1
                if exc.connect:
                    limit = min(retries, _CONNECT_RETRIES)
                    delay = min(backoff, _CONNECT_BACKOFF) * 2 ** (failures - 1)
                else:
                    limit = retries
                    delay = backoff * 2 ** (failures - 1)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                delay = min(delay, _MAX_DELAY)
                if exc.connect and time.monotonic() - started >= _CONNECT_GIVE_UP_S:
                    limit = failures - 1  # connecting keeps timing out: stop here
                if failures > limit:
                    raise job._error(
                        f"{exc.problem} (gave up after {failures} attempts)", status=exc.status
                    ) from exc
                logger.warning(
                    "Download of %s failed: %s; retry %d/%d in %.2f s",
                    url,
                    exc.problem,
                    failures,
                    limit,
                    delay,
                )
                time.sleep(delay)
    finally:
        if job.bar is not None:
            job.bar.close()
        if own_session:
            sess.close()
    os.replace(part, dest)
    logger.info("Saved %s (%d bytes, sha256 %s)", dest, dest.stat().st_size, digest)
    return dest


# --------------------------------------------------------------------------------------------
# Extracting the images archive
# --------------------------------------------------------------------------------------------


def _unsafe_member(name: str) -> bool:
    # Zip slip: absolute paths, Windows drive letters and ".." could escape the output folder.
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return True
    return ".." in normalised.split("/")


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p in _JUNK_PARTS for p in parts) or parts[-1].startswith("._")


def _select_images(zf: zipfile.ZipFile, zip_path: Path) -> dict[str, list[zipfile.ZipInfo]]:
    """Pick the JPEGs directly under ``<prefix>/image_train/`` and ``<prefix>/image_test/``."""
    unsafe = [info.filename for info in zf.infolist() if _unsafe_member(info.filename)]
    if unsafe:
        raise ArchiveError(
            f"{zip_path} contains unsafe member paths (absolute or with '..'), refusing to "
            f"extract it: {unsafe[:5]}. Delete it and download it again from a trusted source."
        )
    by_prefix: dict[tuple[str, ...], dict[str, list[zipfile.ZipInfo]]] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if len(parts) < 2 or _is_junk(parts) or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            continue
        split = parts[-2]
        if split in SPLITS:
            by_prefix.setdefault(parts[:-2], {s: [] for s in SPLITS})[split].append(info)
    if not any(groups["image_train"] for groups in by_prefix.values()):
        raise ArchiveError(
            f"{zip_path} has no JPEG under an image_train/ folder, so it is not the challenge "
            "images archive. Check the base URL in params.yaml (data.hf_base_url), or delete "
            f"{zip_path} so that it is downloaded again."
        )
    # Normally there is exactly one prefix ("", "images/", "images/images/"...); should there be
    # several, the one holding the most training photos is the data set.
    prefix = max(by_prefix, key=lambda k: len(by_prefix[k]["image_train"]))
    if len(by_prefix) > 1:
        others = sorted("/".join(k) or "<root>" for k in by_prefix if k != prefix)
        logger.warning(
            "%s: using images under %r, ignoring other folders %s",
            zip_path,
            "/".join(prefix) or "<root>",
            others,
        )
    chosen = by_prefix[prefix]
    if not chosen["image_test"]:
        logger.warning("%s has no image_test/ photos", zip_path)
    return chosen


def _extract_members(
    zf: zipfile.ZipFile,
    zip_path: Path,
    chosen: dict[str, list[zipfile.ZipInfo]],
    dest: Path,
    progress: bool,
) -> dict[str, int]:
    total = sum(len(members) for members in chosen.values())
    counts: dict[str, int] = {}
    with tqdm(
        total=total,
        unit="img",
        desc=f"extract {zip_path.name}",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for split, members in chosen.items():
            split_dir = dest / split
            split_dir.mkdir()
            names: set[str] = set()
            for info in members:
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                bar.update(1)
                if name in names:
                    logger.warning("%s: duplicate %s/%s skipped", zip_path, split, name)
                    continue
                names.add(name)
                # Stream: members are copied in chunks, never read whole into memory;
                # ZipExtFile checks each member's CRC when it reaches its end.
                with zf.open(info) as src, (split_dir / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            counts[split] = len(names)
    return counts


def extract_images(
    zip_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, int]:
    """Extract the challenge photos into ``out_dir/images/image_train`` and ``.../image_test``.

    The folder prefix inside the archive does not matter (it is found from the ``image_train/``
    folder); junk such as ``__MACOSX/`` is skipped and archives with unsafe member paths are
    refused. Members are streamed into a temporary folder next to ``out_dir/images`` that is
    renamed into place only when everything succeeded, replacing any previous ``images/``.

    Returns the number of photos per split: ``{"image_train": n, "image_test": m}``.
    Raises ArchiveError when the archive is unusable.
    """
    zip_path = Path(zip_path)
    out_dir = Path(out_dir)
    target = out_dir / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(
            f"cannot open {zip_path} as a zip archive ({exc}); delete it so that it is "
            "downloaded again"
        ) from exc
    with zf:
        chosen = _select_images(zf, zip_path)
        try:
            # The photos appear all at once, replacing any previous images/, or not at all.
            with atomic_dir(target) as tmp:
                counts = _extract_members(zf, zip_path, chosen, tmp, progress)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise ArchiveError(
                f"{zip_path} is corrupt ({exc}); delete it so that it is downloaded again"
            ) from exc
    logger.info("Extracted %s into %s: %s", zip_path, target, counts)
    return counts


# --------------------------------------------------------------------------------------------
# The whole challenge data set
# --------------------------------------------------------------------------------------------


def _join_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + quote(name)


def fetch_challenge_data(
    base_url: str,
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    files: Iterable[str] = CHALLENGE_FILES,
    checksums: Mapping[str, str] | None = None,
    **download_kwargs: Any,
) -> Path:
    """Download the challenge files into ``cache_dir`` and lay them out in ``out_dir``.

    Every file of ``files`` is fetched from ``base_url`` + name with :func:`download_file`
    (resumable, finished files reused, checked against ``checksums[name]`` when given); CSVs are
    copied to ``out_dir`` and ``*.zip`` archives are extracted to ``out_dir/images/image_train``
    and ``out_dir/images/image_test``. ``download_kwargs`` go to :func:`download_file`
    (retries, backoff, timeout, session, progress). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir)
    files = tuple(files)
    if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
        raise DownloadError(
            str(base_url),
            "not an http(s) URL",
            hint="Set the base URL in params.yaml (data.hf_base_url)",
            manual=f"download {', '.join(files)} manually into {cache_dir}",
        )
    checksums = dict(checksums or {})
    unknown = sorted(set(checksums) - set(files))
    if unknown:
        logger.warning("Checksums given for files that are not fetched: %s", unknown)
    cache_abs, out_abs = cache_dir.resolve(), out_dir.resolve()
    if cache_abs == out_abs or out_abs in cache_abs.parents:
        logger.warning(
            "Download cache %s is inside the output folder %s: DVC deletes it before each run, "
            "so interrupted downloads cannot resume",
            cache_dir,
            out_dir,
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Download everything first: a network failure then leaves out_dir untouched.
    local = {
        name: download_file(
            _join_url(base_url, name),
            cache_dir / name,
            expected_sha256=checksums.get(name),
            **download_kwargs,
        )
        for name in files
    }
    for name, path in local.items():
        if name.lower().endswith(".zip"):
            extract_images(path, out_dir, progress=download_kwargs.get("progress", True))
        else:
            # Copy (not hardlink): DVC may make its outputs read-only or move them into its
            # cache, and the download cache must stay intact for the next run.
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(path, tmp)
    logger.info("Challenge data ready in %s", out_dir)
    return out_dir
