"""Reading the store: predictions and feedback as DataFrames, and the predictions joined with
the true product types administrators gave (the online report, drift and retraining read it)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Engine, select

from rakuten_classifier.store.schema import Feedback, Prediction


def read_table(engine: Engine, model: type, since: datetime | None = None) -> pd.DataFrame:
    query = select(model.__table__)
    if since is not None:
        query = query.where(model.created_at >= since)
    with engine.connect() as connection:
        frame = pd.read_sql(query.order_by(model.id), connection)
    if "created_at" in frame:
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def read_predictions(engine: Engine, since: datetime | None = None) -> pd.DataFrame:
    return read_table(engine, Prediction, since)


def read_feedback(engine: Engine, since: datetime | None = None) -> pd.DataFrame:
    return read_table(engine, Feedback, since)


def product_key(frame: pd.DataFrame) -> pd.Series:
    """What names a product across its predictions: its product_id, else its
    product_identifier, else the request (a shadow prediction shares the served one's)."""
    keys = pd.Series(None, index=frame.index, dtype=object)
    for column in ("request_id", "product_identifier", "product_id"):
        if column in frame:
            present = frame[column].notna() & (frame[column].astype(str) != "")
            keys = keys.where(~present, column + ":" + frame[column].astype(str))
    return keys


def _latest(feedback: pd.DataFrame, column: str) -> pd.Series:
    rows = feedback[feedback[column].notna() & (feedback[column].astype(str) != "")]
    return rows.drop_duplicates(column, keep="last").set_index(column)["prdtypecode"]


def with_truth(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Predictions with `product_key` and `truth`: the latest product type an administrator
    gave for them, found by the prediction's request id, else its product_id, else its
    product_identifier; NA without feedback."""
    out = predictions.copy()
    out["product_key"] = product_key(out)
    out["truth"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
    if not len(feedback) or not len(out):
        return out
    ordered = feedback.sort_values("id")
    truth = pd.Series(pd.NA, index=out.index, dtype="Int64")
    for column in ("product_identifier", "product_id", "request_id"):  # the last one wins
        found = out[column].astype(str).map(_latest(ordered, column)).astype("Int64")
        truth = found.fillna(truth)
    out["truth"] = truth
    return out


def latest_served(engine: Engine, model_version: str, limit: int) -> pd.DataFrame:
    """The `limit` latest predictions `model_version` served (drift detection's window)."""
    query = (
        select(Prediction.__table__)
        .where(Prediction.model_version == model_version, Prediction.served.is_(True))
        .order_by(Prediction.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame.iloc[::-1].reset_index(drop=True)
