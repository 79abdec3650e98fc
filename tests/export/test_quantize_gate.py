"""INT8 Q/DQ quantization and the accuracy gate, on the tiny trained model and on hand-made numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from calibration.int8 import (
    CalibrationError,
    ImageBatchReader,
    Int8Options,
    quantize_int8,
    select_evenly,
)
from calibration.scores import normalization_from_good
from export import ExportError
from export.fp16 import fp16_from_file
from export.gate import (
    DEFAULT_LIMITS,
    GateLimits,
    GateSet,
    compare,
    failures,
    format_table,
    judge,
    map_pearson,
    run_gate,
    torch_outputs,
)
from export.onnx_export import (
    inference_module,
    int8_float_nodes,
    normalized_input,
    normalized_range,
    onnx_from_checkpoint,
    tail_nodes,
)
from tests.export import TinyModel
from training.checkpoint import load_checkpoint
from training.data import load_images, load_test_set


@dataclass
class Exported:
    models: dict[str, Path]
    module: object
    gate_set: GateSet
    reference: tuple[np.ndarray, np.ndarray]
    normalized_input: str
    input_range: tuple[float, float]


@pytest.fixture(scope="module")
def exported(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    out = tmp_path_factory.mktemp("quant")
    ckpt = load_checkpoint(tiny_model.checkpoint)
    pre = ckpt.preprocess
    fp32 = onnx_from_checkpoint(ckpt, out / "model.fp32.onnx")
    model = onnx.load(str(fp32))
    name = normalized_input(model)
    calib = load_images(ckpt.data["train_files"], pre)
    int8 = quantize_int8(
        fp32, out / "model.int8.onnx", calib, tail_nodes(model), fixed_ranges={name: normalized_range(pre)}
    )
    fp16 = fp16_from_file(fp32, out / "model.fp16.onnx")
    val = load_images(ckpt.data["val_files"], pre)
    test_images, _, test_labels, _, _ = load_test_set(tiny_model.data, pre)
    images = np.concatenate([val, test_images])
    labels = np.concatenate([np.zeros(len(val), np.int64), test_labels])
    module = inference_module(ckpt)
    ref = torch_outputs(module, images)
    scale = normalization_from_good(ref[0][: len(val)]).scale
    gate_set = GateSet(images=images, good=labels == 0, labels=labels, scale=scale)
    return Exported(
        models={"fp32": fp32, "fp16": fp16, "int8": int8},
        module=module,
        gate_set=gate_set,
        reference=ref,
        normalized_input=name,
        input_range=normalized_range(pre),
    )


def test_fp16_and_int8_pass_the_gate_on_the_trained_model(exported: Exported) -> None:
    report = run_gate(exported.module, exported.models, exported.gate_set, reference=exported.reference)
    table = format_table(report)
    assert report.passed, table
    m = {p: r.metrics for p, r in report.results.items()}
    assert m["fp32"]["score_err_max"] < 1e-3 and m["fp32"]["map_pearson_min"] > 0.99999
    assert m["fp32"]["auroc_ref"] > 0.9  # the test model does detect the generated defects
    assert m["fp16"]["auroc_drop_pt"] <= 0.2 and m["fp16"]["map_pearson_mean"] >= 0.98
    assert m["int8"]["auroc_drop_pt"] <= 0.5 and m["int8"]["map_pearson_mean"] >= 0.95
    assert m["int8"]["good_score_err_mean"] <= 0.5
    assert m["int8"]["score_err_max"] > 0  # int8 really differs from fp32: the gate is measuring something
    assert report.n_defects == 8 and report.n_good == int(exported.gate_set.good.sum())
    assert "pass" in table and "FAIL" not in table


def _qdq_nodes(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")], inits


def test_int8_graph_has_tensorrt_style_qdq(exported: Exported) -> None:
    int8 = onnx.load(str(exported.models["int8"]))
    qdq, inits = _qdq_nodes(int8)
    assert qdq
    for node in qdq:  # symmetric int8: every zero point is an int8 zero
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    producers = {o: n for n in int8.graph.node for o in n.output}
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    tail = set(tail_nodes(int8))
    for conv in convs:
        fed_by_dq = [i in producers and producers[i].op_type == "DequantizeLinear" for i in conv.input[:2]]
        assert all(fed_by_dq) != (conv.name in tail), conv.name  # quantized iff not in the tail
        if conv.name not in tail:
            weight_dq = producers[conv.input[1]]
            n_out = inits[producers[weight_dq.input[0]].input[0]].shape[0]
            assert inits[weight_dq.input[1]].shape == (n_out,)  # per-channel weight scales
            assert len(conv.input) < 3 or conv.input[2] in inits  # float bias, not int32 DQ
    # the normalised image keeps its full a-priori range, not the good parts' range
    in_scales = [inits[n.input[1]] for n in qdq if n.input[0] == exported.normalized_input]
    assert in_scales and all(
        float(s) == pytest.approx(max(map(abs, exported.input_range)) / 127) for s in in_scales
    )
    # the tail's own inputs come from float tensors, never from a DequantizeLinear
    for node in int8.graph.node:
        if node.name in tail:
            assert all(
                producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input
            )


def _break_weight_scales(src: Path, dst: Path, factor: float) -> Path:
    """A Q/DQ bug: every weight DequantizeLinear uses ``factor`` x the scale its QuantizeLinear used."""
    model = onnx.load(str(src))
    qdq, inits = _qdq_nodes(model)
    weight_q_out = {n.output[0] for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] in inits}
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in weight_q_out]
    assert weight_dq
    for node in weight_dq:
        name = f"{node.input[1]}_broken"
        model.graph.initializer.append(
            numpy_helper.from_array(inits[node.input[1]] * np.float32(factor), name)
        )
        node.input[1] = name
    onnx.save(model, str(dst))
    return dst


def test_broken_quantization_fails_the_gate_with_a_table(exported: Exported, tmp_path: Path) -> None:
    broken = _break_weight_scales(exported.models["int8"], tmp_path / "model.int8.onnx", 2.0)
    report = run_gate(
        exported.module,
        {"fp32": exported.models["fp32"], "int8": broken},
        exported.gate_set,
        reference=exported.reference,
    )
    assert report.results["fp32"].passed
    assert not report.passed and report.failed() == ["int8"]
    table = format_table(report)
    assert "int8" in table and "FAIL" in table and "map_pearson_mean" in table
    assert report.results["int8"].metrics["map_pearson_mean"] < DEFAULT_LIMITS["int8"].min_map_pearson_mean


def test_calibration_on_absurd_images_fails_the_gate(exported: Exported, tmp_path: Path) -> None:
    gray = np.full((8, 64, 64, 3), 128, np.uint8)
    model = onnx.load(str(exported.models["fp32"]))
    bad = quantize_int8(exported.models["fp32"], tmp_path / "gray.onnx", gray, tail_nodes(model))
    report = run_gate(exported.module, {"int8": bad}, exported.gate_set, reference=exported.reference)
    assert not report.passed
    assert failures(report.results["int8"])


def test_percentile_calibration_also_runs(exported: Exported, tmp_path: Path) -> None:
    calib = exported.gate_set.images[:5]  # 5 images: an uneven last batch broke onnxruntime's histograms
    model = onnx.load(str(exported.models["fp32"]))
    out = quantize_int8(
        exported.models["fp32"],
        tmp_path / "p.onnx",
        calib,
        tail_nodes(model),
        Int8Options(method="percentile"),
    )
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_model_can_keep_a_sub_module_out_of_int8(tiny_model: TinyModel, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_model.checkpoint)
    ckpt.model.int8_keep_float = ("encoder",)
    fp32 = onnx_from_checkpoint(ckpt, tmp_path / "model.fp32.onnx")
    model = onnx.load(str(fp32))
    kept = int8_float_nodes(model)
    assert kept and all(name.startswith("/model/encoder/") for name in kept)
    int8 = onnx.load(
        str(quantize_int8(fp32, tmp_path / "q.onnx", tiny_calib(tiny_model), tail_nodes(model) + kept))
    )
    producers = {o: n.op_type for n in int8.graph.node for o in n.output}
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    quantized = {name for name, n in convs.items() if producers.get(n.input[0]) == "DequantizeLinear"}
    assert quantized and all("/decoder/" in name for name in quantized)
    assert not any(name in quantized for name in kept)
    ckpt.model.int8_keep_float = ("no_such_part",)
    with pytest.raises(ExportError, match="not one of its sub-modules"):
        onnx_from_checkpoint(ckpt, tmp_path / "other.onnx")


def tiny_calib(tiny_model: TinyModel) -> np.ndarray:
    ckpt = load_checkpoint(tiny_model.checkpoint)
    return load_images(ckpt.data["train_files"][:8], ckpt.preprocess)


def test_reader_and_selection() -> None:
    images = np.zeros((5, 16, 16, 3), np.uint8)
    reader = ImageBatchReader(images, batch_size=2)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["image"]))
    assert sizes == [2, 2, 1]
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(CalibrationError, match="no calibration images"):
        ImageBatchReader(images[:0])
    with pytest.raises(CalibrationError, match="uint8"):
        ImageBatchReader(images.astype(np.float32))
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Int8Options(method="magic").calibrate_method()
    assert select_evenly(list(range(10)), 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9 -> rounded
    assert select_evenly(list(range(4)), 200) == [0, 1, 2, 3]
    assert select_evenly(list(range(4)), None) == [0, 1, 2, 3]


def test_map_pearson_hand_checked() -> None:
    ref = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    cand = np.array([[[0.0, 2.0], [4.0, 6.0]], [[5.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # image 0: a scaled copy (r = 1); image 1: flat reference, skipped; image 2: flat candidate (r = 0)
    assert map_pearson(ref, cand) == pytest.approx([1.0, 0.0])


def test_compare_and_judge_hand_checked() -> None:
    gate_set = GateSet(
        images=np.zeros((4, 16, 16, 3), np.uint8), good=np.array([True, True, False, False]),
        labels=np.array([0, 0, 1, 1]), scale=0.5,
    )  # fmt: skip
    maps = np.random.default_rng(0).random((4, 16, 16))
    ref = (np.array([0.1, 0.2, 0.9, 1.0]), maps)
    cand = (np.array([0.1, 0.3, 0.25, 1.0]), maps)  # good #2 off by 0.1 = 0.2 units; defect 0.9 -> 0.25
    m = compare(ref, cand, gate_set)
    assert m["good_score_err_max"] == pytest.approx(0.2) and m["good_score_err_mean"] == pytest.approx(0.1)
    assert m["score_err_max"] == pytest.approx(1.3)
    assert m["auroc_ref"] == 1.0 and m["auroc"] == 0.75 and m["auroc_drop_pt"] == pytest.approx(25.0)
    assert m["map_pearson_mean"] == pytest.approx(1.0)
    result = judge(m, GateLimits(max_auroc_drop_pt=0.5, min_map_pearson_mean=0.95))
    assert not result.passed and failures(result) == ["auroc_drop_pt 25 > 0.5"]
    assert judge(m, GateLimits(min_map_pearson_mean=0.95)).passed
    nan = compare(ref, (np.array([np.nan, 0, 0, 0]), maps), gate_set)
    assert not judge(nan, GateLimits()).passed


def test_int8_tensor_types_stay_float_at_the_outputs(exported: Exported) -> None:
    int8 = onnx.load(str(exported.models["int8"]))
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in int8.graph.output)
    assert int8.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
