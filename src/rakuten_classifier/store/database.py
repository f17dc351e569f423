"""Connecting to the store and bringing its schema up to date (Alembic, migrations shipped in
the package)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from rakuten_classifier.config import logger

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The embedded default, relative to the project folder; a deployment sets a PostgreSQL URL
# (RAKUTEN_API_DATABASE_URL for the API, --database-url or the same variable for the commands).
DEFAULT_URL = "sqlite:///data/store/predictions.db"
DATABASE_URL_VARIABLE = "RAKUTEN_API_DATABASE_URL"
# In a container the URL (it holds a password) is a file named after the variable, in lower
# case, in this folder: /run/secrets with compose secrets or a Kubernetes Secret volume.
SECRETS_DIR_VARIABLE = "RAKUTEN_SECRETS_DIR"


def configured_url(given: str | None = None) -> str:
    """The store's URL: `given`, else RAKUTEN_API_DATABASE_URL, else its secret file, else the
    embedded SQLite default."""
    if given or os.environ.get(DATABASE_URL_VARIABLE):
        return given or os.environ[DATABASE_URL_VARIABLE]
    secrets = os.environ.get(SECRETS_DIR_VARIABLE)
    secret = Path(secrets) / DATABASE_URL_VARIABLE.lower() if secrets else None
    return secret.read_text().strip() if secret and secret.is_file() else DEFAULT_URL


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def connect(url: str) -> Engine:
    """An engine for `url`. SQLite: the folder is created, WAL mode (readers never block the
    writer), a busy timeout instead of 'database is locked' errors."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # Short connect timeout: a database that is down is noticed in seconds, not minutes.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def migrate(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` (idempotent: an up-to-date schema is left as is)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    logger.info("store schema up to date at %s", redacted(str(engine.url)))
