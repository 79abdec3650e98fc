"""Which precision a bundle and this machine suit, and the fix to suggest when a precision is missing.

Measured on CPU, onnxruntime runs the int8 (Q/DQ) model slower than fp32 (0.77x on the issue's machine) and
fp16 no faster, so fp16 and int8 pay only under TensorRT. Some model kinds are never exported as int8
(``edge-export`` refuses ``--int8`` for them, see the model's ``int8_refusal``): a message must not tell the
user to export what the exporter refuses.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable, Optional

# model.kind -> name; edge-export refuses --int8 for these
NO_INT8_KINDS = {"patchcore": "PatchCore", "gtrans-knn": "GTrans + kNN"}
GPU_ORDER = ("int8", "fp16", "fp32")  # fastest first, under TensorRT


def tensorrt_present() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def suited_precision(available: Iterable[str], tensorrt: Optional[bool] = None) -> str:
    """fp32 on CPU; under TensorRT the fastest precision the bundle has (int8, then fp16)."""
    have = set(available)
    if tensorrt if tensorrt is not None else tensorrt_present():
        return next((p for p in GPU_ORDER if p in have), "fp32")
    return "fp32"


def missing_precision_fix(kind: str, precision: str, available: Iterable[str]) -> str:
    """What to do when the bundle has no ``precision`` model: only a fix that works for ``kind``."""
    have = sorted(available)
    if precision == "int8" and kind in NO_INT8_KINDS:
        fallback = "fp16" if "fp16" in have else "fp32"
        return (
            f"{NO_INT8_KINDS[kind]} bundles are never int8 (edge-export refuses --int8 for them); set "
            f'model.precision = "{fallback}"'
            + ("" if fallback == "fp16" else " (or fp16 on a GPU, exported with edge-export --fp16)")
        )
    instead = "" if not have else f'set model.precision = "{"fp32" if "fp32" in have else have[0]}", or '
    return f"{instead}export it with edge-export --{precision}"
