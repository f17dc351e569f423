"""Prediction speed of a bundle against reference paths measured in the same run (`make bench`
prints it after the pipeline; `make bench-speed` measures an existing bundle).

- photo path: the batch command's loop (`predict_frame`: photos read, decoded in draft mode in
  a thread beside the models, LiteRT; the sentence vectors read from the sentence_vectors
  stage) on the sample's products with a photo, against the
  issue's naive reference (full-size decode, then a Keras EfficientNetB0 forward in batches of
  32) and against the bundle's own Keras runtime;
- text path: the text model alone on the sample's texts, products per second (start-up
  excluded; its sentence encoders' vectors read from the sentence_vectors stage, each encoder
  timed on its own), against the same model counting n-grams with scikit-learn's loops, and
  the whole text-only command on 1,000 products (50 with an encoder), start-up included;
- the physical view: the photo model's FLOPs per photo, the machine's float32 peak measured by a
  matrix product on every core, and the share of it the photo path reaches.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from rakuten_classifier import config
from rakuten_classifier.bundle import Bundle, load_bundle, predict_frame
from rakuten_classifier.data import image_paths, read_products
from rakuten_classifier.preprocess import product_text, read_photo
from rakuten_classifier.sentence_encoder import encode, vector_cache
from rakuten_classifier.text import StableTfidfVectorizer
from rakuten_classifier.training import InferenceFunction

REPEATS = 3  # the median of this many timed passes, after one warm-up
TEXT_REPEATS = 9  # the text model's passes take a fifth of a second: more of them, steadier
REFERENCE_BATCH = 32
COMMAND_ROWS = 1000
ENCODER_COMMAND_ROWS = 50  # products of the text-only command for a bundle with an encoder
ENCODER_TEXTS = 64  # texts each sentence encoder is timed on


def median_seconds(work: Any, repeats: int = REPEATS) -> float:
    with contextlib.redirect_stderr(io.StringIO()):
        work()  # warm-up: traced functions, caches, page cache
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars
            work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def sample_frame(sample: Path) -> pd.DataFrame:
    products = read_products(sample / config.X_TRAIN_CSV)
    products["image_path"] = image_paths(products, sample / config.IMAGE_TRAIN_DIR)
    products["has_photo"] = [Path(path).exists() for path in products["image_path"]]
    return products


def reference_forward(size: int) -> Any:
    """The naive reference: Keras EfficientNetB0 (random weights: the same arithmetic as
    trained ones, nothing downloaded), traced, in batches of 32."""
    import keras

    return InferenceFunction(
        keras.applications.EfficientNetB0(
            include_top=True, weights=None, input_shape=(size, size, 3), classes=27
        )
    )


def reference_photo_path(paths: list[str], size: int, forward: Any) -> None:
    for first in range(0, len(paths), REFERENCE_BATCH):
        batch = []
        for path in paths[first : first + REFERENCE_BATCH]:
            with Image.open(io.BytesIO(read_photo(path))) as image:
                batch.append(np.asarray(image.convert("RGB").resize((size, size))))
        forward(np.stack(batch).astype(np.float32), REFERENCE_BATCH)


def photo_path(bundle: Bundle, keras_bundle: Bundle, photos: pd.DataFrame) -> dict[str, float]:
    """Products per second with a photo: the bundle (its runtime), its Keras reference, and
    the naive reference path."""
    forward = reference_forward(bundle.image.image_size)
    paths = photos["image_path"].tolist()
    seconds = {
        "bundle": median_seconds(lambda: predict_frame(bundle, photos)),
        "bundle_keras": median_seconds(lambda: predict_frame(keras_bundle, photos)),
        "naive": median_seconds(
            lambda: reference_photo_path(paths, bundle.image.image_size, forward)
        ),
    }
    return {name: len(photos) / value for name, value in seconds.items()}


def flops_per_photo(keras_bundle: Bundle) -> float:
    """Floating-point operations of the photo model on one photo (TensorFlow's profiler on
    the frozen graph of its Keras reference: multiply and add counted apart)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler import model_analyzer, option_builder

    model, size = keras_bundle.image.model, keras_bundle.image.image_size
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, size, size, 3), tf.float32)
    )
    graph = convert_variables_to_constants_v2(concrete).graph
    options = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()
    ).with_empty_output()
    return float(model_analyzer.profile(graph, options=options.build()).total_float_ops)


def peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 peak as numpy's BLAS reaches it on every core: 2 n^3 flops."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / median_seconds(lambda: a @ a, repeats) / 1e9


def without_fast_counts(text_model: Any) -> Any:
    """A copy of the text model that counts its n-grams with scikit-learn's own loops."""
    reference = copy.deepcopy(text_model)
    for _, block in reference.pipeline.named_steps["tfidf"].transformer_list:
        if isinstance(block, StableTfidfVectorizer):
            block._ngram_index = None
    return reference


