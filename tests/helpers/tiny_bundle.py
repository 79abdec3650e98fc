"""A real, tiny bundle built without torch, for the daemon's and backends' tests.

The model is a hand-built ONNX graph (opset 17) that behaves like a reconstruction model whose
"reconstruction" is always the mean good part:

    image uint8 [N,H,W,3] -> float -> mean over channels of |x - reference| / 255
                          -> fixed depthwise Gaussian blur (same size) -> anomaly_map [N,H,W]
                          -> ReduceMax over H,W                        -> score [N]

``reference`` is the mean of generated good parts (``training.synthetic.good_part``) in the model's colour
order (RGB). Normalisation and the threshold are computed like calibration does, from other good parts, so
generated defects score clearly above the threshold and good parts below it (checked in
tests/edge/test_backend_onnxruntime.py). That separation holds for input sizes >= 96; smaller bundles are for
plumbing tests only (the generated parts' jitter is then as large as the defects).

Precisions: ``fp32`` (the graph above), ``fp16`` (same maths in float16, outputs cast back to float32) and
``int8`` (the fp32 graph with symmetric int8 Q/DQ on the difference map and the blur weights, as TensorRT
expects from an explicitly quantized model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.trust.manifest import MANIFEST_NAME, Manifest, sha256_file
from training.synthetic import defective_part, good_part

OPSET = 17
REFERENCE_SEED = 1234
CALIBRATION_SEED = 4321
N_REFERENCE = 16
N_CALIBRATION = 16
BLUR_SIGMA_AT_128 = 3.5
THRESHOLD = 4.0  # normalised units; good parts land near [-1, 1], generated defects far above


def good_parts_rgb(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` generated good parts as uint8 RGB (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([cv2.cvtColor(good_part(rng, size), cv2.COLOR_BGR2RGB) for _ in range(n)])


def defective_parts_rgb(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` generated defective parts (alternating blob / scratch) as uint8 RGB."""
    rng = np.random.default_rng(seed)
    kinds = ("blob", "scratch")
    return np.stack(
        [cv2.cvtColor(defective_part(rng, size, kinds[i % 2]).image, cv2.COLOR_BGR2RGB) for i in range(n)]
    )


def default_reference(size: int) -> np.ndarray:
    """Mean of generated good parts, float32 RGB (size, size, 3)."""
    return good_parts_rgb(N_REFERENCE, size, REFERENCE_SEED).astype(np.float32).mean(axis=0)


def blur_sigma(size: int) -> float:
    """Blur width scales with the image so defects stay as prominent at any input size."""
    return max(1.0, BLUR_SIGMA_AT_128 * size / 128.0)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian as a Conv weight [1, 1, k, k], k = 2 * ceil(2 sigma) + 1."""
    half = int(np.ceil(2 * sigma))
    ax = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(ax**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)[None, None]


def reference_scores(images: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph's maths in numpy (float64), to check any backend against: (scores (N,), maps (N,H,W))."""
    diff = np.abs(images.astype(np.float64) - reference.astype(np.float64)).mean(axis=3) / 255.0
    kernel = gaussian_kernel(blur_sigma(images.shape[1]))[0, 0].astype(np.float64)
    maps = np.stack([cv2.filter2D(d, -1, kernel, borderType=cv2.BORDER_CONSTANT) for d in diff])
    return maps.max(axis=(1, 2)).astype(np.float32), maps.astype(np.float32)


def _with_ballast(graph: onnx.GraphProto, ballast_mb: int) -> None:
    """Add ``ballast_mb`` MiB of float32 weights that every run reads one element of (times 0, so scores are
    unchanged). No optimiser can fold it away (the element depends on the batch size), so each loaded copy
    of the model holds that much memory: what the changeover's memory tests measure."""
    n = ballast_mb * 1024 * 1024 // 4
    ballast = np.random.default_rng(ballast_mb).random(n, dtype=np.float32)
    graph.initializer.extend([
        numpy_helper.from_array(ballast, "ballast"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i64"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f32"),
    ])  # fmt: skip
    score = graph.output[0].name  # "score": rename its producer's output and add the ballast term
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == score:
                node.output[i] = "score_plain"
    graph.node.extend([
        helper.make_node("Shape", ["image"], ["n"], start=0, end=1),
        helper.make_node("Sub", ["n", "one_i64"], ["last"]),
        helper.make_node("Gather", ["ballast", "last"], ["picked"]),
        helper.make_node("Mul", ["picked", "zero_f32"], ["nothing"]),
        helper.make_node("Add", ["score_plain", "nothing"], [score]),
    ])  # fmt: skip


