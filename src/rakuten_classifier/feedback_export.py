"""Exporting the store's feedback as a batch for retraining (`rakuten-classifier feedback-export`,
the retraining DAG): the products that got a true type since the last batch, with the title and
description their prediction stored (the API's store_texts setting) and their photo from the
catalogue's photo folder, in the challenge's layout (feedback_data)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from rakuten_classifier.config import logger
from rakuten_classifier.data import X_COLUMNS, image_filename
from rakuten_classifier.feedback_data import IMAGES, X_CSV, Y_CSV, batch_name, last_exported
from rakuten_classifier.files import atomic_dir
from rakuten_classifier.labels import TARGET
from rakuten_classifier.store.database import connect
from rakuten_classifier.store.queries import read_predictions, read_table, with_truth
from rakuten_classifier.store.schema import Feedback


@dataclass
class Export:
    batch: Path | None  # None: nothing new to export
    feedback: int  # feedback rows since the last batch
    products: int  # products written
    photos: int
    without_text: int  # their prediction kept no text (store_texts off): left out
    without_ids: int  # no numeric productid and imageid: left out

    def lines(self) -> list[str]:
        where = f"batch {self.batch}" if self.batch else "no batch written"
        return [
            f"{self.feedback} new feedback rows; {self.products} products ({self.photos} with "
            f"a photo) in {where}",
            *([f"{self.without_text} left out: their prediction kept no text (set "
               "RAKUTEN_API_STORE_TEXTS=true)"] if self.without_text else []),
            *([f"{self.without_ids} left out: no numeric product and image id"]
              if self.without_ids else []),
        ]  # fmt: skip


def new_feedback_count(database_url: str, feedback_dir: Path) -> int:
    """Feedback rows the store holds beyond the last exported batch."""
    engine = connect(database_url)
    try:
        query = select(Feedback.id).where(Feedback.id > last_exported(feedback_dir))
        with engine.connect() as connection:
            return len(connection.execute(query).all())
    finally:
        engine.dispose()


def _numeric(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype("Int64")


def export_feedback(database_url: str, feedback_dir: Path, image_dir: Path) -> Export:
    """Write the products with feedback newer than the last batch as a new batch folder under
    `feedback_dir` (all or nothing); the batch's name carries the last feedback id."""
    since_id = last_exported(feedback_dir)
    engine = connect(database_url)
    try:
        feedback = read_table(engine, Feedback)
        predictions = read_predictions(engine)
    finally:
        engine.dispose()
    new = feedback[feedback["id"] > since_id]
    if not len(new):
        return Export(None, 0, 0, 0, 0, 0)
    served = predictions[predictions["served"].astype(bool)]
    labelled = with_truth(served, new).dropna(subset=["truth"])
    labelled = labelled.drop_duplicates("product_key", keep="last")
    has_text = labelled["designation"].notna() & (labelled["designation"].astype(str) != "")
    ids = pd.DataFrame({"productid": _numeric(labelled["product_id"]),
                        "imageid": _numeric(labelled["imageid"])})  # fmt: skip
    has_ids = ids.notna().all(axis=1)
    kept = labelled[has_text & has_ids]
    products = pd.DataFrame(
        {
            "designation": kept["designation"].astype(str),
            "description": kept["description"].fillna("").astype(str),
            "productid": ids.loc[kept.index, "productid"].astype("int64"),
            "imageid": ids.loc[kept.index, "imageid"].astype("int64"),
            TARGET: kept["truth"].astype("int64"),
        }
    )
    products = products.drop_duplicates("productid", keep="last").reset_index(drop=True)
    summary = Export(None, len(new), len(products), 0, int((~has_text).sum()),
                     int((has_text & ~has_ids).sum()))  # fmt: skip
    if not len(products):
        logger.warning("feedback export: none of the %d new feedback rows is exportable", len(new))
        return summary
    batch = Path(feedback_dir) / batch_name(int(new["id"].max()))
    with atomic_dir(batch) as tmp:
        products[list(X_COLUMNS)].to_csv(tmp / X_CSV)
        products[[TARGET]].to_csv(tmp / Y_CSV)
        (tmp / IMAGES).mkdir()
        for row in products.itertuples():
            name = image_filename(row.imageid, row.productid)
            if (Path(image_dir) / name).is_file():
                shutil.copyfile(Path(image_dir) / name, tmp / IMAGES / name)
                summary.photos += 1
    summary.batch = batch
    return summary
