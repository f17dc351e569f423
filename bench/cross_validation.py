"""Cross-validated quality on the whole labelled sample, steadier than the 132-product test split.

For every product, predictions come from models that did not see it (stratified K folds), with
the recipes of params.yaml: the reference (word TF-IDF + LinearSVC, sklearn defaults), the text
model, the image model (head on cached backbone features, early-stopped on an inner split), and
the fusion with its weight chosen on the other folds' predictions. Also the text model's
learning curve on a fixed held-out 15%.

    .venv/bin/python bench/cross_validation.py [--folds 5] [--sample-dir data/sample]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import typer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.calibration import fit_temperature, softmax
from rakuten_classifier.data import product_frame, read_labels, read_products
from rakuten_classifier.fusion import fit_fusion
from rakuten_classifier.image import (
    backbone_features,
    build_backbone,
    fit_image_model,
    is_pretrained,
)
from rakuten_classifier.text import fit_text_model, fit_tokenizers
from rakuten_classifier.training import InferenceFunction


def weighted_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    return round(float(f1_score(y, predicted, average="weighted")), 4)


def labelled_products(sample_dir: Path) -> pd.DataFrame:
    products = read_products(sample_dir / config.X_TRAIN_CSV)
    products["prdtypecode"] = read_labels(sample_dir / config.Y_TRAIN_CSV, products)
    frame = product_frame(products, sample_dir / config.IMAGE_TRAIN_DIR)
    codes = sorted(frame["prdtypecode"].unique())
    frame["label"] = frame["prdtypecode"].map({code: k for k, code in enumerate(codes)})
    return frame


def main(folds: int = 5, sample_dir: Path = config.SAMPLE_DIR, seed: int = 0) -> None:
    config.setup_logging("WARNING")
    params = config.load_params()
    frame = labelled_products(sample_dir)
    y, texts = frame["label"].to_numpy(), frame["text"].tolist()
    n_classes = int(y.max()) + 1
    has_photo = frame["has_image"].to_numpy().copy()
    image_params = params["train_image"]
    if not is_pretrained(image_params):
        raise typer.BadParameter("train_image.weights must be pretrained to use cached features")
    size = image_params["image_size"]
    forward = InferenceFunction(
        build_backbone(image_params["backbone"], image_params["weights"], size)
    )
    index, features = backbone_features(forward, frame[has_photo], size)
    photo_row = pd.Series(-1, index=frame.index)
    photo_row.loc[index] = np.arange(len(index))
    photo_row = photo_row.to_numpy()
    has_photo &= photo_row >= 0  # a photo that failed to decode counts as none

    reference = np.zeros(len(frame), dtype=int)
    text_logits = np.zeros((len(frame), n_classes))
    image_logits = np.full((len(frame), n_classes), np.nan)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in tqdm(list(splitter.split(frame, y)), desc="folds"):
        fit_texts = [texts[i] for i in fit_rows]
        held_texts = [texts[i] for i in held_rows]
        baseline = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(fit_texts, y[fit_rows])
        reference[held_rows] = baseline.predict(held_texts)
        tokenizers = fit_tokenizers(fit_texts, params["tokenize"])
        model, _ = fit_text_model(
            params["train_text"],
            tokenizers,
            (fit_texts, y[fit_rows]),
            None,
            n_classes,
            seed,
            epochs=params["train_text"]["cnn"]["epochs"],
        )
        text_logits[held_rows] = model.logits(held_texts)
        # Image head: early stopping on an inner 15% of the fold's photos, as in the stage.
        fit_photos = fit_rows[has_photo[fit_rows]]
        inner_fit, inner_val = train_test_split(
            fit_photos, test_size=0.15, stratify=y[fit_photos], random_state=seed
        )
        cached = {
            name: (features[photo_row[rows]], y[rows])
            for name, rows in (("fit", inner_fit), ("val", inner_val))
        }
        image_model, _ = fit_image_model(
            {**image_params, "fine_tune": {**image_params["fine_tune"], "blocks": 0}},
            seed,
            n_classes,
            (frame.iloc[inner_fit], cached["fit"]),
            (frame.iloc[inner_val], cached["val"]),
        )
        held_photos = held_rows[has_photo[held_rows]]
        head = image_model.model.get_layer("head")
        probabilities = InferenceFunction(head)(features[photo_row[held_photos]])
        image_logits[held_photos] = np.log(probabilities.astype(np.float64) + 1e-12)

    text = softmax(text_logits, fit_temperature(text_logits, y))
    image = np.full_like(text, np.nan)
    image[has_photo] = softmax(
        image_logits[has_photo], fit_temperature(image_logits[has_photo], y[has_photo])
    )
    # Fusion: the weight is chosen on the other folds' predictions (nested), then applied.
    fused = text.copy()
    for choose_rows, apply_rows in StratifiedKFold(
        folds, shuffle=True, random_state=seed + 1
    ).split(frame, y):
        fusion = fit_fusion(
            text[choose_rows],
            image[choose_rows],
            has_photo[choose_rows],
            y[choose_rows],
            params["train_fusion"],
            seed,
        )
        fused[apply_rows] = fusion.combine(
            text[apply_rows], image[apply_rows], has_photo[apply_rows]
        )
    rows = [
        ("reference TF-IDF words + LinearSVC", "all", weighted_f1(y, reference)),
        (f"text ({params['train_text']['model']})", "all", weighted_f1(y, text.argmax(1))),
        ("text", "with photo", weighted_f1(y[has_photo], text[has_photo].argmax(1))),
        (
            f"image ({image_params['backbone']})",
            "with photo",
            weighted_f1(y[has_photo], image[has_photo].argmax(1)),
        ),
        ("fusion", "with photo", weighted_f1(y[has_photo], fused[has_photo].argmax(1))),
        ("fusion", "all", weighted_f1(y, fused.argmax(1))),
    ]
    table = pd.DataFrame(rows, columns=["model", "products", f"{folds}-fold weighted F1"])
    print(f"\n{len(frame)} labelled products, {int(has_photo.sum())} with a photo")
    print(table.to_string(index=False))

    print("\ntext learning curve (fixed held-out 15%, 4 random splits):")
    curve = []
    for fraction in (0.5, 0.7, 0.85, 1.0):
        scores = []
        for split_seed in range(4):
            train_rows, held_rows = next(
                StratifiedShuffleSplit(1, test_size=0.15, random_state=split_seed).split(frame, y)
            )
            if fraction < 1:
                train_rows, _ = train_test_split(
                    train_rows, train_size=fraction, stratify=y[train_rows], random_state=split_seed
                )
            fit_texts = [texts[i] for i in train_rows]
            model, _ = fit_text_model(
                params["train_text"],
                fit_tokenizers(fit_texts, params["tokenize"]),
                (fit_texts, y[train_rows]),
                None,
                n_classes,
                seed,
                epochs=params["train_text"]["cnn"]["epochs"],
            )
            predicted = model.logits([texts[i] for i in held_rows]).argmax(1)
            scores.append(weighted_f1(y[held_rows], predicted))
        curve.append((len(train_rows), round(float(np.mean(scores)), 4)))
    print(pd.DataFrame(curve, columns=["training products", "weighted F1"]).to_string(index=False))


if __name__ == "__main__":
    typer.run(main)
