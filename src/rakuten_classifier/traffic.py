"""Replaying real products as traffic against a running API: each product is sent to
POST /predict, and for a share of them the true product type goes to POST /feedback, as the
catalogue's administrators would send it. For demonstrations, tests and load checks on
loopback; the products are real rows of the challenge data."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import requests
from tqdm import tqdm

from rakuten_classifier.data import image_paths, load_split, read_labels, read_products
from rakuten_classifier.preprocess import read_photo


@dataclass
class ReplaySummary:
    sent: int = 0
    answered: Counter = field(default_factory=Counter)  # by variant
    errors: Counter = field(default_factory=Counter)  # by status
    feedback: int = 0

    def lines(self) -> list[str]:
        return [
            f"{self.sent} products sent: "
            + ", ".join(
                f"{count} answered by the {v}" for v, count in sorted(self.answered.items())
            ),
            f"{sum(self.errors.values())} errors"
            + (f" ({dict(self.errors)})" if self.errors else ""),
            f"{self.feedback} feedback given",
        ]


def gets_feedback(product_id: object, share: float) -> bool:
    """A stable choice of the products an administrator reviews."""
    digest = hashlib.sha256(f"feedback:{product_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < share


RETRIES = 300  # a 429 or 503 is retried after its Retry-After, this many times at most


def post(session: requests.Session, url: str, **kwargs: object) -> requests.Response:
    """POST, waiting out the API's 429 and 503 answers as a polite client does."""
    for _ in range(RETRIES):
        response = session.post(url, timeout=120, **kwargs)
        if response.status_code not in (429, 503):
            return response
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 30.0))
    return response


def login(url: str, user: str, password: str) -> dict[str, str]:
    response = requests.post(
        f"{url}/token", data={"username": user, "password": password}, timeout=60
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def load_products(
    x_csv: Path, image_dir: Path, y_csv: Path | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Products of a CSV in the challenge layout (with their true types from `y_csv`)."""
    products = read_products(x_csv)
    if y_csv is not None:
        products["prdtypecode"] = read_labels(y_csv, products)
    products = products.head(limit) if limit else products
    products["image_path"] = image_paths(products, image_dir)
    return products


def load_split_products(split: str, processed_dir: Path, limit: int | None = None) -> pd.DataFrame:
    """The labelled products of one of the pipeline's splits (data/processed): `test` holds
    products that the evaluated models never trained on."""
    products = load_split(split, processed_dir)
    return products.head(limit) if limit else products


def replay(
    url: str,
    headers: dict[str, str],
    products: pd.DataFrame,
    feedback_share: float = 0.0,
    clients: int = 4,
) -> ReplaySummary:
    """Send every product (and feedback for a share of the labelled ones) with `clients`
    concurrent connections; returns what happened."""
    summary = ReplaySummary()
    lock = threading.Lock()  # the clients update one summary
    session = requests.Session()
    session.headers.update(headers)

    def send(item: tuple[object, pd.Series]) -> None:
        index, product = item
        form = {
            "designation": product["designation"],
            "description": product["description"],
            "product_id": str(product["productid"]),
            "product_identifier": str(index),
            "imageid": str(product["imageid"]),
        }
        # A photo file, or a member of data/raw/images.zip (a processed split's paths).
        photo = read_photo(product["image_path"], missing_ok=True)
        files = {"image": ("photo.jpg", photo, "image/jpeg")} if photo else None
        response = post(session, f"{url}/predict", data=form, files=files)
        with lock:
            summary.sent += 1
            if response.status_code != 200:
                summary.errors[response.status_code] += 1
                return
            summary.answered[response.json()["variant"]] += 1
        if "prdtypecode" in product and gets_feedback(product["productid"], feedback_share):
            truth = {
                "product_id": str(product["productid"]),
                "prdtypecode": int(product["prdtypecode"]),
            }
            given = post(session, f"{url}/feedback", json=truth)
            with lock:
                if given.status_code == 202:
                    summary.feedback += 1
                else:
                    summary.errors[f"feedback {given.status_code}"] += 1

    with ThreadPoolExecutor(clients) as pool:
        list(tqdm(pool.map(send, products.iterrows()), total=len(products), desc="replaying"))
    return summary
