"""The few CUDA calls that building and running a TensorRT engine need, through cuda-python
(``cuda.bindings.runtime`` or ``cuda.cudart``) or pycuda, whichever the device has.

One wrapper per binding with the same methods (device info, device and page-locked host buffers, streams,
async copies); :func:`open_cuda` picks the binding. Engine building and caching live in
:mod:`edge.scoring.backends.tensorrt_engine`, running one in :mod:`edge.scoring.backends.tensorrt_backend`.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from edge.util.deps import MissingDependency, require

CUDA_MODULES = ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver")


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    major: int
    minor: int

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"


@dataclass
class HostBuffer:
    """Page-locked host memory viewed as a numpy array (``keep`` holds whatever owns the memory)."""

    ptr: int
    array: np.ndarray
    keep: Any = None


class CudaPythonRuntime:
    """CUDA runtime calls through cuda-python; every call's error code is checked."""

    def __init__(self, cudart: Any, device: int = 0) -> None:
        self._rt = cudart
        self.device = device
        self._call("cudaSetDevice", device)

    def _call(self, fn: str, *args: Any) -> Any:
        result = getattr(self._rt, fn)(*args)
        result = result if isinstance(result, tuple) else (result,)
        err = result[0]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA {fn} failed: {self._error_text(err)}")
        return result[1] if len(result) == 2 else result[1:] or None

    def _error_text(self, err: Any) -> str:
        try:
            text = self._rt.cudaGetErrorString(err)
            text = text[-1] if isinstance(text, tuple) else text
            return text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # the error text is a courtesy; the code is what matters
            return str(err)

    def info(self) -> GpuInfo:
        props = self._call("cudaGetDeviceProperties", self.device)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.split("\x00")[0].strip(), int(props.major), int(props.minor))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._call("cudaSetDevice", self.device)  # the runtime's current device is per thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        ptr = int(self._call("cudaMallocHost", nbytes))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        view = np.frombuffer(raw, dtype=np.uint8)  # type: ignore[call-overload]  # a ctypes array is a buffer
        array = view[: int(np.prod(shape)) * dtype.itemsize]
        return HostBuffer(ptr, array.view(dtype).reshape(shape), raw)

    def free_host(self, buf: HostBuffer) -> None:
        self._call("cudaFreeHost", buf.ptr)

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_sync(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def close(self) -> None:
        return None


class PyCudaRuntime:
    """The same calls through pycuda, on the device's primary context (pushed around each use)."""

    def __init__(self, driver: Any, device: int = 0) -> None:
        self._drv = driver
        driver.init()
        self._device = driver.Device(device)
        self._context = self._device.retain_primary_context()
        self._allocations: dict[int, Any] = {}

    def info(self) -> GpuInfo:
        major, minor = self._device.compute_capability()
        return GpuInfo(str(self._device.name()), int(major), int(minor))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        allocation = self._drv.mem_alloc(nbytes)
        ptr = int(allocation)
        self._allocations[ptr] = allocation
        return ptr

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        array = self._drv.pagelocked_empty(shape, dtype)
        return HostBuffer(int(array.ctypes.data), array, array)

    def free_host(self, buf: HostBuffer) -> None:
        owner = getattr(buf.keep, "base", None)
        if owner is not None and hasattr(owner, "free"):
            owner.free()

    def stream_create(self) -> Any:
        return self._drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_sync(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        return None  # pycuda frees the stream with its last reference

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._drv.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._drv.memcpy_dtoh_async(dst, src, stream)

    def close(self) -> None:
        self._context.detach()


CudaRuntime = Union[CudaPythonRuntime, PyCudaRuntime]


def open_cuda(device: int = 0) -> CudaRuntime:
    """CUDA through cuda-python if importable, else pycuda; MissingDependency names both otherwise."""
    reasons = []
    for module_name in CUDA_MODULES:
        try:
            module = require(module_name, "tensorrt", "TensorRT device buffers")
        except MissingDependency as exc:
            reasons.append(f"{module_name}: {exc.__cause__}")
            continue
        if module_name == "pycuda.driver":
            return PyCudaRuntime(module, device)
        return CudaPythonRuntime(module, device)
    raise MissingDependency(
        "The TensorRT backend needs CUDA from Python: cuda-python or pycuda, and neither is importable ("
        + "; ".join(reasons)
        + "). Install it with: pip install 'edge-anomaly[tensorrt]' (cuda-python), or JetPack's "
        "python3-pycuda."
    )


def gpu_info(device: int = 0) -> GpuInfo:
    cuda = open_cuda(device)
    try:
        return cuda.info()
    finally:
        cuda.close()
