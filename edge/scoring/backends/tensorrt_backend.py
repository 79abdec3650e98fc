"""TensorRT backend: a cached engine, one execution context, one CUDA stream, name-based tensor I/O.

On first start (no engine in the cache for this GPU / TensorRT / model) the engine is built from the
bundle's ONNX, which takes minutes on a Jetson, and cached; later starts deserialize it in seconds. Device
and pinned host buffers are allocated once, for ``max_batch``, and bound by tensor name; a batch is
HtoD copy -> ``execute_async_v3`` -> DtoH copies -> one stream sync. ``close()`` releases everything in the
reverse order of creation: buffers, execution context, engine, runtime, stream.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.scoring.backends import BackendError, check_batch, check_outputs, run_in_chunks
from edge.scoring.backends.cuda_runtime import HostBuffer, open_cuda
from edge.scoring.backends.tensorrt_engine import (
    DEFAULT_WORKSPACE_MB,
    EngineCacheError,
    build_engine_bytes,
    cache_engine,
    clean_stale_temp_files,
    engine_path,
    hash_path,
    read_cached_engine,
    tensorrt_module,
    timing_cache_name,
    trt_version,
)
from edge.trust.manifest import Manifest, precision_entry

log = logging.getLogger(__name__)


@dataclass
class IOTensor:
    """One engine input or output, with its device and pinned host buffers sized for max_batch."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    device_ptr: int = 0
    host: HostBuffer | None = None


