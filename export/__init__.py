"""torch checkpoint -> deployable bundle: ONNX (fp32, fp16, int8 Q/DQ), manifest, accuracy gate, engines.

Modules are named for what they turn into what: ``onnx_export`` (checkpoint -> ONNX), ``fp16`` (ONNX ->
fp16 ONNX), ``gate`` (ONNX vs torch numbers), ``bundle`` (files -> verified bundle, atomically),
``engine`` (bundle -> TensorRT engines, on the device), ``cli`` (``edge-export``). INT8 quantization and
score calibration live in ``calibration/``.

This package file stays import-light (no torch) so the error types can be used anywhere.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """The export cannot go on; the message says what was expected, what was found and what to do."""


class GateFailed(ExportError):
    """A precision drifted past the accuracy gate; ``table`` holds the numbers that were printed."""

    def __init__(self, message: str, table: str) -> None:
        super().__init__(message)
        self.table = table
