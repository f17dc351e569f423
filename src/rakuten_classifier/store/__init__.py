"""The prediction and feedback store: every prediction the API makes, and the true product types
administrators report. SQLite by default (a file under data/store, WAL mode), PostgreSQL for a
deployment; the schema evolves by Alembic migrations."""
