"""The prediction and feedback store: migrations, the writer that never blocks, the spool that
keeps rows while the database is down, and rows written once even when written twice. On
SQLite (the embedded default) and on a real PostgreSQL server started by the tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from rakuten_classifier.store.database import connect, migrate
from rakuten_classifier.store.queries import read_feedback, read_predictions, with_truth
from rakuten_classifier.store.writer import Row, Spool, SpoolFull, StoreWriter


def prediction(product_id: str, code: int = 10, variant: str = "champion") -> dict:
    return {
        "uid": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "request_id": uuid.uuid4().hex,
        "user": "alice",
        "model_version": "abc123",
        "variant": variant,
        "served": True,
        "product_identifier": None,
        "product_id": product_id,
        "imageid": None,
        "text_length": 20,
        "language": "fr",
        "has_photo": False,
        "photo_used": False,
        "photo_width": None,
        "photo_height": None,
        "photo_bytes": None,
        "prdtypecode": code,
        "probability": 0.9,
        "top": [[code, 0.9], [20, 0.05]],
        "latency_ms": 12.5,
        "designation": None,
        "description": None,
    }


def feedback(product_id: str, code: int) -> dict:
    return {
        "uid": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "user": "reviewer",
        "product_identifier": None,
        "product_id": product_id,
        "request_id": None,
        "prdtypecode": code,
        "comment": None,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'predictions.db'}"
    server = request.getfixturevalue("postgres")
    server.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return server.url


def test_migrations_create_the_tables_and_are_idempotent(database_url: str) -> None:
    engine = connect(database_url)
    migrate(engine)
    migrate(engine)  # up to date: nothing to do
    tables = set(inspect(engine).get_table_names())
    assert {"predictions", "feedback", "alembic_version"} <= tables
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar()
    engine.dispose()


def test_rows_are_written_once_even_when_written_twice(database_url: str, tmp_path: Path) -> None:
    writer = StoreWriter(database_url, tmp_path / "spool", batch_size=10)
    writer.start()
    rows = [prediction(f"p{n}") for n in range(25)]
    for row in rows:
        writer.submit("predictions", row)
    writer.submit("predictions", rows[0])  # a retry of a row already queued
    writer.submit_durable("feedback", feedback("p1", 40))
    assert writer.flush(60)
    writer.stop()
    engine = connect(database_url)
    stored = read_predictions(engine)
    assert sorted(stored["product_id"]) == sorted(row["product_id"] for row in rows)
    assert stored.loc[stored["product_id"] == "p3", "top"].iloc[0] == [[10, 0.9], [20, 0.05]]
    joined = with_truth(stored, read_feedback(engine))
    assert joined.set_index("product_id").at["p1", "truth"] == 40
    assert joined["truth"].notna().sum() == 1
    engine.dispose()


def test_a_stopped_writer_spools_what_it_could_not_write(tmp_path: Path) -> None:
    """The database unreachable from the start: rows accepted, spooled at shutdown, written
    by the next writer once the database is there."""
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:9/none"  # port 9: nothing listens
    writer = StoreWriter(unreachable, tmp_path / "spool", max_queue=5)
    writer.start()
    rows = [prediction(f"q{n}") for n in range(12)]
    for row in rows:
        writer.submit("predictions", row)
    writer.stop(timeout=2)
    assert writer.spool.rows == 12
    database = f"sqlite:///{tmp_path / 'later.db'}"
    later = StoreWriter(database, tmp_path / "spool")
    assert later.backlog == 12
    later.start()
    assert later.flush(60)
    later.stop()
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    engine = connect(database)
    assert sorted(read_predictions(engine)["product_id"]) == sorted(r["product_id"] for r in rows)
    engine.dispose()


def test_the_spool_is_bounded_and_skips_a_torn_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=2_000)
    row = {"table": "feedback", "values": feedback("x", 10)}
    spool.append([Row("feedback", feedback("a", 10))], sync=True)
    with pytest.raises(SpoolFull):
        spool.append([Row("feedback", feedback(f"b{n}", 10)) for n in range(20)])
    segment = spool.segments()[0]
    with segment.open("a") as handle:
        handle.write(json.dumps(row, default=str)[:40])  # a crash in the middle of a line
    path, rows = spool.oldest()
    assert path == segment and len(rows) == 1 and rows[0].values["product_id"] == "a"


def test_rows_spooled_while_a_segment_is_written_are_kept(tmp_path: Path) -> None:
    """A segment being written to the database is sealed: a row that arrives meanwhile goes
    to a new segment, and the written one's removal does not take it along."""
    spool = Spool(tmp_path / "spool", max_bytes=1_000_000)
    spool.append([Row("feedback", feedback("first", 10))], sync=True)
    path, _ = spool.oldest()  # the writer reads the segment...
    spool.append([Row("feedback", feedback("during", 20))], sync=True)  # ...feedback arrives
    spool.remove(path)  # ...and the segment is written
    assert spool.rows == 1
    later = spool.oldest()
    assert later is not None and later[1][0].values["product_id"] == "during"


def test_every_durable_row_reaches_the_database_under_concurrent_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    writer = StoreWriter(url, tmp_path / "spool")
    writer.start()
    threads = [
        threading.Thread(
            target=lambda n=n: [
                writer.submit_durable("feedback", feedback(f"p{n}-{i}", 10)) for i in range(50)
            ]
        )
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(30)
    writer.stop()
    engine = connect(url)
    try:
        assert len(read_feedback(engine)) == 200
    finally:
        engine.dispose()


class SlowWriter(StoreWriter):
    """A database that takes its time to commit a batch."""

    def _insert(self, rows: Iterable[Row]) -> None:
        time.sleep(0.5)
        super()._insert(rows)


def test_flush_waits_for_the_batch_being_written(tmp_path: Path) -> None:
    """Rows taken off the queue are still backlog until committed: flush() returning True
    means a reader sees them (the A/B test once read an empty table here)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    writer = SlowWriter(url, tmp_path / "spool", batch_size=5)
    writer.start()
    for number in range(5):
        writer.submit("predictions", prediction(f"s{number}"))
    assert writer.flush(30)
    engine = connect(url)
    try:
        assert len(read_predictions(engine)) == 5
    finally:
        engine.dispose()
        writer.stop()