class TensorRTBackend:
    """Runs one precision of a bundle through a TensorRT engine (TensorRT >= 8.5, name-based API)."""

    name = "tensorrt"
    OPTIONS = ("max_batch", "engine_cache_dir", "workspace_mb", "device", "build_if_missing")
    CACHE_OPTION = "engine_cache_dir"  # where [model] engine_cache_dir goes

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        precision: str = "fp32",
        *,
        max_batch: int | None = None,
        engine_cache_dir: Path | None = None,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        device: int = 0,
        build_if_missing: bool = True,
    ) -> None:
        self._trt = tensorrt_module()
        entry = precision_entry(manifest, precision)
        self.precision = precision
        self.max_batch = int(max_batch if max_batch is not None else manifest.input.max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.input_hw: tuple[int, int] = (manifest.input.height, manifest.input.width)
        self.bundle_dir = Path(bundle_dir)
        self.onnx_path = self.bundle_dir / entry.file
        self.onnx_sha256 = entry.sha256
        self.cache_dir = Path(engine_cache_dir) if engine_cache_dir else self.bundle_dir / "engines"
        self.engine_path: Path | None = None  # None when running from memory (cache not writable)
        self._input_name = manifest.input.name
        self._score_name = manifest.outputs.score
        self._map_name = manifest.outputs.anomaly_map
        self._lock = threading.Lock()
        self._closed = False
        self._stream: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._tensors: dict[str, IOTensor] = {}
        self._cuda = open_cuda(device)
        try:
            with self._cuda.activate():
                self._stream = self._cuda.stream_create()
                self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
                self._engine = self._load_engine(build_if_missing, workspace_mb)
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
                self._tensors = self._describe_io()
                self._allocate()
        except BaseException:
            self.close()
            raise

    # ---- engine -------------------------------------------------------------------------------------

    def _load_engine(self, build_if_missing: bool, workspace_mb: int) -> Any:
        gpu = self._cuda.info()
        version = trt_version(self._trt)
        path = engine_path(self.cache_dir, gpu, version, self.precision, self.onnx_sha256, self.max_batch)
        clean_stale_temp_files(self.cache_dir)
        cached = read_cached_engine(path)  # None unless its bytes match the recorded sha256
        if cached is not None:
            engine = self._deserialize(cached)
            if engine is not None:
                log.info("TensorRT: using cached engine %s", path)
                self.engine_path = path
                return engine
            log.warning("cached engine %s cannot be deserialized (corrupt or foreign); rebuilding it", path)
            for stale in (path, hash_path(path)):
                with contextlib.suppress(OSError):
                    stale.unlink()
        if not build_if_missing:
            raise BackendError(
                f"no TensorRT engine at {path}; build it with `edge-export --build-engine {self.bundle_dir}` "
                "or allow building on start"
            )
        log.warning(
            "building the TensorRT %s engine for %s (%s, TensorRT %s): this takes a while, once; it is "
            "cached in %s",
            self.precision, gpu.name, gpu.sm, ".".join(map(str, version)), self.cache_dir,
        )  # fmt: skip
        data = build_engine_bytes(
            self.onnx_path,
            self.precision,
            self.max_batch,
            self.input_hw,
            input_name=self._input_name,
            workspace_mb=workspace_mb,
            timing_cache_path=self.cache_dir / timing_cache_name(gpu, version),
        )
        try:
            self.engine_path = cache_engine(data, path)
        except EngineCacheError as exc:
            log.warning("%s; running this engine from memory, it will be rebuilt on the next start", exc)
        engine = self._deserialize(data)
        if engine is None:
            raise BackendError(f"TensorRT built an engine from {self.onnx_path} that it then could not load")
        return engine

    def _deserialize(self, data: bytes) -> Any:
        """The engine, or None when TensorRT cannot load these bytes (it logs why)."""
        try:
            return self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:  # some TensorRT versions raise instead of returning None
            log.warning("TensorRT could not deserialize the engine: %s", exc)
            return None

    def _describe_io(self) -> dict[str, IOTensor]:
        trt, engine, context = self._trt, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        expected = [self._input_name, self._score_name, self._map_name]
        if self._input_name not in inputs or any(n not in names for n in expected[1:]):
            raise BackendError(
                f"the engine has tensors {names} (inputs {inputs}), but the manifest names input "
                f"'{self._input_name}' and outputs '{self._score_name}', '{self._map_name}'; re-export the "
                f"bundle"
            )
        if len(inputs) != 1:
            raise BackendError(
                f"the engine has {len(inputs)} inputs {inputs}; bundles have exactly one image input"
            )
        h, w = self.input_hw
        self._set_batch(self.max_batch)
        tensors = {}
        for name in names:
            is_input = name == self._input_name
            shape = (self.max_batch, h, w, 3) if is_input else tuple(context.get_tensor_shape(name))
            if any(int(d) < 0 for d in shape):
                raise BackendError(
                    f"TensorRT cannot resolve the shape of '{name}' ({shape}) for batch {self.max_batch}"
                )
            dtype = numpy_dtype(trt, engine.get_tensor_dtype(name))
            tensors[name] = IOTensor(name, is_input, dtype, tuple(int(d) for d in shape))
        return tensors

    def _allocate(self) -> None:
        for tensor in self._tensors.values():
            nbytes = max(1, int(np.prod(tensor.shape)) * tensor.dtype.itemsize)
            tensor.device_ptr = self._cuda.malloc(nbytes)
            tensor.host = self._cuda.host_empty(tensor.shape, tensor.dtype)
            if not self._context.set_tensor_address(tensor.name, tensor.device_ptr):
                raise BackendError(f"TensorRT refused the buffer address for tensor '{tensor.name}'")

    def _set_batch(self, n: int) -> None:
        h, w = self.input_hw
        if not self._context.set_input_shape(self._input_name, (n, h, w, 3)):
            raise BackendError(
                f"TensorRT rejected input shape ({n}, {h}, {w}, 3) for '{self._input_name}'; the engine's "
                f"profile "
                f"covers batch 1..{self.max_batch}"
            )

    # ---- inference ----------------------------------------------------------------------------------

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N,H,W,3) -> (scores (N,), maps (N,H,W)) float32, raw; N > max_batch runs in chunks."""
        batch = check_batch(images, self.input_hw)
        with self._lock:
            if self._closed:
                raise BackendError("the TensorRT backend is closed")
            with self._cuda.activate():
                return run_in_chunks(self._run_chunk, batch, self.max_batch, self.input_hw)

    def _run_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(chunk)
        self._set_batch(n)
        image = self._tensors[self._input_name]
        host_in = image.host.array[:n]  # type: ignore[union-attr]
        host_in[...] = chunk
        self._cuda.htod(image.device_ptr, host_in, self._stream)
        if not self._context.execute_async_v3(self._cuda.stream_handle(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see TensorRT's messages above)")
        outputs = [t for t in self._tensors.values() if not t.is_input]
        for tensor in outputs:
            self._cuda.dtoh(tensor.host.array[:n], tensor.device_ptr, self._stream)  # type: ignore[union-attr]
        self._cuda.stream_sync(self._stream)
        scores = self._tensors[self._score_name].host.array[:n].copy()  # type: ignore[union-attr]
        maps = self._tensors[self._map_name].host.array[:n].copy()  # type: ignore[union-attr]
        return check_outputs(scores, maps, n, self.input_hw, f"the TensorRT engine for {self.onnx_path.name}")

    # ---- teardown -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release buffers, context, engine, runtime and stream, in that order (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with self._cuda.activate():
                    self._release_all()
            finally:
                self._cuda.close()

    def _release_all(self) -> None:
        if self._stream is not None:
            self._cuda.stream_sync(self._stream)  # nothing may still be writing into the buffers
        for tensor in reversed(list(self._tensors.values())):
            if tensor.host is not None:
                self._cuda.free_host(tensor.host)
                tensor.host = None
            if tensor.device_ptr:
                self._cuda.free(tensor.device_ptr)
                tensor.device_ptr = 0
        self._tensors = {}
        self._context = None  # TensorRT objects are freed when their last reference goes
        self._engine = None
        self._runtime = None
        if self._stream is not None:
            self._cuda.stream_destroy(self._stream)
            self._stream = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
           "UINT8": np.uint8, "INT64": np.int64}  # fmt: skip


def numpy_dtype(trt: Any, data_type: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType (trt.nptype where it knows the type, else by name)."""
    try:
        return np.dtype(trt.nptype(data_type))
    except Exception:  # older nptype tables lack some types (e.g. UINT8 before 8.6)
        name = str(getattr(data_type, "name", data_type)).rsplit(".", 1)[-1]
        if name not in _DTYPES:
            raise BackendError(
                f"the engine uses TensorRT data type {data_type}, which this backend cannot map"
            ) from None
        return np.dtype(_DTYPES[name])
