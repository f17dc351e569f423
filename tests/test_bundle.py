"""The model bundle the pipeline built: loading, integrity, prediction with and without a
photo, and the batch command `rakuten-classifier predict` run as a user runs it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run

from rakuten_classifier.bundle import BundleError, assemble_bundle, load_bundle, predict_frame
from rakuten_classifier.data import image_paths, read_products
from rakuten_classifier.labels import LabelMap

PHOTO_DIR = Path("images/image_test")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path):
    return load_bundle(bundle_dir)


def test_bundle_carries_its_version_metrics_and_training_record(bundle, bundle_dir) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert bundle.version == manifest["model_version"] and len(bundle.version) == 12
    assert manifest["metrics"]["fusion"]["f1_weighted"] >= 0
    assert set(manifest["training"]["trained_on"]) == {"train", "val", "test"}  # refit
    assert manifest["params"]["train_text"]["model"] == "linear"
    assert len(bundle.labels.codes) == manifest["classes"]


def test_altered_or_missing_bundle_files_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    fusion = copy / "fusion" / "fusion.json"
    fusion.write_text(fusion.read_text().replace("weighted", "stacking"))
    with pytest.raises(BundleError, match="altered since the bundle was built"):
        load_bundle(copy)
    fusion.unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="no model bundle here"):
        load_bundle(tmp_path / "nothing")


def test_a_product_without_photo_is_classified_from_its_text(bundle) -> None:
    prediction = bundle.predict_products(["Peluche Donald - Disneyland 2000"], [""], [None])
    assert not prediction.image_used[0]
    assert prediction.image_problems == ["missing"]
    text_only = bundle.text.predict_proba(["peluche donald - disneyland 2000"])
    np.testing.assert_allclose(prediction.probabilities, text_only)
    assert prediction.codes[0] in bundle.labels.codes


def test_a_photo_is_used_and_a_broken_one_falls_back_to_text(bundle, slice_dir: Path) -> None:
    photo = next((slice_dir / PHOTO_DIR).glob("*.jpg")).read_bytes()
    title = ["Lot de 3 figurines Star Wars"]
    with_photo = bundle.predict_products(title, [None], [photo])
    broken = bundle.predict_products(title, [None], [photo[:1500]])
    assert with_photo.image_used[0] and with_photo.image_problems == [None]
    assert not broken.image_used[0] and "cannot decode image" in broken.image_problems[0]
    top = with_photo.top(0, 5)
    assert len(top) == 5 and top[0][0] == with_photo.codes[0]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


@pytest.fixture(scope="module")
def batch_input(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The slice's unlabelled products with their photos, but one photo missing, one not an
    image and one description emptied: every row must still get an answer."""
    folder = tmp_path_factory.mktemp("batch")
    products = pd.read_csv(slice_dir / "X_test_update.csv", index_col=0)
    products.iloc[0, products.columns.get_loc("description")] = ""
    products.to_csv(folder / "X.csv")
    photos = folder / "photos"
    shutil.copytree(slice_dir / PHOTO_DIR, photos)
    names = [f"image_{r.imageid}_product_{r.productid}.jpg" for r in products.itertuples()]
    (photos / names[1]).unlink()
    (photos / names[2]).write_text("not a photo")
    return folder / "X.csv", photos


def predict_args(bundle_dir: Path, x_csv: Path, photos: Path, out: Path) -> list[str]:
    return [
        "rakuten-classifier",
        "predict",
        "--x-csv",
        str(x_csv),
        "--image-dir",
        str(photos),
        "--bundle",
        str(bundle_dir),
        "--out",
        str(out),
    ]


def predict_command(bundle_dir: Path, x_csv: Path, photos: Path, out: Path, cwd: Path):
    return run(predict_args(bundle_dir, x_csv, photos, out), cwd, check=False)


def test_batch_command_predicts_every_row(bundle, bundle_dir, batch_input, tmp_path) -> None:
    x_csv, photos = batch_input
    out = tmp_path / "preds.csv"
    result = predict_command(bundle_dir, x_csv, photos, out, tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(out, index_col=0)
    products = pd.read_csv(x_csv, index_col=0)
    assert list(predictions.columns) == ["prdtypecode", "probability"]
    assert list(predictions.index) == list(products.index)
    assert "from text alone" in result.stderr and "not an image" in result.stderr
    # The same answers as the library call the API uses.
    images = []
    for row in products.itertuples():
        path = photos / f"image_{row.imageid}_product_{row.productid}.jpg"
        images.append(path.read_bytes() if path.exists() else None)
    direct = bundle.predict_products(
        products["designation"].tolist(), products["description"].fillna("").tolist(), images
    )
    assert list(predictions["prdtypecode"]) == list(direct.codes)
    np.testing.assert_allclose(predictions["probability"], direct.confidence, atol=1e-6)


def test_batch_command_errors_are_clear_and_write_nothing(bundle_dir, batch_input, tmp_path):
    x_csv, photos = batch_input
    broken = tmp_path / "broken.csv"
    pd.read_csv(x_csv, index_col=0).drop(columns=["designation"]).to_csv(broken)
    out = tmp_path / "preds.csv"
    result = predict_command(bundle_dir, broken, photos, out, tmp_path)
    assert result.returncode == 2
    assert "missing column(s) designation" in result.stderr and str(broken) in result.stderr
    result = predict_command(tmp_path / "no-bundle", x_csv, photos, out, tmp_path)
    assert result.returncode == 2 and "no model bundle here" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".preds*"))


