"""Writing to the store without ever slowing or failing a prediction.

The API hands each row to `StoreWriter.submit`, which only appends it to a queue in memory. A
thread of its own writes the queue to the database in batches. While the database is down the
thread keeps retrying; rows beyond `max_queue` go to a spool on disk (numbered JSON-lines
segments), which is written to the database first once it is back, so memory stays bounded and
nothing is lost. Rows meant to be durable at once (feedback, which the API acknowledges) go
straight to the spool, synced to disk, before the API answers. At shutdown whatever is left is
spooled, and written at the next start. Every row has a unique `uid`: a row written twice
(a retry after a lost answer, a spool replayed after a crash) is stored once.

Over `spool_max_bytes` of spool, new prediction rows are dropped and counted (the one loss a
full disk budget allows); durable rows are refused instead, so the API never acknowledges what
it cannot keep.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from rakuten_classifier.config import logger
from rakuten_classifier.store.database import connect, migrate, redacted
from rakuten_classifier.store.schema import TABLES

SEGMENT_RECORDS = 1000
RETRY_SECONDS = (0.5, 30.0)  # first and longest wait between attempts while the database is down


class SpoolFull(RuntimeError):
    """The spool is at its size limit: a durable row cannot be accepted."""


@dataclass
class Row:
    table: str
    values: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"table": self.table, "values": self.values}, default=_encode)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    raise TypeError(f"cannot store {type(value).__name__}")


def _decode(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: datetime.fromisoformat(value["__datetime__"])
        if isinstance(value, dict) and "__datetime__" in value
        else value
        for key, value in values.items()
    }


class Spool:
    """Rows waiting on disk, oldest segment first. A segment is deleted only once all its rows
    are in the database; a line torn by a crash is skipped with a warning. A segment being
    written to the database is sealed: rows that arrive meanwhile go to a new one (else its
    removal would take them along)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._counts = {path: self._count(path) for path in self.segments()}
        self._sealed: set[Path] = set()

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    @staticmethod
    def _count(path: Path) -> int:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)

    @property
    def rows(self) -> int:
        return sum(self._counts.values())

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self._counts if path.exists())

    def append(self, rows: list[Row], sync: bool = False) -> None:
        """Add rows after the newest ones; SpoolFull if that would pass the size limit."""
        data = "".join(row.to_json() + "\n" for row in rows).encode()
        with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool {self.folder} holds {self.max_bytes} bytes already")
            segments = sorted(self._counts)
            last = segments[-1] if segments else None
            if last is None or self._counts[last] >= SEGMENT_RECORDS or last in self._sealed:
                number = int(last.stem) + 1 if last else 1
                last = self.folder / f"{number:012d}.jsonl"
                self._counts[last] = 0
            with last.open("ab") as handle:
                handle.write(data)
                handle.flush()
                if sync:
                    os.fsync(handle.fileno())
            self._counts[last] += len(rows)

    def oldest(self) -> tuple[Path, list[Row]] | None:
        with self._lock:
            if not self._counts:
                return None
            path = min(self._counts)
            self._sealed.add(path)
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                entry = json.loads(line)
                rows.append(Row(entry["table"], _decode(entry["values"])))
            except (ValueError, KeyError):
                logger.warning("store spool %s line %d is unreadable: skipped", path, number)
        return path, rows

    def remove(self, path: Path) -> None:
        with self._lock:
            self._counts.pop(path, None)
            self._sealed.discard(path)
            path.unlink(missing_ok=True)


@dataclass
class StoreStats:
    """What the writer has done, for the API's metrics."""

    written: collections.Counter = field(default_factory=collections.Counter)
    dropped: int = 0
    up: bool = False


