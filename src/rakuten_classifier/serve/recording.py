"""What the prediction store keeps of one prediction: the model and variant that made it, the
product's identifiers, what its inputs looked like (text length, language, photo size), the
five most probable product types and the latency. No photo; the texts only when
RAKUTEN_API_STORE_TEXTS allows it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from rakuten_classifier.bundle import BundlePrediction
from rakuten_classifier.drift_profile import Profile
from rakuten_classifier.reference import observation
from rakuten_classifier.serve.inputs import Product
from rakuten_classifier.serve.schemas import TOP_K


def prediction_row(
    *,
    product: Product,
    prediction: BundlePrediction,
    row: int,
    profile: Profile | None,
    request_id: str,
    user: str | None,
    variant: str,
    model_version: str,
    served: bool,
    latency_ms: float,
    store_texts: bool,
) -> dict[str, Any]:
    return {
        "uid": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "request_id": request_id,
        "user": user,
        "model_version": model_version,
        "variant": variant,
        "served": served,
        **{name: _text(product.metadata.get(name)) for name in _IDENTIFIERS},
        **observation(
            product.designation, product.description, product.photo_size, prediction, row, profile
        ),
        "photo_bytes": len(product.image) if product.image is not None else None,
        "top": [[code, probability] for code, probability in prediction.top(row, TOP_K)],
        "latency_ms": latency_ms,
        "designation": product.designation if store_texts else None,
        "description": product.description if store_texts else None,
    }


_IDENTIFIERS = ("product_identifier", "product_id", "imageid")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def feedback_row(
    *,
    user: str,
    prdtypecode: int,
    product_identifier: str | None,
    product_id: str | None,
    request_id: str | None,
    comment: str | None,
) -> dict[str, Any]:
    return {
        "uid": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "user": user,
        "prdtypecode": prdtypecode,
        "product_identifier": product_identifier,
        "product_id": product_id,
        "request_id": request_id,
        "comment": comment,
    }
