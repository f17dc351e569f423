"""The BentoML service (serving level 2): the pipeline's model bundle behind BentoML's adaptive
batching. Requests that arrive together are classified in one `Bundle.predict_products` call,
the one prediction path the batch command and the FastAPI service use too, so the answers are
theirs. The FastAPI service (rakuten-classifier serve) stays the first level: tokens, roles,
the prediction store, champion and challenger; this one is for a BentoML/BentoCloud platform.

    BENTOML_DO_NOT_TRACK=True RAKUTEN_BENTO_BUNDLE=models/bundle \\
        bentoml serve deploy/bentoml/service.py:RakutenClassifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import bentoml
from pydantic import BaseModel, Field

from rakuten_classifier.bundle import load_bundle

BUNDLE = Path(os.environ.get("RAKUTEN_BENTO_BUNDLE", "models/bundle"))


class Product(BaseModel):
    designation: str = Field(min_length=1, max_length=20_000, description="The title.")
    description: str | None = Field(None, max_length=20_000)
    image_base64: str | None = Field(None, description="The photo's file, base64-encoded.")


class Answer(BaseModel):
    prdtypecode: int
    probability: float
    used_photo: bool
    photo_problem: str | None
    model_version: str


@bentoml.service(name="rakuten_classifier", traffic={"timeout": 60, "max_concurrency": 256})
class RakutenClassifier:
    def __init__(self) -> None:
        self.bundle = load_bundle(BUNDLE)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def classify(self, products: list[Product]) -> list[Answer]:
        """Each product's type; a photo that cannot be used leaves the text to decide."""
        images = [photo_bytes(product.image_base64) for product in products]
        prediction = self.bundle.predict_products(
            [product.designation for product in products],
            [product.description for product in products],
            images,
        )
        return [
            Answer(
                prdtypecode=int(code),
                probability=round(float(confidence), 6),
                used_photo=bool(used),
                photo_problem=problem or None,
                model_version=self.bundle.version,
            )
            for code, confidence, used, problem in zip(
                prediction.codes,
                prediction.confidence,
                prediction.image_used,
                prediction.image_problems,
                strict=True,
            )
        ]


def photo_bytes(encoded: str | None) -> bytes | None:
    """The photo's bytes; an undecodable string counts as no photo (the bundle then reports
    the product's photo as unusable rather than failing its whole batch)."""
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return b""
