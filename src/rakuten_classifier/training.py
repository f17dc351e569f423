"""What every Keras model of the project shares: seeds, compilation, class weights, the fit
loop, inference, and saving to a file whose bytes depend only on the model."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_path


def set_seeds(seed: int) -> None:
    """Same seed, same data, same machine: same Keras model (Python, NumPy and TensorFlow
    seeds; op determinism costs little on CPU). Called before a Keras model is built."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_classifier(model: Any, learning_rate: float) -> None:
    """Adam on sparse cross-entropy. No XLA: it compiles for the CPU it runs on, and the same
    training would then give other weights on another machine."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count): each class weighs the same in the loss whatever its size."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return {k: float(w) for k, w in enumerate(weights)}


def open_live(stage_dir: Path) -> Any:
    """A DVCLive logger for one stage: the stage's dvc.yaml entry declares its files."""
    from dvclive import Live

    live = Live(dir=str(stage_dir), dvcyaml=False, save_dvc_exp=False)
    # dvc.yaml declares the per-epoch plots folder; a model without epochs leaves it empty.
    (Path(stage_dir) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    return live


def fit_keras(
    model: Any,
    train_data: Any,
    val_data: Any | None,
    *,
    epochs: int,
    patience: int,
    class_weight: dict[int, float] | None,
    live: Any = None,
    verbose: int = 2,
) -> int:
    """Fit and return the number of epochs worth keeping.

    With validation data: early stopping on the validation loss, the best epoch's weights kept.
    Without (the final refit on every labelled product): exactly `epochs` epochs, the count
    the validated run found best. Per-epoch losses and accuracies go to DVCLive.
    """
    import keras

    callbacks: list[Any] = []
    if val_data is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience, restore_best_weights=True
            )
        )
    if live is not None:
        from dvclive.keras import DVCLiveCallback

        class EpochLogger(DVCLiveCallback):
            def on_train_end(self, logs: dict | None = None) -> None:
                """The stage ends the logger itself, after logging its final metrics."""

        callbacks.append(EpochLogger(live=live))
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipelines shuffle themselves, reproducibly
        verbose=verbose,
    ).history
    best = int(np.argmin(history["val_loss"])) + 1 if "val_loss" in history else epochs
    logger.info("trained %d epoch(s), keeping %d", len(history["loss"]), best)
    return best


class InferenceFunction:
    """A Keras model's forward pass traced once as a graph for any batch size.

    Eager calls run layer by layer in Python (over 100 ms for one photo through MobileNet);
    `model.predict` sets up a whole data pipeline per call. One traced function serves the
    one-product requests of the API and the batches of the pipeline alike.
    """

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.model = model
        spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype)
        self._forward = tf.function(
            lambda inputs: model(inputs, training=False), input_signature=[spec]
        )

    @property
    def width(self) -> int:
        return int(self.model.output_shape[-1])

    def __call__(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        import tensorflow as tf

        outputs = [
            self._forward(tf.convert_to_tensor(inputs[start : start + batch_size])).numpy()
            for start in range(0, len(inputs), batch_size)
        ]
        if not outputs:
            return np.zeros((0, self.width), dtype=np.float32)
        return np.concatenate(outputs)


def log_scores(live: Any, prefix: str, scores: dict[str, float]) -> None:
    """Final scores into the stage's DVCLive metrics.json (what `dvc exp show` lists)."""
    for name, value in scores.items():
        live.log_metric(f"{prefix}/{name}", value, plot=False)


# --- saving -------------------------------------------------------------------------------------

# Zip member dates of a saved model: fixed, so the file depends only on the model.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _renumber_shared_objects(node: Any, numbers: dict[int, int]) -> None:
    """Keras names objects shared between layers by their memory address (`id()`): the same
    model saved twice gets other numbers. Number them in order of appearance instead."""
    if isinstance(node, dict):
        if "shared_object_id" in node:
            node["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers))
        for value in node.values():
            _renumber_shared_objects(value, numbers)
    elif isinstance(node, list):
        for value in node:
            _renumber_shared_objects(value, numbers)


def _canonical_keras_archive(path: Path) -> None:
    """Rewrite a `.keras` file without what changes from one save to the next: the save date in
    metadata.json, memory addresses in config.json, member dates in the zip."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    metadata = json.loads(members["metadata.json"])
    metadata.pop("date_saved", None)
    members["metadata.json"] = json.dumps(metadata, sort_keys=True).encode()
    config = json.loads(members["config.json"])
    _renumber_shared_objects(config, {})
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])


def save_keras_model(model: Any, path: Path) -> None:
    """Save a Keras model atomically as a `.keras` file whose bytes depend only on the model:
    the same training gives the same file, which DVC then records once."""
    with atomic_path(path) as tmp:
        model.save(tmp)
        _canonical_keras_archive(tmp)
