"""What every Keras model of the project shares: seeds, class weights, the fit loop, inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rakuten_classifier.config import logger


def set_seeds(seed: int) -> None:
    """Same seed, same data, same machine: same Keras model (Python, NumPy and TensorFlow
    seeds; op determinism costs little on CPU). Called before a Keras model is built."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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

    def __call__(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        import tensorflow as tf

        outputs = [
            self._forward(tf.convert_to_tensor(inputs[start : start + batch_size])).numpy()
            for start in range(0, len(inputs), batch_size)
        ]
        if not outputs:
            return np.zeros((0, self.model.output_shape[-1]), dtype=np.float32)
        return np.concatenate(outputs)


def log_scores(live: Any, prefix: str, scores: dict[str, float]) -> None:
    """Final scores into the stage's DVCLive metrics.json (what `dvc exp show` lists)."""
    for name, value in scores.items():
        live.log_metric(f"{prefix}/{name}", value, plot=False)
