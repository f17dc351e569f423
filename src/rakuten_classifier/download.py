"""A resumable HTTP client: one file at a time, from a URL to a verified local file.

The import_raw stage (`raw_import`) fetches the full challenge data set with it.

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
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
from tqdm import tqdm

from rakuten_classifier.config import logger
from rakuten_classifier.files import sha256_file

_CHUNK = 1024 * 1024  # for local reads (hashing)
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
        """One answer: learn what the server says of the file, refuse or retry a failure,
        then stream the body into .part (appending to it for a resumed range)."""
        self._learn_advertised([*resp.history, resp], resp.status_code)
        if self._part_was_complete(resp, offset):
            return
        self._check_status(resp)
        offset, mode, body_length = self._write_mode(resp, offset)
        received = self._stream_body(resp, offset, mode)
        self._check_received(offset + received, received, body_length)

    def _learn_advertised(self, chain: list[requests.Response], status: int) -> None:
        """The sha256 and size Hugging Face advertises (X-Linked-*, on the redirect)."""
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

    def _part_was_complete(self, resp: requests.Response, offset: int) -> bool:
        """416 to a resume: the .part already held the whole file, or it is restarted."""
        if resp.status_code != 416 or not offset:
            return False
        _, total = _parse_content_range(resp.headers.get("Content-Range"))
        if (total if total is not None else self.total) == offset:
            return True
        logger.warning("Server refused to resume %s (HTTP 416); restarting", self.url)
        self._reset_part()
        raise _Restart

    def _check_status(self, resp: requests.Response) -> None:
        """Retry what may pass (408, 429, 5xx); fail at once, with advice, on other errors."""
        status = resp.status_code
        reason = f"HTTP {status} {resp.reason or ''}".strip()
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

    def _write_mode(self, resp: requests.Response, offset: int) -> tuple[int, str, int | None]:
        """(offset, file mode, body length): append after `offset` for a matching 206, else
        write from byte 0; a range that does not start where asked restarts the file."""
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        length_header = resp.headers.get("Content-Length", "")
        body_length = int(length_header) if length_header.isdigit() and not encoded else None
        if resp.status_code != 206:
            if offset:
                logger.info("Server ignored the Range request for %s; restarting", self.url)
            self.hasher = hashlib.sha256()
            self.hashed = 0
            if body_length is not None:
                self._learn_total(body_length, "Content-Length")
            return 0, "wb", body_length
        content_range = resp.headers.get("Content-Range")
        start, total = _parse_content_range(content_range)
        if start != offset and offset == 0:
            raise self._error(
                f"unexpected partial answer (Content-Range {content_range!r}) to a request "
                "without Range",
                status=resp.status_code,
            )
        if start != offset:
            logger.warning(
                "Unexpected partial answer for %s (Content-Range %r, wanted byte %d); restarting",
                self.url,
                content_range,
                offset,
            )
            self._reset_part()
            raise _Restart
        # In a 206 Content-Length is the length of the range, not of the file.
        self._learn_total(total, "Content-Range")
        self._sync_hasher(offset)
        return offset, "ab", body_length

    def _stream_body(self, resp: requests.Response, offset: int, mode: str) -> int:
        """Write the body into .part in small chunks, hashing as it goes; returns its size."""
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
        return received

    def _check_received(self, size: int, received: int, body_length: int | None) -> None:
        """A short body is retried (resumed); one longer than the file is an error."""
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
