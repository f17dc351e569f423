"""The photo model's LiteRT runtime against its Keras reference: the same classes, the same
probabilities within float32 noise, the same bytes from the same weights, and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE

from rakuten_classifier.image import (
    ImageModel,
    build_backbone,
    build_head,
    build_image_model,
    load_image_model,
    load_pixels,
    save_image_model,
)
from rakuten_classifier.litert import THREADS_VARIABLE, LiteRTFunction, default_threads

SIZE = 48


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = {"image_size": SIZE, "backbone": "small_cnn", "augment": {"flip": True}}
    model = build_image_model(build_backbone("small_cnn", None, SIZE), build_head(4, 0.5), params)
    folder = tmp_path_factory.mktemp("image")
    save_image_model(ImageModel.of_keras(model, SIZE, temperature=1.3), folder, {})
    return folder


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return load_pixels([str(path) for path in sorted((SAMPLE / "images").rglob("*.jpg"))[:9]], SIZE)


def test_litert_gives_the_keras_answers(saved: Path, pixels: np.ndarray) -> None:
    litert, keras = load_image_model(saved), load_image_model(saved, "keras")
    assert (litert.runtime, keras.runtime) == ("litert", "keras")
    assert litert.model is None and keras.model is not None
    np.testing.assert_allclose(litert.features(pixels), keras.features(pixels), atol=1e-4)
    expected = keras.predict_proba(pixels)
    np.testing.assert_allclose(litert.predict_proba(pixels), expected, atol=1e-5)
    assert (litert.predict_proba(pixels).argmax(1) == expected.argmax(1)).all()
    # No photo: an empty answer of the right width, as with Keras.
    assert litert.logits_of_photos([]).shape == keras.logits_of_photos([]).shape == (0, 4)


def test_the_export_is_byte_identical_for_the_same_weights(saved: Path, tmp_path: Path) -> None:
    save_image_model(load_image_model(saved, "keras"), tmp_path, {})
    for file in ImageModel.LITERT_FILES.values():
        assert (tmp_path / file).read_bytes() == (saved / file).read_bytes()


def test_a_model_without_its_export_runs_on_keras(saved: Path, tmp_path: Path, caplog) -> None:
    for file in ("model.keras", "image_model.json"):
        (tmp_path / file).write_bytes((saved / file).read_bytes())
    with caplog.at_level(logging.WARNING, logger="rakuten_classifier"):
        model = load_image_model(tmp_path)
    assert model.runtime == "keras" and "no LiteRT export" in caplog.text
    with pytest.raises(ValueError, match="image runtime 'onnx'"):
        load_image_model(saved, "onnx")
    with pytest.raises(ValueError, match="cannot be saved"):
        save_image_model(load_image_model(saved), tmp_path / "again", {})


def test_wrong_inputs_and_settings_are_named(saved: Path, monkeypatch) -> None:
    backbone = LiteRTFunction(saved / "backbone.tflite", threads=1)
    assert backbone.input_shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match=r"backbone.tflite: inputs of shape \(32, 32, 3\)"):
        backbone(np.zeros((1, 32, 32, 3)))
    with pytest.raises(FileNotFoundError, match="no LiteRT model"):
        LiteRTFunction(saved / "missing.tflite")
    monkeypatch.setenv(THREADS_VARIABLE, "two")
    with pytest.raises(ValueError, match="RAKUTEN_IMAGE_THREADS='two'"):
        default_threads()
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    assert default_threads() == 1
