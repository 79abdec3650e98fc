"""Checkpoint -> ONNX with the whole job in the graph: uint8 NHWC image in, raw score and anomaly map out.

The traced function is ``training.graph.InferenceModel`` (normalisation, the model, the map head), so the
graph computes exactly what evaluation measured. Uses torch's TorchScript exporter (``dynamo=False``): it
needs no extra packages and writes opset 17, which TensorRT 8.5 (JetPack 5) parses; the dynamo exporter
would need onnxscript. ``onnxslim`` then folds the shape arithmetic the tracer leaves behind (e.g. the
reflect-padding amounts become initializers, which older TensorRT parsers require).

The names of the "tail" nodes (the map head and the model's own distance maths, i.e. nodes that belong to
no learned sub-module) are recorded in the ONNX metadata, so the fp16 and int8 steps can keep them in
fp32 without importing torch or guessing from op types.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto
from torch import nn

from edge.capture.preprocess import Preprocess
from export import ExportError
from training.anomaly_map import MapHead
from training.checkpoint import Checkpoint, load_checkpoint
from training.graph import InferenceModel
from training.models.base import TrainableModel

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
MAX_OPSET = 20  # newest opset torch's TorchScript exporter writes
TRT85_MAX_OPSET = 17  # JetPack 5's TensorRT 8.5 parser
INPUT_NAME = "image"
SCORE_NAME = "score"
MAP_NAME = "anomaly_map"
TAIL_KEY = "edge_anomaly.tail_nodes"
NORMALIZED_KEY = "edge_anomaly.normalized_input"  # the float image after mean/std, the model's input
INT8_FLOAT_KEY = "edge_anomaly.int8_float_nodes"  # nodes of sub-modules the model keeps out of int8
INT8_FLOAT_ATTR = "int8_keep_float"  # optional model attribute: names of sub-modules to keep out of int8
TRACE_BATCH = 2  # >1 so nothing batch-specific is baked in; the batch axis is dynamic anyway


def inference_module(checkpoint: Checkpoint) -> InferenceModel:
    """The function that gets exported and that the gate compares against, in eval mode."""
    return InferenceModel(checkpoint.model, checkpoint.preprocess).eval()


def tail_scope_patterns(module: nn.Module) -> list[str]:
    """Regexes for the ONNX node names of the tail of ``module`` (an InferenceModel).

    The TorchScript exporter names nodes by module path ("/model/head/blur/Conv"); nodes created by the
    model's own ``forward`` (reconstruction error, feature distances) sit directly in "/model/", and those
    of a model that is part of another (``gtrans-knn``'s two) directly in "/model/<part>/".
    """
    patterns = [r"^/model/[^/]+$"]
    for name, sub in module.named_modules():
        scope = "^/" + re.escape(name.replace(".", "/")) + "/"
        if isinstance(sub, MapHead):
            patterns.append(scope)
        elif isinstance(sub, TrainableModel) and name.startswith("model."):
            patterns.append(scope + "[^/]+$")
    return patterns


def _metadata(model: onnx.ModelProto, key: str) -> str | None:
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in list(model.metadata_props):
        if prop.key == key:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def int8_float_patterns(module: nn.Module) -> list[str]:
    """Regexes for the nodes of the sub-modules the model lists in ``int8_keep_float``.

    A model sets e.g. ``int8_keep_float = ("teacher",)`` when int8 noise in that part is itself measured
    as anomaly (a frozen teacher whose features the student must match). The sub-module has to be
    *called* (``self.teacher(x)``) for its nodes to be scoped under its name in the graph.
    """
    inner = getattr(module, "model", module)
    patterns = []
    for name in getattr(inner, INT8_FLOAT_ATTR, ()):
        try:
            inner.get_submodule(name)
        except AttributeError as exc:
            raise ExportError(
                f"the model's {INT8_FLOAT_ATTR} names {name!r}, which is not one of its sub-modules"
            ) from exc
        patterns.append("^/model/" + re.escape(name.replace(".", "/")) + "/")
    return patterns


def int8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the model asked to keep out of int8 (empty for most models)."""
    value = _metadata(model, INT8_FLOAT_KEY)
    return list(json.loads(value)) if value else []


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes recorded as the score/map tail at export time (empty for foreign graphs)."""
    value = _metadata(model, TAIL_KEY)
    return list(json.loads(value)) if value else []


def normalized_input(model: onnx.ModelProto) -> str | None:
    """Name of the tensor holding the normalised float image (None for foreign graphs)."""
    return _metadata(model, NORMALIZED_KEY)


def normalized_range(pre: Preprocess) -> tuple[float, float]:
    """The range every normalised pixel lies in: uint8 0..255 through the mean/std of ``pre``."""
    low = min((0.0 - m) / s for m, s in zip(pre.mean, pre.std, strict=True))
    high = max((1.0 - m) / s for m, s in zip(pre.mean, pre.std, strict=True))
    return float(low), float(high)


def _matching(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    return [n.name for n in model.graph.node if any(re.search(p, n.name) for p in patterns)]


def _record_structure(model: onnx.ModelProto, module: nn.Module) -> None:
    """Store the tail, the int8-float nodes and the normalised-input tensor name in the model's metadata."""
    _set_metadata(model, TAIL_KEY, json.dumps(_matching(model, tail_scope_patterns(module))))
    keep_float = int8_float_patterns(module)
    if keep_float:
        names = _matching(model, keep_float)
        if not names:
            asked = getattr(getattr(module, "model", module), INT8_FLOAT_ATTR)
            raise ExportError(
                f"the model asks to keep {asked} out of int8, but no graph node is scoped under it: "
                "the sub-module must be called (module(x)), not one of its methods"
            )
        _set_metadata(model, INT8_FLOAT_KEY, json.dumps(names))
    inside = [n for n in model.graph.node if n.name.startswith("/normalize/")]
    consumed_outside = {i for n in model.graph.node if not n.name.startswith("/normalize/") for i in n.input}
    leaving = [o for n in inside for o in n.output if o in consumed_outside]
    if len(leaving) == 1:
        _set_metadata(model, NORMALIZED_KEY, leaving[0])


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
            f"(default {DEFAULT_OPSET}; TensorRT 8.5 on JetPack 5 parses up to {TRT85_MAX_OPSET})."
        )
    return opset


