"""fp32 ONNX + good images -> INT8 ONNX with explicit Q/DQ, placed the way TensorRT wants it.

onnxruntime's ``quantize_static`` in QDQ format with:

- symmetric int8 activations and weights (TensorRT's int8 is symmetric: zero points must be 0),
- per-channel weights (axis 0 of Conv weights, what TensorRT uses),
- Q/DQ only on the inputs of Conv / MatMul / Gemm (TensorRT fuses a DQ -> Conv -> Q chain; everything in
  between runs in the precision TensorRT picks),
- float weights with a Q -> DQ pair (``AddQDQPairToWeight``) and float biases (``QuantizeBias`` off):
  the form TensorRT 8.5's ONNX parser accepts (it refuses an INT8 initializer as DequantizeLinear input;
  TensorRT >= 10 would take one); int32 bias dequantisation is not supported there either. So the int8 file
  is as large as the fp32 one; the engine built from it stores INT8 weights (README, "The bundle"),
- the score/map tail (``exclude_nodes``) left in float: TensorRT would run it in higher precision anyway,
  and the threshold is applied to its output.

Activation ranges come from good images only (the calibration set), never from defects: the model must
represent good parts well, and a defect's larger error saturating int8 only makes it larger.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
DEFAULT_METHOD = "minmax"
DEFAULT_CALIB_COUNT = 200
THIN_CALIBRATION = 100  # fewer good images than this: warn that the ranges may not cover the line's variation
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")

T = TypeVar("T")


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime's advice to run its pre-processing, and move its calibrators' prints to stderr.

    The pre-processing (symbolic shape inference + ORT graph optimisation) is skipped on purpose: onnxslim
    already folded constants and inferred shapes at export, ORT's symbolic inference gives up on the
    reflect-padded blur, and its optimiser would rename the tail nodes that must stay unquantized.
    """
    root = logging.getLogger()
    advice = _DropPreprocessAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.removeFilter(advice)


class CalibrationError(ValueError):
    """Calibration cannot run: no images, wrong image shape, unknown method."""


class ImageBatchReader(CalibrationDataReader):
    """Feeds uint8 NHWC good images to the graph's input in fixed-size batches."""

    def __init__(
        self, images: np.ndarray, input_name: str = "image", batch_size: int = 8, progress: bool = False
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise CalibrationError(
                f"calibration images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            raise CalibrationError("no calibration images")
        self.images = images
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._next = 0
        self._bar = _calibration_bar(len(images)) if progress else None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            if self._bar is not None:
                self._bar.close()
            return None
        batch = self.images[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        if self._bar is not None:
            self._bar.update(len(batch))
        return {self.input_name: np.ascontiguousarray(batch)}

    def rewind(self) -> None:
        self._next = 0


def _calibration_bar(total: int) -> object:
    """tqdm on stderr, as ``training.progress.bar`` (calibration does not import the training side)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total, desc="int8 calibration", unit="img", file=sys.stderr, mininterval=0.5 if tty else 10.0
    )


def select_evenly(items: Sequence[T], count: int | None) -> list[T]:
    """``count`` items spread evenly over ``items`` (all when count is None or >= len): deterministic, and
    a folder sorted by capture time contributes parts from the whole shift, not just its first hour."""
    items = list(items)
    if count is None or count >= len(items):
        return items
    if count < 1:
        raise CalibrationError(f"--calib-count must be at least 1, got {count}")
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


@dataclass(frozen=True)
class Int8Options:
    method: str = DEFAULT_METHOD
    batch_size: int = 8
    percentile: float = 99.999  # only for method="percentile"
    progress: bool = False  # a bar on stderr while the calibration images run

    def calibrate_method(self) -> CalibrationMethod:
        if self.method not in CALIBRATION_METHODS:
            raise CalibrationError(
                f"unknown calibration method {self.method!r}; use one of {', '.join(CALIBRATION_METHODS)}"
            )
        return CALIBRATION_METHODS[self.method]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    images: np.ndarray,
    exclude_nodes: Sequence[str] = (),
    options: Int8Options = Int8Options(),
    input_name: str = "image",
    fixed_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Calibrate on ``images`` (uint8 NHWC good parts) and write the Q/DQ model to ``out_path``.

    ``fixed_ranges`` (tensor name -> (min, max)) replaces calibrated ranges where the range is known a
    priori, e.g. the normalised image, which spans the whole uint8 range whatever the good parts contain:
    calibrating it on good parts would clip a bright defect before the model ever sees it.
    """
    method = options.calibrate_method()
    # onnxruntime's histogram collectors (percentile, entropy)
    # fail on a short last batch: feed them one by one
    batch = options.batch_size if options.method == "minmax" else 1
    reader = ImageBatchReader(images, input_name, batch, progress=options.progress)
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "AddQDQPairToWeight": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
    }
    if fixed_ranges:
        extra["TensorQuantOverrides"] = {
            name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
            for name, (lo, hi) in fixed_ranges.items()
        }
    if options.method == "percentile":
        extra["CalibPercentile"] = options.percentile
    source = onnx.load(str(fp32_path))
    with _quiet_quantizer():
        _quantize(fp32_path, out_path, reader, method, exclude_nodes, extra)
    quantized = onnx.load(str(out_path))
    _feed_tail_with_float(quantized, set(exclude_nodes))
    quantized.ir_version = min(quantized.ir_version, source.ir_version)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(out_path))
    return Path(out_path)


def _feed_tail_with_float(model: onnx.ModelProto, tail: set[str]) -> None:
    """Rewire tail nodes that onnxruntime fed from a shared Q/DQ pair back to the float tensor.

    The normalised image feeds both the first Conv (quantized) and the reconstruction error (tail);
    onnxruntime routes every consumer through the Conv's Q/DQ, which would round the image the error is
    measured against. The tail must see exactly what the fp32 graph sees.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in tail:
            continue
        for j, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[j] = q.input[0]


def _quantize(
    fp32_path: Path,
    out_path: Path,
    reader: ImageBatchReader,
    method: CalibrationMethod,
    exclude_nodes: Sequence[str],
    extra: dict[str, object],
) -> None:
    quantize_static(  # its augmented calibration model goes to a temp dir of its own, not the bundle
        Path(fp32_path),
        Path(out_path),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude_nodes),
        calibrate_method=method,
        extra_options=extra,
    )
