"""The store's tables, as SQLAlchemy 2 models. Every row carries a `uid` made where the row was
created: writing the same row twice (a retry, a replayed spool) leaves one row."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite has no BIGINT autoincrement: plain INTEGER there is the same 64-bit rowid.
Identifier = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Prediction(Base):
    """One product classified by one model: the answer a client got (`served`), or a shadow
    challenger's answer that was only stored."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    user: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    variant: Mapped[str] = mapped_column(String(16))
    served: Mapped[bool] = mapped_column(Boolean)
    product_identifier: Mapped[str | None] = mapped_column(String(256), index=True)
    product_id: Mapped[str | None] = mapped_column(String(256), index=True)
    imageid: Mapped[str | None] = mapped_column(String(256))
    text_length: Mapped[int] = mapped_column(Integer)
    language: Mapped[str] = mapped_column(String(8))
    has_photo: Mapped[bool] = mapped_column(Boolean)
    photo_used: Mapped[bool] = mapped_column(Boolean)
    photo_width: Mapped[int | None] = mapped_column(Integer)
    photo_height: Mapped[int | None] = mapped_column(Integer)
    photo_bytes: Mapped[int | None] = mapped_column(Integer)
    prdtypecode: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)
    top: Mapped[list] = mapped_column(JSON)  # [[prdtypecode, probability], ...] best first
    latency_ms: Mapped[float] = mapped_column(Float)
    # Only with RAKUTEN_API_STORE_TEXTS=true: product texts are the sellers' data.
    designation: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # For drift detection (migration 0002): the text model's log-probabilities, the photo's
    # backbone features through the bundle profile's projection and its mean colour (None
    # without a photo).
    text_embedding: Mapped[list | None] = mapped_column(JSON)
    image_embedding: Mapped[list | None] = mapped_column(JSON)
    photo_colour: Mapped[list | None] = mapped_column(JSON)  # mean R, G, B of the photo


class Feedback(Base):
    """The true product type an administrator assigned to a product."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user: Mapped[str] = mapped_column(String(64))
    product_identifier: Mapped[str | None] = mapped_column(String(256), index=True)
    product_id: Mapped[str | None] = mapped_column(String(256), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    prdtypecode: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)


class DriftReport(Base):
    """One drift check of a window of served predictions against a bundle's profile."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    predictions: Mapped[int] = mapped_column(Integer)
    drifted: Mapped[bool] = mapped_column(Boolean)
    checks: Mapped[list] = mapped_column(JSON)  # one {name, statistic, p_value, drifted, ...} each


TABLES = {"predictions": Prediction, "feedback": Feedback, "drift_reports": DriftReport}