def _trace_input(pre: Preprocess) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (TRACE_BATCH, pre.height, pre.width, 3), dtype=torch.uint8, generator=gen)


def _check_module_outputs(module: nn.Module, x: torch.Tensor, pre: Preprocess) -> None:
    with torch.no_grad():
        out = module(x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExportError(f"the model must return (score, anomaly_map); it returned {type(out).__name__}")
    score, amap = out
    want_map = (x.shape[0], pre.height, pre.width)
    if tuple(score.shape) != (x.shape[0],) or tuple(amap.shape) != want_map:
        raise ExportError(
            f"model outputs have shapes score {tuple(score.shape)}, anomaly_map {tuple(amap.shape)}; "
            f"expected "
            f"({x.shape[0]},) and {want_map} for a {pre.height}x{pre.width} input. The checkpoint's model "
            "config and its preprocess size disagree; re-train or fix the checkpoint."
        )


def _torch_export(module: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The tracer warns about the static shape checks in MapHead/ConvDecoder (sizes are fixed by the
        # checkpoint) and that the TorchScript exporter is legacy; neither is actionable for the user.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[SCORE_NAME, MAP_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, SCORE_NAME: {0: "N"}, MAP_NAME: {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError as exc:
        raise ExportError(
            "edge-export needs onnxslim to fold the traced shape arithmetic (TensorRT 8.5 needs constant "
            "padding amounts). Install it with: pip install 'edge-anomaly[train]'"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(model)
    if not isinstance(slim, onnx.ModelProto):
        raise ExportError(f"onnxslim returned {type(slim).__name__}, expected an ONNX model")
    return slim


def onnx_from_module(
    module: nn.Module, pre: Preprocess, path: Path, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Export an InferenceModel to ``path`` (fp32), fold constants, check, and return the saved model."""
    check_opset(opset)
    path = Path(path)
    x = _trace_input(pre)
    module = module.eval()
    _check_module_outputs(module, x, pre)
    _torch_export(module, x, path, opset)
    model = _slim(onnx.load(str(path)))
    if opset <= TRT85_MAX_OPSET:
        model.ir_version = min(model.ir_version, 8)  # IR 8 = onnx 1.12, what TensorRT 8.5's parser reads
    _record_structure(model, module)
    model.producer_name = "edge-anomaly"
    check_graph_io(model, pre)
    onnx.save(model, str(path))
    return model


def onnx_from_checkpoint(checkpoint: Checkpoint | Path, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Checkpoint (or its file) -> fp32 ONNX at ``path``: uint8 NHWC ``image`` -> ``score``,
    ``anomaly_map``."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(Path(checkpoint))
    onnx_from_module(inference_module(ckpt), ckpt.preprocess, Path(path), opset)
    return Path(path)


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; a truncated or foreign file raises ExportError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, checker ValidationError, ... all mean "unusable file"
        raise ExportError(
            f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]}). "
            "It may be truncated or corrupt; export it again with edge-export."
        ) from exc
    return model


def _dims(value_info: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_graph_io(model: onnx.ModelProto, pre: Preprocess) -> None:
    """The graph's contract with the daemon: names, dtypes and shapes of the input and both outputs."""
    onnx.checker.check_model(model)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    problems = []
    image = inputs.get(INPUT_NAME)
    if image is None or image.type.tensor_type.elem_type != TensorProto.UINT8:
        problems.append(f"input '{INPUT_NAME}' of type uint8")
    elif _dims(image)[1:] != [pre.height, pre.width, 3] or isinstance(_dims(image)[0], int):
        problems.append(
            f"input shape [N, {pre.height}, {pre.width}, 3] with a dynamic N, found {_dims(image)}"
        )
    for name, rank in ((SCORE_NAME, 1), (MAP_NAME, 3)):
        out = outputs.get(name)
        if out is None or out.type.tensor_type.elem_type != TensorProto.FLOAT or len(_dims(out)) != rank:
            problems.append(f"float32 output '{name}' of rank {rank}")
    if problems:
        raise ExportError(
            f"exported graph does not have the bundle's interface: expected {'; '.join(problems)}"
        )
