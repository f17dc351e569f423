"""The image_features stage on the session's pipeline run (photos read from its images.zip):
cached backbone features match the backbone run directly, and are found again by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import PipelineRun

from rakuten_classifier.data import load_split
from rakuten_classifier.image import (
    InferenceFunction,
    build_backbone,
    extract_features,
    load_features,
    load_pixels,
)

PARAMS = {"backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 64}


def test_cached_features_match_the_backbone_and_are_found_by_row(
    pipeline_run: PipelineRun, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pipeline_run.root)  # photo paths are relative to the project root
    processed = pipeline_run.root / "data" / "processed"
    summary = extract_features(PARAMS, processed, tmp_path / "features")
    val = load_split("val", processed)
    photos = val[val["has_image"]]
    assert summary["val"] == {"photos": len(photos), "dims": 1280}

    # Any order, rows of several splits at once: each comes back with its own features.
    train = load_split("train", processed)
    mixed = pd.concat([photos.iloc[::-1].head(3), train[train["has_image"]].head(2)])
    features, labels = load_features(tmp_path / "features", mixed)
    backbone = InferenceFunction(build_backbone(PARAMS["backbone"], PARAMS["weights"], 64))
    direct = backbone(load_pixels(mixed["image_path"].tolist(), 64).astype(np.float32))
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)
    assert list(labels) == list(mixed["label"])

    unknown = photos.head(1).rename(index=lambda row: -1)
    with pytest.raises(ValueError, match=r"no cached features for rows \[-1\]"):
        load_features(tmp_path / "features", unknown)
