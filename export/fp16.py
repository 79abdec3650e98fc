"""fp32 ONNX -> fp16 ONNX by graph-level conversion, keeping the numerically fragile parts in fp32.

A small converter of our own: onnxconverter-common 1.16's ``convert_float_to_float16`` fails
("The downstream node of the second cast node should be graph output") as soon as the nodes that
produce the graph outputs are kept in fp32, which is exactly what this bundle needs.

How it works: every node is assigned fp16 or fp32; an fp16 node gets fp16 copies of its float
initializers and a Cast on every float input coming from an fp32 producer (and the other way round);
the graph input (uint8) and outputs (fp32) keep their types. A node runs in fp16 only when its op type is
in ``FP16_OPS`` (ops whose fp16 arithmetic is ordinary and whose float inputs are all of one type) and
it is not kept in fp32 by name. Kept in fp32:

- the score/map tail recorded at export (reconstruction error or feature distance, upsampling, Gaussian
  blur, max): it turns tiny differences into the score itself, and fp16's 11-bit mantissa would
  quantise the map that the threshold is applied to;
- everything not in ``FP16_OPS``: normalisation statistics (LayerNormalization), softmax, long
  reductions (ReduceMean/ReduceSum/ReduceL2), Pow/Exp/Log, and any op we have not looked at.

The accuracy gate (``export.gate``) decides whether this is good enough for a given model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export import ExportError
from export.onnx_export import tail_nodes

# Ops that run in fp16 unless their node is in the tail. All their float inputs share one type T,
# except those listed in FP32_INPUTS.
FP16_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization",
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Erf", "Gelu",
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Resize",
        "Concat", "Reshape", "Transpose", "Flatten", "Slice", "Split", "Squeeze", "Unsqueeze",
        "Gather", "Pad", "Identity", "Expand", "Tile", "Where",
    }
)  # fmt: skip
FP32_INPUTS = {"Resize": {1, 2}}  # roi and scales are float32 whatever the data type
FP16_MAX = 65504.0


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """elem_type of every tensor whose type shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _fp16_nodes(graph: onnx.GraphProto, keep_fp32_nodes: set[str]) -> set[int]:
    return {
        i
        for i, node in enumerate(graph.node)
        if node.op_type in FP16_OPS and node.name not in keep_fp32_nodes and not node.domain
    }


class _Caster:
    """Creates (once per tensor and target type) the Cast nodes and fp16 initializer copies."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.made: dict[tuple[str, int], str] = {}
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert before node index, node)

    def get(self, name: str, to: int, before: int) -> str:
        key = (name, to)
        if key in self.made:
            return self.made[key]
        suffix = "_fp16" if to == TensorProto.FLOAT16 else "_fp32"
        new = f"{name}{suffix}"
        if name in self.inits and self.inits[name].data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(self.inits[name])
            clipped = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
            self.graph.initializer.append(numpy_helper.from_array(clipped, new))
        else:
            self.new_nodes.append(
                (before, helper.make_node("Cast", [name], [new], to=to, name=f"{new}/Cast"))
            )
        self.made[key] = new
        return new


def _convert(model: onnx.ModelProto, keep_fp32_nodes: set[str]) -> onnx.ModelProto:
    types = _float_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.value_info[:]
    half = _fp16_nodes(graph, keep_fp32_nodes)
    produced_half: set[str] = set()  # float tensors now carried in fp16
    caster = _Caster(graph)
    for i, node in enumerate(graph.node):
        want_half = i in half
        skip = FP32_INPUTS.get(node.op_type, set()) if want_half else set()
        for j, name in enumerate(node.input):
            if not name or j in skip:
                continue
            is_half = name in produced_half
            if types.get(name) != TensorProto.FLOAT and not is_half:
                continue  # ints, bools, uint8 image, unknown: leave as they are
            if want_half and not is_half:
                node.input[j] = caster.get(name, TensorProto.FLOAT16, i)
            elif not want_half and is_half:
                node.input[j] = caster.get(name, TensorProto.FLOAT, i)
        if want_half:
            produced_half.update(o for o in node.output if types.get(o) == TensorProto.FLOAT)
    _cast_outputs_back(graph, produced_half)
    for offset, (before, cast) in enumerate(sorted(caster.new_nodes, key=lambda t: t[0])):
        graph.node.insert(before + offset, cast)
    _drop_unused_initializers(graph)
    return out


def _cast_outputs_back(graph: onnx.GraphProto, produced_half: set[str]) -> None:
    """Graph outputs stay fp32: rename an fp16 producer's output and Cast it back under the old name."""
    for out in graph.output:
        if out.name not in produced_half:
            continue
        inner = f"{out.name}_fp16"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        graph.node.append(
            helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=f"{out.name}/Cast")
        )


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for node in graph.node for i in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fp16_from_onnx(model: onnx.ModelProto, keep_fp32_nodes: Iterable[str] | None = None) -> onnx.ModelProto:
    """Return an fp16 copy of ``model``; ``keep_fp32_nodes`` defaults to the tail recorded at export."""
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in model.graph.node
        for attr in n.attribute
    ):
        raise ExportError(
            "fp16 conversion does not handle graphs with sub-graphs (If/Loop); export without --fp16"
        )
    keep = set(tail_nodes(model) if keep_fp32_nodes is None else keep_fp32_nodes)
    converted = _convert(model, keep)
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(converted, strict_mode=True))
    except Exception as exc:  # checker/inference errors mean the conversion produced an inconsistent graph
        raise ExportError(f"fp16 conversion produced an invalid graph ({type(exc).__name__}: {exc})") from exc
    return converted


def fp16_from_file(fp32_path: Path, out_path: Path) -> Path:
    """Convert the fp32 ONNX at ``fp32_path`` and save it to ``out_path``."""
    onnx.save(fp16_from_onnx(onnx.load(str(fp32_path))), str(out_path))
    return Path(out_path)
