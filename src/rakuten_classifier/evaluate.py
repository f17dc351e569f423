"""The predict stage: evaluate the trained parts on the held-out test split, draw the plots,
build models/bundle and predict the unlabelled products. The parts are evaluated assembled as a
bundle and loaded through `load_bundle`: the code path the API and the batch command serve.

The scores go to metrics/test.json, a DVC output whose bytes depend only on code, params and
data. How long a prediction took depends on the machine and on what else runs on it, so the
measured times go to metrics/timing.json instead, a git-ignored file of this machine's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_classifier import config, recipes
from rakuten_classifier.bundle import (
    Bundle,
    BundlePrediction,
    assemble_bundle,
    load_bundle,
    predict_frame,
)
from rakuten_classifier.config import logger
from rakuten_classifier.data import load_labels, load_split, write_predictions_csv
from rakuten_classifier.files import atomic_dir, atomic_path, write_json
from rakuten_classifier.hashed_tokens import release_freed_memory
from rakuten_classifier.image import load_image_model
from rakuten_classifier.litert import REFERENCE_RUNTIME
from rakuten_classifier.metrics import (
    classification_scores,
    per_class_scores,
    plot_confusion,
    plot_per_class_f1,
    plot_training_curves,
    read_dvclive_history,
    time_per_product,
)
from rakuten_classifier.preprocess import product_text, read_photo
from rakuten_classifier.reference import reference_profile
from rakuten_classifier.sentence_encoder import uncached


def evaluate_bundle(
    bundle: Bundle, test: pd.DataFrame, batch_size: int
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame, BundlePrediction]:
    """Score text, image and fusion on a labelled split.

    Returns the metrics (for metrics/test.json), the per-class scores, per product its
    actual and predicted product type codes (`image` empty where there is no photo). The image
    model is scored on the products that have a photo; text and fusion on all of them; and
    the prediction itself.
    """
    _, prediction = predict_frame(bundle, test, batch_size)
    y = test["label"].to_numpy()
    used = prediction.image_used
    predicted = {
        "text": prediction.text_probabilities.argmax(axis=1),
        "fusion": prediction.probabilities.argmax(axis=1),
    }
    metrics: dict[str, Any] = {
        "text": classification_scores(y, predicted["text"]),
        "fusion": classification_scores(y, predicted["fusion"]),
        "image": {"n": 0},
    }
    if used.any():
        predicted["image"] = prediction.image_probabilities[used].argmax(axis=1)
        metrics["image"] = classification_scores(y[used], predicted["image"])
        metrics["fusion_with_photo"] = classification_scores(y[used], predicted["fusion"][used])

    per_class = {
        name: per_class_scores(y if name != "image" else y[used], classes, bundle.labels)
        for name, classes in predicted.items()
    }
    codes = np.asarray(bundle.labels.codes)
    outcomes = pd.DataFrame(
        {
            "actual": codes[y],
            "text": codes[predicted["text"]],
            "fusion": codes[predicted["fusion"]],
        },
        index=test.index,
    )
    outcomes["image"] = pd.Series(pd.NA, index=test.index, dtype="Int64")
    if used.any():
        outcomes.loc[used, "image"] = codes[predicted["image"]]
    return metrics, per_class, outcomes, prediction


# Largest difference of a probability between the served runtime and the reference: float32
# rounding is about 1e-6 here; anything near this is a wrong export, not rounding.
PARITY_TOLERANCE = 1e-4


def check_runtime_parity(
    served: Bundle, expected: BundlePrediction, products: pd.DataFrame, batch_size: int
) -> float:
    """The served runtime must give the reference's classes and probabilities (`expected`, its
    prediction of `products`, the test split): the metrics, computed with the reference, then
    describe what is served. Returns the largest probability difference; raises, naming
    products, when they differ."""
    _, answer = predict_frame(served, products, batch_size, progress=False)
    gap = np.abs(answer.probabilities - expected.probabilities).max(initial=0.0)
    other = answer.probabilities.argmax(axis=1) != expected.probabilities.argmax(axis=1)
    if other.any() or gap > PARITY_TOLERANCE:
        raise RuntimeError(
            f"the {served.image.runtime} image runtime differs from {REFERENCE_RUNTIME}: other "
            f"classes for products {list(products.index[other][:5])}, largest probability "
            f"difference {gap:.2g} (tolerance {PARITY_TOLERANCE:g})"
        )
    logger.info(
        "%s runtime: the reference's classes on %d products, probabilities within %.1g",
        served.image.runtime if served.image else "no image",
        len(products),
        gap,
    )
    return float(gap)


def time_bundle(
    bundle: Bundle, products: pd.DataFrame, batch_size: int, singles: int
) -> dict[str, dict[str, float]]:
    """Milliseconds per product of text, image and fusion, in batches and one at a time (the
    API's case). The image model and the fusion are timed on products that have a photo."""
    rows = list(products[["designation", "description", "image_path"]].itertuples(index=False))
    photo_rows = [row for row, has in zip(rows, products["has_image"], strict=True) if has]

    def text_only(batch: Sequence[Any]) -> Any:
        return bundle.text.predict_proba(
            [product_text(r.designation, r.description) for r in batch]
        )

    def image_only(batch: Sequence[Any]) -> Any:
        pixels = np.stack([bundle.image.decode(read_photo(r.image_path)) for r in batch])
        return bundle.image.predict_proba(pixels)

    def fused(batch: Sequence[Any]) -> Any:
        images = [read_photo(r.image_path, missing_ok=True) for r in batch]
        return bundle.predict_products(
            [r.designation for r in batch], [r.description for r in batch], images
        )

    timing = {
        "text": time_per_product(text_only, rows, batch_size, singles),
        "fusion": time_per_product(fused, photo_rows or rows, batch_size, singles),
    }
    if photo_rows and bundle.image is not None:
        timing["image"] = time_per_product(image_only, photo_rows, batch_size, singles)
    return timing


def run(
    params: dict[str, Any],
    processed_dir: Path = config.PROCESSED_DIR,
    models_dir: Path = config.MODELS_DIR,
    features_dir: Path = config.FEATURES_DIR,
    metrics_dir: Path = config.METRICS_DIR,
    plots_dir: Path = config.PLOTS_DIR,
    predictions_dir: Path = config.PREDICTIONS_DIR,
    live_dir: Path = config.DVCLIVE_DIR,
    held_out_dir: Path = config.HELD_OUT_DIR,
) -> dict[str, Any]:
    """Evaluate the trained parts as a bundle on the test split, then build models/bundle:
    the same recipe refit on every labelled product (`predict.refit`), or the evaluated parts
    themselves. Its manifest carries the held-out metrics and says how it was trained."""
    stage = params["predict"]
    # What the bundle records: the pipeline's sections, all of which the stage depends on.
    params = {section: params[section] for section in config.PIPELINE_PARAMS if section in params}
    labels = load_labels(processed_dir)
    components = {name: Path(models_dir) / name for name in ("text", "image", "fusion")}
    splits = {name: load_split(name, processed_dir) for name in ("train", "val", "test")}
    labelled = pd.concat(splits.values())
    training = {
        "metrics_from": "models trained on the train split, scored on the held-out test split",
        "trained_on": {name: len(frame) for name, frame in splits.items() if name == "train"},
    }
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".predict.") as scratch:
        # The refit first: the text model's on every row, this stage's largest step at full
        # size, needs no TensorFlow, whose gigabyte the evaluation below loads.
        shipped = components
        if stage["refit"]:
            shipped = refit_components(
                params, labelled, len(labels.codes), features_dir, components, Path(scratch)
            )
            training["trained_on"] = {name: len(frame) for name, frame in splits.items()}
        evaluated_dir = Path(scratch) / "evaluated"
        assemble_bundle(evaluated_dir, components, labels, params)
        evaluated = load_bundle(evaluated_dir, image_runtime=REFERENCE_RUNTIME)
        metrics, per_class, outcomes, reference = evaluate_bundle(
            evaluated, splits["test"], stage["batch_size"]
        )
        served = load_bundle(evaluated_dir)  # the runtime the bundle serves with
        check_runtime_parity(served, reference, splits["test"], stage["batch_size"])
        with uncached():  # a new product pays its sentence encoders: so do the timings
            timing = time_bundle(
                served, splits["test"], stage["batch_size"], stage["timing_singles"]
            )
        del served
        trained_on = labelled if stage["refit"] else splits["train"]
        shipped_image = (
            load_image_model(shipped["image"], REFERENCE_RUNTIME)
            if shipped["image"].exists()
            else None
        )
        profile = reference_profile(
            trained_on,
            Path(held_out_dir) / config.HELD_OUT_FILE,
            list(labels.codes),
            shipped_image,
            features_dir,
            params["train_image"],
        )
        shipped = {**shipped, "profile": Path(scratch) / "profile"}
        profile.save(shipped["profile"])
        per_class_f1 = {
            model: dict(
                zip(frame["prdtypecode"].astype(str), frame["f1"].astype(float), strict=True)
            )
            for model, frame in per_class.items()
        }
        with atomic_dir(Path(models_dir) / "bundle") as out:
            assemble_bundle(out, shipped, labels, params, metrics, training, per_class_f1)
    bundle = load_bundle(Path(models_dir) / "bundle", image_runtime=REFERENCE_RUNTIME)
    unlabelled = load_split(config.UNLABELLED, processed_dir)
    predictions, _ = predict_frame(bundle, unlabelled, stage["batch_size"])
    write_predictions_csv(Path(predictions_dir) / "predictions.csv", predictions)
    if stage["refit"]:
        # A sanity check of the refit, on products neither model saw: most answers should stay.
        check = unlabelled.head(2000)
        before, _ = predict_frame(evaluated, check, stage["batch_size"], progress=False)
        agreement = (before["prdtypecode"] == predictions["prdtypecode"].loc[check.index]).mean()
        logger.info(
            "the refit bundle agrees with the evaluated one on %.1f%% of %d unlabelled products",
            100 * agreement,
            len(check),
        )

    write_json(Path(metrics_dir) / "test.json", metrics)
    write_json(Path(metrics_dir) / config.TIMING_JSON, timing)
    table = pd.concat([frame.assign(model=name) for name, frame in per_class.items()])
    with atomic_path(Path(metrics_dir) / "per_class.csv") as tmp_csv:
        table.to_csv(tmp_csv, index=False)
    _write_plots(outcomes, per_class, labels, Path(plots_dir), Path(live_dir))
    logger.info("test metrics: %s", metrics)
    return metrics