class StoreWriter:
    def __init__(
        self,
        database_url: str,
        spool_dir: Path,
        *,
        max_queue: int = 10_000,
        spool_max_bytes: int = 1 << 30,
        batch_size: int = 500,
    ) -> None:
        self.database_url = database_url
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.stats = StoreStats()
        self._queue: collections.deque[Row] = collections.deque()
        self._in_flight = 0  # rows taken off the queue and not yet committed
        self._wake = threading.Condition()
        self._stopping = False
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None

    # --- the API's side ---------------------------------------------------------------------

    def submit(self, table: str, values: dict[str, Any]) -> None:
        """Queue a row; returns at once whatever the database's state."""
        with self._wake:
            self._queue.append(Row(table, values))
            if len(self._queue) >= self.batch_size or len(self._queue) > self.max_queue:
                self._wake.notify()

    def submit_durable(self, table: str, values: dict[str, Any]) -> None:
        """Write a row to the spool, synced to disk, before returning: it survives a crash.
        Raises SpoolFull when the spool is at its limit."""
        self.spool.append([Row(table, values)], sync=True)
        with self._wake:
            self._wake.notify()

    @property
    def backlog(self) -> int:
        """Rows accepted and not yet in the database."""
        with self._wake:
            return len(self._queue) + self._in_flight + self.spool.rows

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what can be written within `timeout`; spool the rest for the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        leftover = self._take(len(self._queue))
        if leftover:
            self._spill(leftover)
            logger.warning(
                "store: %d rows spooled at shutdown, written at the next start", len(leftover)
            )
        if self._engine is not None:
            self._engine.dispose()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every accepted row is in the database (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline:
            with self._wake:
                self._wake.notify()
            time.sleep(0.05)
        return not self.backlog

    def _take(self, count: int) -> list[Row]:
        with self._wake:
            return [self._queue.popleft() for _ in range(min(count, len(self._queue)))]

    def _spill(self, rows: list[Row]) -> None:
        if not rows:
            return
        try:
            self.spool.append(rows)
        except SpoolFull:
            self.stats.dropped += len(rows)
            logger.error("store: spool full, %d prediction rows dropped", len(rows))

    def _run(self) -> None:
        wait = RETRY_SECONDS[0]
        failing = False  # logged once per outage
        while True:
            with self._wake:
                if not self._queue and not self.spool.rows and not self._stopping:
                    self._wake.wait(timeout=1.0)
                stopping = self._stopping
            if stopping and not self.stats.up:
                return  # the database is down: stop() spools what is queued
            try:
                self._ensure_schema()
                if not self._write_some():
                    if stopping:
                        return
                    continue
                wait, failing = RETRY_SECONDS[0], False
            except SQLAlchemyError as error:
                if self.stats.up or not failing:
                    first_line = str(error).splitlines()[0] if str(error) else ""
                    logger.error(
                        "store: cannot write to the database (%s: %s); retrying",
                        type(error).__name__,
                        first_line[:300],
                    )
                failing = True
                self.stats.up = False
                self._spill(self._take(len(self._queue) - self.max_queue))
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(timeout=wait)
                wait = min(wait * 2, RETRY_SECONDS[1])

    def _ensure_schema(self) -> None:
        if self._engine is None:
            self._engine = connect(self.database_url)
        if not self.stats.up:
            migrate(self._engine)
            self.stats.up = True
            logger.info("store: writing to %s", redacted(self.database_url))

    def _write_some(self) -> bool:
        """Write the oldest spool segment, else a batch of the queue; False if nothing was
        waiting. A batch that fails goes back to the front of the queue."""
        spooled = self.spool.oldest()
        if spooled is not None:
            path, rows = spooled
            self._insert(rows)
            self.spool.remove(path)
            return True
        with self._wake:
            rows = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_flight = len(rows)  # still backlog: flush() must not return mid-insert
        if not rows:
            return False
        try:
            self._insert(rows)
        except SQLAlchemyError:
            with self._wake:
                self._queue.extendleft(reversed(rows))
            raise
        finally:
            with self._wake:
                self._in_flight = 0
        return True

    def _insert(self, rows: Iterable[Row]) -> None:
        by_table: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row in rows:
            by_table[row.table].append(row.values)
        assert self._engine is not None
        dialect = self._engine.dialect.name
        with self._engine.begin() as connection:
            for table, values in by_table.items():
                model = TABLES[table]
                if dialect == "postgresql":
                    statement = postgresql.insert(model).on_conflict_do_nothing(
                        index_elements=["uid"]
                    )
                elif dialect == "sqlite":
                    statement = sqlite.insert(model).on_conflict_do_nothing(index_elements=["uid"])
                else:
                    statement = insert(model)
                connection.execute(statement, values)
                self.stats.written[table] += len(values)
