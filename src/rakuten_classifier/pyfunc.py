"""The model bundle as an MLflow pyfunc model: `mlflow.pyfunc.load_model(...)` of
"models:/rakuten@champion" gives an object whose `predict` goes through
`Bundle.predict_products`, like the batch command and the API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from rakuten_classifier.bundle import Bundle, load_bundle
from rakuten_classifier.preprocess import read_photo

BUNDLE_ARTIFACT = "bundle"
# What the model takes and gives: one row per product, the photo optional (bytes or a path).
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "designation"),
            ColSpec("string", "description", required=False),
            ColSpec("binary", "image", required=False),
            ColSpec("string", "image_path", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("long", "prdtypecode"),
            ColSpec("double", "probability"),
            ColSpec("boolean", "image_used"),
        ]
    ),
)
# The file MLflow runs to build the model when it loads it ("models from code": nothing of
# this package is pickled into the registry).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


class BundleModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with `designation`, optional `description`, and the photo as
    `image` (bytes or base64 text) or `image_path` (a file or archive member). Output:
    `prdtypecode`, `probability` and `image_used` per row."""

    def load_context(self, context: Any) -> None:
        self.bundle: Bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        count = len(frame)
        descriptions = frame["description"] if "description" in frame else [""] * count
        prediction = self.bundle.predict_products(
            frame["designation"].astype(str).tolist(),
            [value if isinstance(value, str) else "" for value in descriptions],
            [_photo(frame, row) for row in range(count)],
        )
        return pd.DataFrame(
            {
                "prdtypecode": prediction.codes,
                "probability": prediction.confidence,
                "image_used": prediction.image_used,
            },
            index=frame.index,
        )


def _photo(frame: pd.DataFrame, row: int) -> bytes | None:
    if "image" in frame and isinstance(value := frame["image"].iloc[row], bytes | str) and value:
        return value if isinstance(value, bytes) else base64.b64decode(value)
    if "image_path" in frame and isinstance(path := frame["image_path"].iloc[row], str) and path:
        return read_photo(path, missing_ok=True)
    return None
