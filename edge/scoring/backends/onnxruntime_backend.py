"""ONNX Runtime backend: the CPU default, with CUDA / TensorRT execution providers where installed.

The graph already contains normalisation and the score/map tail, so this is a thin wrapper: one
InferenceSession, IO by the names in the manifest. An execution provider that was asked for but is not in
this onnxruntime build is an error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.scoring.backends import BackendError, check_batch, check_outputs, run_in_chunks
from edge.trust.manifest import Manifest, precision_entry
from edge.util.deps import require

log = logging.getLogger(__name__)

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_chain(wanted: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Execution providers for onnxruntime, best first, CPU always last for ops the others lack.

    ``wanted``: "cpu", "cuda", "tensorrt" or a list of them. TensorRT brings CUDA along where available,
    since onnxruntime hands the nodes TensorRT cannot take to the next provider.
    """
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    if not names:
        raise ValueError(f"providers is empty; use one or more of {', '.join(PROVIDERS)}")
    chain: list[str] = []
    for short in names:
        key = str(short).lower()
        if key not in PROVIDERS:
            raise ValueError(f"unknown execution provider {short!r}; use one of {', '.join(PROVIDERS)}")
        full = PROVIDERS[key]
        if full not in available:
            raise BackendError(
                f"onnxruntime execution provider {full} ('{key}') is not available in this onnxruntime "
                f"(available: {', '.join(available)}). Install the onnxruntime build for your GPU "
                "(onnxruntime-gpu, or JetPack's wheel) or set the model's providers to 'cpu'."
            )
        chain.append(full)
        if key == "tensorrt" and PROVIDERS["cuda"] in available:
            chain.append(PROVIDERS["cuda"])
    chain.append(PROVIDERS["cpu"])
    return list(dict.fromkeys(chain))  # keep order, drop repeats


class OnnxRuntimeBackend:
    """One onnxruntime session for one precision of a bundle."""

    name = "onnxruntime"
    OPTIONS = ("providers", "intra_op_threads", "max_batch", "trt_cache_dir")
    CACHE_OPTION = "trt_cache_dir"  # where [model] engine_cache_dir goes

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        precision: str = "fp32",
        *,
        providers: str | Sequence[str] = "cpu",
        intra_op_threads: int | None = None,
        max_batch: int | None = None,
        trt_cache_dir: Path | None = None,
    ) -> None:
        max_batch = max_batch if max_batch is not None else manifest.input.max_batch
        cache_dir = Path(trt_cache_dir) if trt_cache_dir else Path(bundle_dir) / "engines" / "ort-trt"
        self._open(
            Path(bundle_dir) / precision_entry(manifest, precision).file,
            precision,
            manifest.input.name,
            (manifest.outputs.score, manifest.outputs.anomaly_map),
            (manifest.input.height, manifest.input.width),
            max_batch,
            providers,
            intra_op_threads,
            cache_dir,
        )

    @classmethod
    def for_file(
        cls,
        path: Path,
        input_hw: tuple[int, int],
        *,
        input_name: str = "image",
        outputs: tuple[str, str] = ("score", "anomaly_map"),
        max_batch: int = 8,
        precision: str = "fp32",
    ) -> OnnxRuntimeBackend:
        """The same backend for one ONNX file before its bundle exists: the export's accuracy gate judges
        each precision with the very session, options and output checks a device will use (CPU)."""
        backend = cls.__new__(cls)
        path = Path(path)
        backend._open(
            path, precision, input_name, outputs, input_hw, max_batch, "cpu", None, path.parent / "ort-trt"
        )
        return backend

    def _open(
        self,
        path: Path,
        precision: str,
        input_name: str,
        outputs: tuple[str, str],
        input_hw: tuple[int, int],
        max_batch: int,
        providers: str | Sequence[str],
        intra_op_threads: int | None,
        trt_cache_dir: Path,
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "The onnxruntime backend")
        self.precision = precision
        self.max_batch = _positive_int("max_batch", max_batch)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.path = path
        self._input = input_name
        self._outputs = list(outputs)
        chain = provider_chain(providers, ort.get_available_providers())
        options = _session_options(ort, intra_op_threads)
        self.providers = chain
        self._session = self._open_session(
            ort, options, _with_provider_options(chain, precision, trt_cache_dir)
        )
        self._check_io()
        log.info(
            "onnxruntime %s: %s on %s", precision, self.path.name, ", ".join(self._session.get_providers())
        )

    def _open_session(self, ort: object, options: object, providers: list[object]) -> Any:
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise BackendError(
                f"onnxruntime cannot load {self.path}: {exc}. The file is corrupt or not an ONNX model this "
                "onnxruntime can read; copy the bundle again or re-export it."
            ) from exc

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if self._input not in inputs:
            raise BackendError(
                f"{self.path} has inputs {sorted(inputs)}, but the manifest names '{self._input}'; re-export "
                f"the bundle."
            )
        missing = [name for name in self._outputs if name not in outputs]
        if missing:
            raise BackendError(
                f"{self.path} has outputs {outputs}, but the manifest names {self._outputs} "
                f"(missing: {missing}); re-export the bundle."
            )
        shape = inputs[self._input].shape
        graph_hw = tuple(shape[1:3]) if len(shape) == 4 else None
        if graph_hw is not None and all(isinstance(d, int) for d in graph_hw) and graph_hw != self.input_hw:
            raise BackendError(
                f"{self.path} takes {graph_hw[0]}x{graph_hw[1]} images but the manifest says "
                f"{self.input_hw[0]}x{self.input_hw[1]}; the bundle is inconsistent, re-export it."
            )

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N,H,W,3) -> (scores (N,), maps (N,H,W)) float32, raw; N > max_batch runs in chunks."""
        if self._session is None:
            raise BackendError("the onnxruntime backend is closed")
        batch = check_batch(images, self.input_hw)
        return run_in_chunks(self._run_chunk, batch, self.max_batch, self.input_hw)

    def _run_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self._session.run(self._outputs, {self._input: chunk})
        return check_outputs(scores, maps, len(chunk), self.input_hw, str(self.path))

    def close(self) -> None:
        """Release the session (idempotent)."""
        self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _session_options(ort: object, intra_op_threads: int | None) -> object:
    options = ort.SessionOptions()  # type: ignore[attr-defined]
    if intra_op_threads is not None:
        options.intra_op_num_threads = _positive_int("intra_op_threads", intra_op_threads)
    # Idle intra-op workers would otherwise spin-wait, taking the cores the grabber, postprocess and MQTT
    # threads need on a small device; they sleep instead (costs a little latency per call, not throughput).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _with_provider_options(chain: list[str], precision: str, cache_dir: Path) -> list[object]:
    """Provider list with options: the TensorRT provider caches its engines and honours the precision."""
    out: list[object] = []
    for provider in chain:
        if provider == PROVIDERS["tensorrt"]:
            cache_dir.mkdir(parents=True, exist_ok=True)
            trt_options = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir),
                "trt_fp16_enable": precision in ("fp16", "int8"),
                "trt_int8_enable": precision == "int8",  # explicit Q/DQ: no calibration table needed
            }
            out.append((provider, trt_options))
        else:
            out.append(provider)
    return out


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