def _graph(reference: np.ndarray, precision: str, ballast_mb: int = 0) -> onnx.ModelProto:
    h, w = reference.shape[:2]
    kernel = gaussian_kernel(blur_sigma(h))
    compute = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    np_compute = np.float16 if precision == "fp16" else np.float32
    inits = [
        numpy_helper.from_array(reference.astype(np_compute), "reference"),
        numpy_helper.from_array(np.array(1.0 / 255.0, np_compute), "inv255"),
        numpy_helper.from_array(kernel.astype(np_compute), "blur"),
    ]
    pad = kernel.shape[-1] // 2
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=compute),
        helper.make_node("Sub", ["x", "reference"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("ReduceMean", ["ad"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Mul", ["m", "inv255"], ["m01"]),
        helper.make_node("Transpose", ["m01"], ["nchw"], perm=[0, 3, 1, 2]),
    ]
    conv_in, conv_w = "nchw", "blur"
    if precision == "int8":
        inits += [
            numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "act_scale"),
            numpy_helper.from_array(np.array(float(kernel.max()) / 127.0, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["nchw", "act_scale", "zp"], ["nchw_q"]),
            helper.make_node("DequantizeLinear", ["nchw_q", "act_scale", "zp"], ["nchw_dq"]),
            helper.make_node("QuantizeLinear", ["blur", "w_scale", "zp"], ["blur_q"]),
            helper.make_node("DequantizeLinear", ["blur_q", "w_scale", "zp"], ["blur_dq"]),
        ]
        conv_in, conv_w = "nchw_dq", "blur_dq"
    nodes += [
        helper.make_node("Conv", [conv_in, conv_w], ["blurred"], pads=[pad, pad, pad, pad]),
        helper.make_node("Flatten", ["blurred"], ["flat"], axis=2),  # [N, H*W]
        helper.make_node("ReduceMax", ["flat"], ["score_c"], axes=[1], keepdims=0),
        helper.make_node("Reshape", ["blurred", "map_shape"], ["map_c"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, h, w], np.int64), "map_shape"))
    if precision == "fp16":
        nodes += [
            helper.make_node("Cast", ["map_c"], ["anomaly_map"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["score_c"], ["score"], to=TensorProto.FLOAT),
        ]
    else:
        nodes += [
            helper.make_node("Identity", ["map_c"], ["anomaly_map"]),
            helper.make_node("Identity", ["score_c"], ["score"]),
        ]
    graph = helper.make_graph(
        nodes,
        f"tiny-reference-{precision}",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", h, w, 3])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", h, w]),
        ],
        initializer=inits,
    )
    if ballast_mb and precision != "fp16":
        _with_ballast(graph, ballast_mb)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny_bundle"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.10 and TensorRT 8.5
    onnx.checker.check_model(model)
    return model


def _run_fp32(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"image": images})[0]


def make_tiny_bundle(
    out_dir: Path,
    size: int = 128,
    reference: np.ndarray | None = None,
    precisions: Sequence[str] = ("fp32",),
    max_batch: int = 8,
    threshold: float = THRESHOLD,
    ballast_mb: int = 0,
) -> Path:
    """Write a complete bundle (ONNX files + manifest.json) to ``out_dir`` and return it.

    ``reference``: HxWx3 in RGB order (any numeric dtype); default is the mean of 16 generated good parts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = default_reference(size) if reference is None else np.asarray(reference, np.float32)
    if ref.shape != (size, size, 3):
        raise ValueError(f"reference must be ({size}, {size}, 3), got {ref.shape}")
    unknown = sorted(set(precisions) - {"fp32", "fp16", "int8"})
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; use fp32, fp16 or int8")
    models = {p: _graph(ref, p, ballast_mb) for p in precisions}
    fp32 = models["fp32"] if "fp32" in models else _graph(ref, "fp32")
    raw = _run_fp32(fp32, good_parts_rgb(N_CALIBRATION, size, CALIBRATION_SEED))
    offset = float(np.median(raw))
    spread = float(np.quantile(raw, 0.99)) - offset
    scale = spread if spread > 1e-4 else max(abs(offset) * 0.1, 1e-3)

    entries = {}
    for precision, model in models.items():
        name = f"model.{precision}.onnx"
        onnx.save(model, str(out_dir / name))
        entries[precision] = {"file": name, "sha256": sha256_file(out_dir / name)}
    manifest = Manifest.model_validate(
        {
            "model": {
                "name": "tiny-reference",
                "kind": "tiny-reference",
                "checkpoint_sha256": hashlib.sha256(ref.tobytes()).hexdigest(),
                "config": {"blur_sigma": blur_sigma(size)},
            },
            "input": {
                "height": size,
                "width": size,
                "color_order": "RGB",
                "mean": [0.0, 0.0, 0.0],
                "std": [255.0, 255.0, 255.0],
                "max_batch": max_batch,
            },
            "outputs": {"score": "score", "anomaly_map": "anomaly_map"},
            "normalization": {
                "offset": offset,
                "scale": scale,
                "method": "good-quantiles",
                "n_images": N_CALIBRATION,
            },
            "threshold": {"default": threshold, "method": "fixed"},
            "precisions": entries,
            "opset": OPSET,
            "exporter": {"tiny_bundle": "1", "onnx": onnx.__version__},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    (out_dir / MANIFEST_NAME).write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2), encoding="utf-8"
    )
    return out_dir
