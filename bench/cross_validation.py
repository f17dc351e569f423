"""Paired, repeated cross-validation of every model against a tuned reference on the labelled
sample: the numbers the README's quality claims come from.

Each repeat cuts the products into K stratified folds (RepeatedStratifiedKFold); each product
is predicted by models that did not see it, with the recipes of params.yaml: the text model,
the image model (head on cached backbone features, early-stopped on an inner split), and the
fusion (its weight chosen on the other folds' predictions). Beside them, on the same folds, the
tuned reference: word 1-2 + char_wb 2-5 TF-IDF (min_df 2), LinearSVC C=0.5 balanced. With 876
products one product is about a point of F1, so every figure comes with a 95% bootstrap
interval over products, and each model's difference to the reference (and the fusion's to the
text model, on products with a photo) is *paired*: the same resampled products, the same folds.

    .venv/bin/python bench/cross_validation.py [--repeats 3] [--folds 5] [--out FILE.json]
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import typer
import yaml
from paired_scores import REFERENCE, render, summarise
from pipeline import machine as describe_machine
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold, train_test_split
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.svm import LinearSVC
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.calibration import fit_temperature, softmax
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.fusion import fit_fusion
from rakuten_classifier.image import backbone_features, build_backbone, fit_image_model
from rakuten_classifier.sentence_encoder import (
    encoder_names,
    milliseconds_per_text,
    vector_cache,
)
from rakuten_classifier.text import fit_text_model, fit_tokenizers
from rakuten_classifier.training import InferenceFunction


def tuned_reference() -> object:
    """The 20-line baseline the sealed set measured the bundle against."""
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    return make_pipeline(
        FeatureUnion([("words", words), ("chars", chars)]),
        LinearSVC(C=0.5, class_weight="balanced"),
    )


VARIANT_SECTIONS = ("tokenize", "train_text", "train_fusion")


def with_changes(params: dict, changes: list[str]) -> dict:
    """A copy of `params` with each `section.key[.key...]=value` (a YAML value) applied."""
    changed = copy.deepcopy(params)
    for change in changes:
        path, separator, value = change.partition("=")
        keys = path.split(".")
        if not separator or keys[0] not in VARIANT_SECTIONS or len(keys) < 2:
            raise typer.BadParameter(
                f"--set {change}: expected SECTION.KEY=VALUE, SECTION one of "
                + ", ".join(VARIANT_SECTIONS)
            )
        target = changed
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                raise typer.BadParameter(f"--set {change}: params.yaml has no section {key}")
            target = target[key]
        if keys[-1] not in target:
            raise typer.BadParameter(f"--set {change}: params.yaml has no {path}")
        target[keys[-1]] = yaml.safe_load(value)
    return changed


def labelled_products(sample_dir: Path) -> pd.DataFrame:
    products = read_products(sample_dir / config.X_TRAIN_CSV)
    products["prdtypecode"] = read_labels(sample_dir / config.Y_TRAIN_CSV, products)
    frame = product_frame(products, sample_dir / config.IMAGE_TRAIN_DIR)
    codes = sorted(frame["prdtypecode"].unique())
    frame["label"] = frame["prdtypecode"].map({code: k for k, code in enumerate(codes)})
    return frame


@dataclass
class Photos:
    """The cached backbone features of the products that have a usable photo."""

    has_photo: np.ndarray  # per product
    row: np.ndarray  # per product: its row in `features`, -1 without a photo
    features: np.ndarray
    seconds: float  # the backbone pass, for the cost per product


def photo_features(frame: pd.DataFrame, image_params: dict) -> Photos:
    size = image_params["image_size"]
    started = time.perf_counter()
    forward = InferenceFunction(
        build_backbone(image_params["backbone"], image_params["weights"], size)
    )
    index, features = backbone_features(forward, frame[frame["has_image"]], size)
    seconds = time.perf_counter() - started
    row = pd.Series(-1, index=frame.index)
    row.loc[index] = np.arange(len(index))
    row = row.to_numpy()
    return Photos(row >= 0, row, features, seconds)


@dataclass
class Repeat:
    """One repeat's out-of-fold answers (classes, or logits) and seconds spent predicting."""

    reference: np.ndarray
    text_logits: np.ndarray
    image_logits: np.ndarray
    variant_logits: np.ndarray  # the text model with the --set params, if any
    seconds: dict[str, float] = field(default_factory=dict)

    def clock(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def image_head_logits(
    frame: pd.DataFrame, y: np.ndarray, photos: Photos, rows: tuple, params: dict, seed: int
) -> np.ndarray:
    """Fit the image head on the fold's photos (early stopping on an inner 15%, as the stage
    does) and return its log-probabilities for the held-out photos."""
    fit_rows, held_rows = rows
    fit_photos = fit_rows[photos.has_photo[fit_rows]]
    inner_fit, inner_val = train_test_split(
        fit_photos, test_size=0.15, stratify=y[fit_photos], random_state=seed
    )
    cached = {name: (photos.features[photos.row[r]], y[r]) for name, r in
              (("fit", inner_fit), ("val", inner_val))}  # fmt: skip
    model, _ = fit_image_model(
        {**params, "fine_tune": {**params["fine_tune"], "blocks": 0}},
        seed,
        int(y.max()) + 1,
        (frame.iloc[inner_fit], cached["fit"]),
        (frame.iloc[inner_val], cached["val"]),
    )
    held = held_rows[photos.has_photo[held_rows]]
    head = InferenceFunction(model.model.get_layer("head"))
    probabilities = head(photos.features[photos.row[held]])
    return np.log(probabilities.astype(np.float64) + 1e-12)


def text_logits(
    params: dict, fit: tuple[list[str], np.ndarray], held: list[str], n_classes: int, seed: int
) -> tuple[np.ndarray, float]:
    """The held-out texts' logits from a text model fitted on `fit`, and the seconds the
    prediction took."""
    model, _ = fit_text_model(
        params["train_text"],
        fit_tokenizers(fit[0], params["tokenize"]),
        fit,
        None,
        n_classes,
        seed,
        epochs=params["train_text"]["cnn"]["epochs"],
    )
    started = time.perf_counter()
    logits = model.logits(held)
    return logits, time.perf_counter() - started


def run_repeat(
    frame: pd.DataFrame,
    photos: Photos,
    folds: list[tuple],
    params: dict,
    seed: int,
    variant: dict | None = None,
) -> Repeat:
    y, texts = frame["label"].to_numpy(), frame["text"].tolist()
    n_classes = int(y.max()) + 1
    out = Repeat(
        np.zeros(len(y), dtype=int),
        np.zeros((len(y), n_classes)),
        np.full((len(y), n_classes), np.nan),
        np.zeros((len(y), n_classes)),
    )
    for fit_rows, held_rows in folds:
        fit_texts, held_texts = [texts[i] for i in fit_rows], [texts[i] for i in held_rows]
        reference = tuned_reference().fit(fit_texts, y[fit_rows])
        started = time.perf_counter()
        out.reference[held_rows] = reference.predict(held_texts)
        out.clock(REFERENCE, time.perf_counter() - started)
        fit = (fit_texts, y[fit_rows])
        out.text_logits[held_rows], seconds = text_logits(params, fit, held_texts, n_classes, seed)
        out.clock("text", seconds)
        if variant is not None:
            out.variant_logits[held_rows], seconds = text_logits(
                variant, fit, held_texts, n_classes, seed
            )
            out.clock("text*", seconds)
        held_photos = held_rows[photos.has_photo[held_rows]]
        out.image_logits[held_photos] = image_head_logits(
            frame, y, photos, (fit_rows, held_rows), params["train_image"], seed
        )
    return out


def calibrated_answers(
    repeat: Repeat, y: np.ndarray, photos: Photos, params: dict, seed: int, variant: bool = False
) -> dict[str, np.ndarray]:
    """Each model's predicted class per product: text and image calibrated on the repeat's
    out-of-fold logits, the fusion's weight chosen on the other folds (nested). With `variant`,
    the text model and fusion of the --set params, named "text*" and "fusion*"."""
    has_photo = photos.has_photo
    logits = repeat.variant_logits if variant else repeat.text_logits
    text = softmax(logits, fit_temperature(logits, y))
    image = np.full_like(text, np.nan)
    logits = repeat.image_logits[has_photo]
    image[has_photo] = softmax(logits, fit_temperature(logits, y[has_photo]))
    fused = text.copy()
    for choose, apply in StratifiedKFold(5, shuffle=True, random_state=seed + 1).split(text, y):
        fusion = fit_fusion(
            text[choose], image[choose], has_photo[choose], y[choose], params["train_fusion"], seed
        )
        fused[apply] = fusion.combine(text[apply], image[apply], has_photo[apply])
    if variant:
        return {"text*": text.argmax(1), "fusion*": fused.argmax(1)}
    image_class = np.where(has_photo, np.nan_to_num(image).argmax(1), -1)
    return {
        REFERENCE: repeat.reference,
        "text": text.argmax(1),
        "image": image_class,
        "fusion": fused.argmax(1),
    }


def main(
    repeats: int = typer.Option(3, min=1),
    folds: int = typer.Option(5, min=2),
    sample_dir: Path = config.SAMPLE_DIR,
    seed: int = 0,
    out: Path | None = typer.Option(None, help="Also write the figures here (JSON)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="A params.yaml change to compare with the defaults, paired on the same folds "
        "(tokenize / train_text / train_fusion sections): --set tokenize.min_df=2",
    ),
) -> None:
    config.setup_logging("WARNING")
    params = config.load_params()
    variant = with_changes(params, set_) if set_ else None
    frame = labelled_products(sample_dir)
    y = frame["label"].to_numpy()
    photos = photo_features(frame, params["train_image"])
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    splits = list(splitter.split(frame, y))
    answers: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    with vector_cache():  # every repeat and fold encodes the same texts: once is enough
        for number in tqdm(range(repeats), desc="repeats"):
            fold_splits = splits[number * folds : (number + 1) * folds]
            repeat = run_repeat(frame, photos, fold_splits, params, seed, variant)
            for name, value in repeat.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + value
            found = calibrated_answers(repeat, y, photos, params, seed)
            if variant is not None:
                found |= calibrated_answers(repeat, y, photos, variant, seed, variant=True)
            for name, classes in found.items():
                answers.setdefault(name, []).append(classes)
    stacked = {name: np.stack(columns, axis=1) for name, columns in answers.items()}
    rows = summarise(y, stacked, photos.has_photo)
    # Prediction time per product, in batches (the batch command's case): the image model's is
    # the backbone pass per photo (its head costs next to nothing); the fusion pays both.
    costs = {name: 1000 * value / (len(y) * repeats) for name, value in seconds.items()}
    costs["image"] = 1000 * photos.seconds / max(int(photos.has_photo.sum()), 1)
    for name, changed in (("text", params), ("text*", variant)):
        # A sentence encoder's vectors are cached by text: its cost per text comes on top.
        for encoder in encoder_names((changed or {}).get("tokenize", {})):
            if name in costs:
                costs[name] += milliseconds_per_text(encoder) or 0.0
    for text, fusion in (("text", "fusion"), ("text*", "fusion*")):
        if text in costs:
            costs[fusion] = costs[text] + costs["image"] * photos.has_photo.mean()
    table = render(rows, repeats, folds, costs)
    machine = describe_machine()
    print(
        f"\n{len(frame)} labelled products, {int(photos.has_photo.sum())} with a photo; {machine}"
    )
    print(table)
    if set_:
        print("text*, fusion*: with " + ", ".join(set_))
    if out is not None:
        result = {"repeats": repeats, "folds": folds, "seed": seed, "rows": rows, "set": set_,
                  "ms_per_product": costs, "machine": machine}  # fmt: skip
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