def refit_components(
    params: dict[str, Any],
    labelled: pd.DataFrame,
    n_classes: int,
    features_dir: Path,
    evaluated: dict[str, Path],
    scratch: Path,
) -> dict[str, Path]:
    """Text and image models retrained on every labelled product with the evaluated recipe;
    the fusion learned on held-out predictions is kept as it is (no held-out rows are left)."""
    refit = {"text": scratch / "text", "image": scratch / "image", "fusion": evaluated["fusion"]}
    for recipe in (recipes.TEXT, recipes.IMAGE):
        name = recipe.modality
        recipes.refit(
            recipe, params, labelled, n_classes, features_dir, evaluated[name], refit[name]
        )
        release_freed_memory()  # the text model's vocabularies, before TensorFlow loads
    return refit


def _write_plots(
    outcomes: pd.DataFrame,
    per_class: dict[str, pd.DataFrame],
    labels: Any,
    plots_dir: Path,
    live_dir: Path,
) -> None:
    # For `dvc plots show` (confusion template): one row per test product.
    with atomic_path(plots_dir / "confusion.csv") as tmp:
        outcomes[["actual", "fusion"]].rename(columns={"fusion": "predicted"}).to_csv(
            tmp, index=False
        )
    # PNGs rendered here: `dvc plots show` loads its JavaScript from a CDN.
    for model in ("fusion", "text", "image"):
        rows = outcomes[model].notna()
        if rows.any():
            plot_confusion(
                outcomes.loc[rows, "actual"].astype(int),
                outcomes.loc[rows, model].astype(int),
                labels,
                plots_dir / f"confusion_{model}.png",
                f"{model} model, test split ({int(rows.sum())} products)",
            )
    plot_per_class_f1(per_class, plots_dir / "per_class_f1.png", "F1 per product type, test split")
    histories = {
        stage: read_dvclive_history(live_dir / stage) for stage in ("train_text", "train_image")
    }
    plot_training_curves(histories, plots_dir / "training_curves.png")