def test_the_manifest_describes_each_component_by_its_own_settings_file(
    pipeline_run, tmp_path: Path
) -> None:
    """Another JSON file in a component's folder (sorted first) is not taken for its
    settings."""
    models = pipeline_run.root / "models"
    components = {}
    for name in ("text", "image", "fusion"):
        components[name] = tmp_path / "components" / name
        shutil.copytree(models / name, components[name])
        (components[name] / "a_notes.json").write_text('{"note": "not the settings"}')
    labels = LabelMap.from_json(json.loads((models / "bundle/labels.json").read_text()))
    manifest = assemble_bundle(tmp_path / "bundle", components, labels, {})
    for name in ("text", "image", "fusion"):
        settings_file = {"text": "text_model.json", "image": "image_model.json"}.get(
            name, "fusion.json"
        )
        expected = json.loads((models / name / settings_file).read_text())
        assert manifest["components"][name] == expected, name


def test_the_same_components_give_the_same_bundle_bytes(pipeline_run, tmp_path: Path) -> None:
    """No build time or other per-run value in the bundle."""
    models = pipeline_run.root / "models"
    components = {name: models / name for name in ("text", "image", "fusion")}
    labels = LabelMap.from_json(json.loads((models / "bundle/labels.json").read_text()))
    first = assemble_bundle(tmp_path / "first", components, labels, {"seed": 1})
    second = assemble_bundle(tmp_path / "second", components, labels, {"seed": 1})
    assert first == second
    assert "created_at" not in first
    assert (tmp_path / "first/manifest.json").read_bytes() == (
        tmp_path / "second/manifest.json"
    ).read_bytes()


def test_the_litert_runtime_answers_as_the_keras_reference(bundle, bundle_dir, batch_input):
    """The shipped photo runtime against the Keras model it was exported from, on the slice's
    unlabelled products (those with a usable photo go through the image model)."""
    x_csv, photos = batch_input
    products = read_products(x_csv)
    products["image_path"] = image_paths(products, photos)
    keras_bundle = load_bundle(bundle_dir, image_runtime="keras")
    assert (bundle.image.runtime, keras_bundle.image.runtime) == ("litert", "keras")
    served, served_detail = predict_frame(bundle, products, progress=False)
    reference, reference_detail = predict_frame(keras_bundle, products, progress=False)
    assert served_detail.image_used.sum() >= 3
    assert list(served["prdtypecode"]) == list(reference["prdtypecode"])
    np.testing.assert_allclose(
        served_detail.probabilities, reference_detail.probabilities, atol=1e-5
    )
    np.testing.assert_allclose(
        served_detail.image_features, reference_detail.image_features, atol=1e-4
    )


def test_the_batch_command_runs_without_tensorflow(bundle_dir, batch_input, tmp_path) -> None:
    """Photos included: the LiteRT runtime serves the image model, so neither TensorFlow nor
    Keras is imported (seconds of start-up and a gigabyte of memory)."""
    x_csv, photos = batch_input
    out = tmp_path / "preds.csv"
    script = (
        "import sys\n"
        "from rakuten_classifier.cli import app\n"
        f"argv = ['predict', '--x-csv', {str(x_csv)!r}, '--image-dir', {str(photos)!r},\n"
        f"        '--bundle', {str(bundle_dir)!r}, '--out', {str(out)!r}]\n"
        "try:\n"
        "    app(argv)\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "print('loaded:', loaded)\n"
    )
    result = run([sys.executable, "-c", script], tmp_path)
    assert "loaded: []" in result.stdout, result.stdout + result.stderr
    assert len(pd.read_csv(out)) == len(pd.read_csv(x_csv))
    with_keras = run(
        [
            *predict_args(bundle_dir, x_csv, photos, tmp_path / "keras.csv"),
            "--image-runtime",
            "keras",
        ],
        tmp_path,
    )
    assert with_keras.returncode == 0, with_keras.stderr
    served, reference = pd.read_csv(out), pd.read_csv(tmp_path / "keras.csv")
    assert list(served["prdtypecode"]) == list(reference["prdtypecode"])
    np.testing.assert_allclose(served["probability"], reference["probability"], atol=1e-5)
    wrong = run(
        [*predict_args(bundle_dir, x_csv, photos, tmp_path / "x.csv"), "--image-runtime", "onnx"],
        tmp_path,
        check=False,
    )
    assert wrong.returncode == 2 and "expected one of litert, keras" in wrong.stderr
