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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import typer
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
from rakuten_classifier.metrics import bootstrap_interval, weighted_f1_score
from rakuten_classifier.text import fit_text_model, fit_tokenizers
from rakuten_classifier.training import InferenceFunction

REFERENCE = "reference (tuned TF-IDF + LinearSVC)"


def tuned_reference() -> object:
    """The 20-line baseline the sealed set measured the bundle against."""
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    return make_pipeline(
        FeatureUnion([("words", words), ("chars", chars)]),
        LinearSVC(C=0.5, class_weight="balanced"),
    )


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
    seconds: dict[str, float] = field(default_factory=dict)

    def clock(self, name: str, since: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - since


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


def run_repeat(
    frame: pd.DataFrame, photos: Photos, folds: list[tuple], params: dict, seed: int
) -> Repeat:
    y, texts = frame["label"].to_numpy(), frame["text"].tolist()
    n_classes = int(y.max()) + 1
    out = Repeat(
        np.zeros(len(y), dtype=int),
        np.zeros((len(y), n_classes)),
        np.full((len(y), n_classes), np.nan),
    )
    for fit_rows, held_rows in folds:
        fit_texts, held_texts = [texts[i] for i in fit_rows], [texts[i] for i in held_rows]
        reference = tuned_reference().fit(fit_texts, y[fit_rows])
        started = time.perf_counter()
        out.reference[held_rows] = reference.predict(held_texts)
        out.clock(REFERENCE, started)
        text_model, _ = fit_text_model(
            params["train_text"],
            fit_tokenizers(fit_texts, params["tokenize"]),
            (fit_texts, y[fit_rows]),
            None,
            n_classes,
            seed,
            epochs=params["train_text"]["cnn"]["epochs"],
        )
        started = time.perf_counter()
        out.text_logits[held_rows] = text_model.logits(held_texts)
        out.clock("text", started)
        held_photos = held_rows[photos.has_photo[held_rows]]
        out.image_logits[held_photos] = image_head_logits(
            frame, y, photos, (fit_rows, held_rows), params["train_image"], seed
        )
    return out


def calibrated_answers(repeat: Repeat, y: np.ndarray, photos: Photos, params: dict, seed: int):
    """Each model's predicted class per product: text and image calibrated on the repeat's
    out-of-fold logits, the fusion's weight chosen on the other folds (nested)."""
    has_photo = photos.has_photo
    text = softmax(repeat.text_logits, fit_temperature(repeat.text_logits, y))
    image = np.full_like(text, np.nan)
    logits = repeat.image_logits[has_photo]
    image[has_photo] = softmax(logits, fit_temperature(logits, y[has_photo]))
    fused = text.copy()
    for choose, apply in StratifiedKFold(5, shuffle=True, random_state=seed + 1).split(text, y):
        fusion = fit_fusion(
            text[choose], image[choose], has_photo[choose], y[choose], params["train_fusion"], seed
        )
        fused[apply] = fusion.combine(text[apply], image[apply], has_photo[apply])
    image_class = np.where(has_photo, np.nan_to_num(image).argmax(1), -1)
    return {
        REFERENCE: repeat.reference,
        "text": text.argmax(1),
        "image": image_class,
        "fusion": fused.argmax(1),
    }


def mean_f1(y: np.ndarray, answers: np.ndarray) -> float:
    """The mean over repeats (columns) of the weighted F1."""
    return float(np.mean([weighted_f1_score(y, answers[:, r]) for r in range(answers.shape[1])]))


def paired_gain(y: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    return mean_f1(y, first) - mean_f1(y, second)


def summarise(y: np.ndarray, answers: dict[str, np.ndarray], has_photo: np.ndarray) -> list:
    """One row per model and product subset: mean F1 over repeats, its interval, and the paired
    difference to the reference (to the text model for the fusion on products with a photo)."""
    rows = []
    subsets = {"all": np.ones(len(y), bool), "with photo": has_photo}
    comparisons: list[tuple[str, str, str]] = [
        (REFERENCE, "all", ""), ("text", "all", REFERENCE), ("fusion", "all", REFERENCE),
        (REFERENCE, "with photo", ""), ("text", "with photo", REFERENCE),
        ("image", "with photo", REFERENCE), ("fusion", "with photo", REFERENCE),
        ("fusion", "with photo", "text"),
    ]  # fmt: skip
    for model, subset, against in comparisons:
        keep = subsets[subset]
        truth, mine = y[keep], answers[model][keep]
        row = {"model": model, "products": subset, "n": int(keep.sum())}
        row["weighted_f1"] = round(mean_f1(truth, mine), 4)
        row["f1_interval"] = [round(v, 4) for v in bootstrap_interval(mean_f1, truth, mine)]
        if against:
            theirs = answers[against][keep]
            row["against"] = against
            row["difference"] = round(paired_gain(truth, mine, theirs), 4)
            interval = bootstrap_interval(paired_gain, truth, mine, theirs)
            row["difference_interval"] = [round(v, 4) for v in interval]
        rows.append(row)
    return rows


def render(rows: list, repeats: int, folds: int, costs: dict[str, float]) -> str:
    def points(value: float) -> str:
        return f"{value * 100:+.1f}"

    lines = [
        f"| model | products | weighted F1 ({repeats} x {folds}-fold) | 95% interval | "
        "paired difference (points) | 95% interval | prediction ms per product |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for row in rows:
        f1 = f"{row['weighted_f1']:.4f}"
        f1_ci = "{:.3f} to {:.3f}".format(*row["f1_interval"])
        difference = (
            f"{points(row['difference'])} vs {row['against']}" if "difference" in row else ""
        )
        low_high = row.get("difference_interval")
        interval = f"{points(low_high[0])} to {points(low_high[1])}" if low_high else ""
        cost = f"{costs[row['model']]:.1f}" if row["model"] in costs else ""
        cells = [row["model"], f"{row['products']} ({row['n']})", f1, f1_ci, difference]
        lines.append("| " + " | ".join([*cells, interval, cost]) + " |")
    return "\n".join(lines)


def main(
    repeats: int = typer.Option(3, min=1),
    folds: int = typer.Option(5, min=2),
    sample_dir: Path = config.SAMPLE_DIR,
    seed: int = 0,
    out: Path | None = typer.Option(None, help="Also write the figures here (JSON)."),
) -> None:
    config.setup_logging("WARNING")
    params = config.load_params()
    frame = labelled_products(sample_dir)
    y = frame["label"].to_numpy()
    photos = photo_features(frame, params["train_image"])
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    splits = list(splitter.split(frame, y))
    answers: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for number in tqdm(range(repeats), desc="repeats"):
        repeat = run_repeat(
            frame, photos, splits[number * folds : (number + 1) * folds], params, seed
        )
        for name, value in repeat.seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
        for name, classes in calibrated_answers(repeat, y, photos, params, seed).items():
            answers.setdefault(name, []).append(classes)
    stacked = {name: np.stack(columns, axis=1) for name, columns in answers.items()}
    rows = summarise(y, stacked, photos.has_photo)
    # Prediction time per product, in batches (the batch command's case): the image model's is
    # the backbone pass per photo (its head costs next to nothing); the fusion pays both.
    costs = {name: 1000 * value / (len(y) * repeats) for name, value in seconds.items()}
    costs["image"] = 1000 * photos.seconds / max(int(photos.has_photo.sum()), 1)
    costs["fusion"] = costs["text"] + costs["image"] * photos.has_photo.mean()
    table = render(rows, repeats, folds, costs)
    machine = describe_machine()
    print(
        f"\n{len(frame)} labelled products, {int(photos.has_photo.sum())} with a photo; {machine}"
    )
    print(table)
    if out is not None:
        result = {"repeats": repeats, "folds": folds, "seed": seed, "rows": rows,
                  "ms_per_product": costs, "machine": machine}  # fmt: skip
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