def text_path(bundle: Bundle, products: pd.DataFrame) -> dict[str, float]:
    """Products per second of the text model, and of its copy with scikit-learn's n-gram loops.
    The sentence encoders are timed on their own (ms a text, ENCODER_TEXTS texts): here their
    vectors come from the sentence_vectors stage, as the cost of everything else is measured."""
    texts = [
        product_text(title, description)
        for title, description in zip(products["designation"], products["description"], strict=True)
    ]
    figures = {}
    with vector_cache(config.SENTENCE_DIR):  # texts it lacks: encoded once, in the warm-up
        for name, model in (("", bundle.text), ("_reference", without_fast_counts(bundle.text))):
            seconds = median_seconds(
                lambda model=model: model.predict_proba(texts), repeats=TEXT_REPEATS
            )
            figures[f"text{name}_products_per_s"] = len(texts) / seconds
    max_chars = bundle.manifest["params"]["tokenize"].get("sentence_encoder_max_chars", 500)
    some = [text[:max_chars] for text in texts[:ENCODER_TEXTS]]
    for encoder in bundle.sentence_encoders:
        seconds = median_seconds(lambda encoder=encoder: encode(encoder, some), repeats=1)
        figures[f"encoder_{encoder}_ms"] = 1000 * seconds / len(some)
    return figures


def text_command_seconds(
    bundle_dir: Path, products: pd.DataFrame, scratch: Path, rows: int
) -> float:
    """`rakuten-classifier predict` on `rows` products without a photo, start-up included
    (the median of three runs)."""
    chosen = pd.concat([products] * (rows // len(products) + 1)).head(rows)
    chosen = chosen.drop(columns=["image_path", "has_photo"]).reset_index(drop=True)
    chosen.to_csv(scratch / "text_only.csv")
    (scratch / "no_photos").mkdir(exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("rakuten-classifier")),
        "predict",
        "--x-csv",
        str(scratch / "text_only.csv"),
        "--image-dir",
        str(scratch / "no_photos"),
        "--bundle",
        str(bundle_dir),
        "--out",
        str(scratch / "text_only_predictions.csv"),
    ]
    return median_seconds(
        lambda: subprocess.run(command, check=True, capture_output=True), repeats=REPEATS
    )


def measure(bundle_dir: Path, sample: Path) -> dict[str, float]:
    bundle = load_bundle(bundle_dir)
    products = sample_frame(sample)
    photos = products[products["has_photo"]]
    figures: dict[str, float] = {}
    # With a sentence encoder the command pays e5's quarter of a second a product: fewer rows.
    rows = ENCODER_COMMAND_ROWS if bundle.sentence_encoders else COMMAND_ROWS
    with tempfile.TemporaryDirectory(prefix="rakuten-speed-") as scratch:
        figures["text_command_s"] = text_command_seconds(bundle_dir, products, Path(scratch), rows)
    figures["text_command_rows"] = rows
    figures |= text_path(bundle, products)
    if bundle.image is not None:
        keras_bundle = load_bundle(bundle_dir, image_runtime="keras")
        # The sentence encoders' vectors read here too: they are timed on their own, and e5's
        # quarter of a second would otherwise be all this figure shows.
        with vector_cache(config.SENTENCE_DIR):
            for name, value in photo_path(bundle, keras_bundle, photos).items():
                figures[f"photo_products_per_s_{name}"] = value
        figures["photo_gflops"] = flops_per_photo(keras_bundle) / 1e9
        figures["peak_gflops"] = peak_gflops()
        figures["photo_path_gflops"] = (
            figures["photo_products_per_s_bundle"] * figures["photo_gflops"]
        )
    figures["photos"], figures["products"] = len(photos), len(products)
    return {name: round(value, 3) for name, value in figures.items()}


def report_rows(figures: dict[str, float], previous: dict[str, float]) -> list[list[str]]:
    """The table `make bench` prints: each figure, its reference in this run and their ratio,
    and the figure of the previous run on this machine."""

    def row(
        label: str, key: str, digits: int, reference: float | None = None, share: bool = False
    ) -> list[str]:
        value, before = figures[key], previous.get(key)
        ratio = "" if reference is None else f"{value / reference:.2f}x"
        if share and reference:
            ratio = f"{value / reference:.0%}"
        shown = "" if reference is None else f"{reference:.{digits}f}"
        was = "" if before is None else f"{before:.{digits}f}"
        return [label, f"{value:.{digits}f}", shown, ratio, was]

    rows = [
        row(
            "text model alone (sentence vectors read), products/s vs scikit-learn's n-gram loops",
            "text_products_per_s",
            0,
            figures["text_reference_products_per_s"],
        ),
        *(
            row(f"sentence encoder {key.split('_')[1]}, ms a text", key, 1)
            for key in figures
            if key.startswith("encoder_")
        ),
        row(
            f"text-only command, {figures['text_command_rows']:.0f} products, s",
            "text_command_s",
            2,
        ),
    ]
    if "photo_products_per_s_bundle" in figures:
        for name, label in (("naive", "the naive reference"), ("bundle_keras", "Keras runtime")):
            rows.append(
                row(
                    f"with a photo, products/s vs {label}",
                    "photo_products_per_s_bundle",
                    1,
                    figures[f"photo_products_per_s_{name}"],
                )
            )
        gflops = figures["photo_gflops"]
        rows.append(
            row(
                f"photo path GFLOP/s ({gflops:.2f} GFLOP a photo) vs float32 BLAS peak",
                "photo_path_gflops",
                0,
                figures["peak_gflops"],
                share=True,
            )
        )
    return rows
