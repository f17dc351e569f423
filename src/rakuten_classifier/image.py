"""Images: the one decoder every path shares, the tf.data pipeline, and the image classifier.

`decode_image` turns a photo's bytes into the model's input. The training pipeline, evaluation,
the batch command and the API all call it, so a photo looks the same to the model everywhere.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_path, read_json, write_json
from rakuten_classifier.fusion import softmax
from rakuten_classifier.training import InferenceFunction

# Formats Pillow decodes safely and that product photos come in.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
# Above this a file is treated as a decompression bomb, before any pixel is decoded.
MAX_PIXELS = 40_000_000
# Product photos have white backgrounds: pad to a square with white rather than distort.
PAD_COLOR = (255, 255, 255)


class ImageError(ValueError):
    """A photo that cannot be used; `kind` says why, for API status codes and metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def inspect_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, tuple[int, int]]:
    """Format and size from the header alone (cheap): rejects non-images, unknown formats
    and decompression bombs without decoding any pixel."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, size = image.format, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        if isinstance(error, Image.DecompressionBombError):
            raise ImageError("too_many_pixels", f"image too large to decode ({error})") from error
        raise ImageError("not_an_image", "not an image Pillow can read") from error
    except OSError as error:
        raise ImageError("corrupt", f"unreadable image header ({error})") from error
    if image_format not in SUPPORTED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"unsupported image format {image_format}; use one of {sorted(SUPPORTED_FORMATS)}",
        )
    if size[0] * size[1] > max_pixels:
        raise ImageError(
            "too_many_pixels", f"{size[0]}x{size[1]} pixels is over the limit of {max_pixels}"
        )
    return image_format, size


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Photo bytes to a `size x size x 3` uint8 RGB array: EXIF orientation applied, padded
    to a square with white, resized bilinearly. Raises ImageError on anything unusable."""
    inspect_image(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for 500 -> 224.
            image.draft("RGB", (size, size))
            image = ImageOps.exif_transpose(image).convert("RGB")
            image = ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=PAD_COLOR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError("corrupt", f"cannot decode image ({error})") from error


def image_dataset(
    paths: list[str], labels: np.ndarray, size: int, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """A tf.data pipeline that reads and decodes photos in parallel, streaming from disk.

    Photos that fail to decode at training time (rare: make_dataset already dropped unreadable
    ones) are skipped with a warning rather than stopping a long training run.
    """
    import tensorflow as tf

    def load(path: bytes) -> np.ndarray:
        return decode_image(Path(path.decode()).read_bytes(), size)

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
    known = ["small_cnn", *applications]
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
    return keras.Sequential(steps, name="augmentation")


def build_image_model(n_classes: int, params: dict[str, Any]) -> Any:
    """Photo (float RGB 0-255) in, class probabilities out: augmentation, backbone, head."""
    import keras
    from keras import layers

    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = build_augmentation(params.get("augment") or {})(inputs)
    x = build_backbone(params["backbone"], params.get("weights"), size)(x)
    x = layers.Dropout(params["dropout"])(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"image_{params['backbone']}")
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class ImageModel:
    """A trained Keras image classifier and the input size its decoder must produce."""

    MODEL_FILE = "model.keras"

    def __init__(self, model: Any, image_size: int, temperature: float = 1.0) -> None:
        self.model = model
        self.image_size = image_size
        self.temperature = temperature
        self.forward = InferenceFunction(model)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        probabilities = self.forward(pixels.astype(np.float32), 32)
        return np.log(probabilities.astype(np.float64) + 1e-12)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.logits(pixels), self.temperature)

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.image_size)


def load_pixels(paths: list[str], size: int) -> np.ndarray:
    """Decode photos from disk into one array (evaluation-sized sets, not the full data)."""
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for row, path in enumerate(paths):
        pixels[row] = decode_image(Path(path).read_bytes(), size)
    return pixels


def save_image_model(model: ImageModel, out_dir: Path, extra: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / ImageModel.MODEL_FILE) as tmp:
        model.model.save(tmp)
    write_json(
        out_dir / IMAGE_MODEL_JSON,
        {"image_size": model.image_size, "temperature": model.temperature, **extra},
    )


def load_image_model(model_dir: Path) -> ImageModel:
    import keras

    spec = read_json(model_dir / IMAGE_MODEL_JSON)
    logger.debug("loading image model from %s", model_dir)
    model = keras.models.load_model(model_dir / ImageModel.MODEL_FILE)
    return ImageModel(model, int(spec["image_size"]), float(spec["temperature"]))


def train(
    params: dict[str, Any], seed: int, processed_dir: Path, out_dir: Path, live: Any = None
) -> dict[str, float]:
    """The train_image stage: fit on the train photos, calibrate on the validation photos,
    save, and return the validation scores (on products that have a photo)."""
    from rakuten_classifier.data import load_labels, load_split
    from rakuten_classifier.fusion import fit_temperature
    from rakuten_classifier.metrics import classification_scores
    from rakuten_classifier.training import balanced_class_weights, fit_keras, set_seeds

    set_seeds(seed)
    n_classes = len(load_labels(processed_dir).codes)
    splits = {name: load_split(name, processed_dir) for name in ("train", "val")}
    splits = {name: frame[frame["has_image"]] for name, frame in splits.items()}
    for name, frame in splits.items():
        if frame.empty:
            raise ValueError(f"no usable photo in the {name} split: cannot train an image model")
    size = params["image_size"]

    def dataset(frame: Any, shuffle: bool) -> Any:
        paths, labels = frame["image_path"].tolist(), frame["label"].to_numpy()
        return image_dataset(paths, labels, size, params["batch_size"], shuffle, seed)

    network = build_image_model(n_classes, params)
    labels = splits["train"]["label"].to_numpy()
    class_weight = (
        balanced_class_weights(labels, n_classes)
        if params.get("class_weight") == "balanced"
        else None
    )
    fit_keras(
        network,
        dataset(splits["train"], shuffle=True),
        dataset(splits["val"], shuffle=False),
        epochs=params["epochs"],
        patience=params["patience"],
        class_weight=class_weight,
        live=live,
    )
    model = ImageModel(network, size)
    val_pixels = load_pixels(splits["val"]["image_path"].tolist(), size)
    val_y = splits["val"]["label"].to_numpy()
    model.temperature = fit_temperature(model.logits(val_pixels), val_y)
    scores = classification_scores(val_y, model.predict_proba(val_pixels).argmax(axis=1))
    save_image_model(model, out_dir, {"backbone": params["backbone"], "weights": params["weights"]})
    logger.info("image model: validation %s (temperature %.3g)", scores, model.temperature)
    return scores
