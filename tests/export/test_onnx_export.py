"""Checkpoint -> ONNX: the graph computes what torch computes, with the bundle's interface; fp16
conversion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import ExportError
from export.fp16 import fp16_from_file, fp16_from_onnx
from export.gate import onnx_outputs
from export.onnx_export import (
    DEFAULT_OPSET,
    check_opset,
    inference_module,
    load_onnx,
    normalized_input,
    normalized_range,
    onnx_from_checkpoint,
    tail_nodes,
)
from tests.export import SIZE, TinyModel
from training.checkpoint import load_checkpoint
from training.synthetic import defective_part, good_part


@pytest.fixture(scope="module")
def exported(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("onnx")
    fp32 = onnx_from_checkpoint(tiny_model.checkpoint, out / "model.fp32.onnx")
    return fp32, fp16_from_file(fp32, out / "model.fp16.onnx")


def _images(kind: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "random":
        return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    parts = [good_part(rng, SIZE) if i % 2 == 0 else defective_part(rng, SIZE).image for i in range(n)]
    return np.stack([cv2.cvtColor(p, cv2.COLOR_BGR2RGB) for p in parts])


def _torch(tiny_model: TinyModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    module = inference_module(load_checkpoint(tiny_model.checkpoint))
    with torch.no_grad():
        s, m = module(torch.from_numpy(images))
    return s.numpy(), m.numpy()


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind", ["random", "parts"])
def test_fp32_onnx_equals_torch(
    tiny_model: TinyModel, exported: tuple[Path, Path], kind: str, batch: int
) -> None:
    images = _images(kind, batch)
    ref_s, ref_m = _torch(tiny_model, images)
    sess = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    s, m = sess.run(["score", "anomaly_map"], {"image": images})
    assert s.shape == (batch,) and m.shape == (batch, SIZE, SIZE)
    assert np.abs(s - ref_s).max() <= 1e-4 * np.abs(ref_s).max()
    assert np.abs(m - ref_m).max() <= 1e-4 * np.abs(ref_m).max()
    assert np.abs(ref_s).max() > 0  # a model that outputs zeros would pass the comparison trivially


def test_graph_has_the_bundle_interface(exported: tuple[Path, Path]) -> None:
    model = load_onnx(exported[0])
    assert model.opset_import[0].version == DEFAULT_OPSET
    assert model.ir_version <= 8  # TensorRT 8.5's parser
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert isinstance(dims[0], str) and dims[1:] == [SIZE, SIZE, 3]
    outs = {o.name: o for o in model.graph.output}
    assert set(outs) == {"score", "anomaly_map"}
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in outs.values())
    # reflect-pad amounts are folded into initializers (TensorRT 8.5 requires constant pads)
    inits = {i.name for i in model.graph.initializer}
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1] in inits for n in pads)


def test_tail_and_normalised_input_are_recorded(tiny_model: TinyModel, exported: tuple[Path, Path]) -> None:
    model = onnx.load(str(exported[0]))
    tail = tail_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[name] for name in tail} >= {"Conv", "Pad", "ReduceMax", "Sub", "Pow", "ReduceMean"}
    assert not any("encoder" in name or "decoder" in name for name in tail)
    name = normalized_input(model)
    producer = next(n for n in model.graph.node if name in n.output)
    assert producer.name.startswith("/normalize/")
    pre = load_checkpoint(tiny_model.checkpoint).preprocess
    low, high = normalized_range(pre)
    assert low == pytest.approx((0 - 0.485) / 0.229) and high == pytest.approx((1 - 0.406) / 0.225)


def test_fp16_runs_on_cpu_keeps_io_and_tail_in_fp32(exported: tuple[Path, Path]) -> None:
    fp16 = onnx.load(str(exported[1]))
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in fp16.graph.output)
    half = [i for i in fp16.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert len(half) >= 18  # every encoder/decoder conv weight
    tail = set(tail_nodes(onnx.load(str(exported[0]))))
    inits = {i.name: i for i in fp16.graph.initializer}
    in_tail = [n for n in fp16.graph.node if n.name in tail]
    assert len(in_tail) == len(tail)
    for node in in_tail:
        assert all(inits[i].data_type != TensorProto.FLOAT16 for i in node.input if i in inits), node.name
    images = _images("parts", 4)
    s32, m32 = onnx_outputs(exported[0], images)
    s16, m16 = onnx_outputs(exported[1], images)
    assert np.abs(s16 - s32).max() <= 0.02 * np.abs(s32).max()
    assert np.corrcoef(m16.ravel(), m32.ravel())[0, 1] > 0.999
    assert not np.array_equal(s16, s32)  # it really computed in fp16 somewhere


def test_fp16_converter_on_a_hand_built_graph() -> None:
    """Resize keeps its float32 scales, Softmax stays fp32, and a blocked node keeps its fp32 weight."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest", name="resize"),
        helper.make_node("Softmax", ["r"], ["sm"], axis=1, name="softmax"),
        helper.make_node("Conv", ["sm", "w2"], ["y"], name="kept"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    half = fp16_from_onnx(model, keep_fp32_nodes=["kept"])
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["w_fp16"] == TensorProto.FLOAT16
    assert inits["scales"] == TensorProto.FLOAT and inits["w2"] == TensorProto.FLOAT
    softmax = next(n for n in half.graph.node if n.op_type == "Softmax")
    assert softmax.input[0].endswith("_fp32")  # fed through a Cast back to fp32
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]

    np.testing.assert_allclose(run(half), run(model), rtol=2e-2, atol=2e-3)


def test_opset_outside_the_supported_range_is_refused(tiny_model: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 11 is not supported"):
        check_opset(11)
    with pytest.raises(ExportError, match="TensorRT 8.5"):
        onnx_from_checkpoint(tiny_model.checkpoint, tmp_path / "m.onnx", opset=99)
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_onnx_is_a_clear_error(exported: tuple[Path, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(exported[0].read_bytes()[:5000])
    with pytest.raises(ExportError, match="not a valid ONNX model"):
        load_onnx(broken)
    with pytest.raises(ExportError, match="onnxruntime cannot load"):
        onnx_outputs(broken, _images("random", 1))
    with pytest.raises(ExportError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
