"""A recording stand-in for ``tensorrt`` and for CUDA from Python (cuda-python or pycuda), for machines
without
a GPU.

It keeps to the parts of the real API the engine code uses, and to its rules where breaking them is the bug a
test should catch:

- TensorRT < 10 parses ONNX only into an EXPLICIT_BATCH network; TensorRT >= 10 refuses precision flags on a
  STRONGLY_TYPED network (the build returns None, as the real one does after logging an error);
- the optimisation profile must give min/opt/max for the input, and ``set_input_shape`` rejects a batch
  outside it;
- ``execute_async_v3`` needs an address for every I/O tensor. It really computes: it reads the input image
  bytes from the address it was given (the fakes' "device" memory is ordinary process memory) and writes
  ``expected_outputs(images)`` to the output addresses, so a test sees the backend's whole data path.

Every call is appended to ``calls`` (shared between the fakes, so the order of releases can be checked).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


def expected_outputs(images: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes: map = channel mean / 255, score = max of the map."""
    maps = images.astype(np.float32).mean(axis=3) / 255.0
    return {"anomaly_map": maps, "score": maps.max(axis=(1, 2))}


# ---- memory shared by the fake CUDA modules ---------------------------------------------------------


class Memory:
    """Allocations keyed by address; copies check both ends lie inside a live allocation of the right kind."""

    def __init__(self) -> None:
        self.blocks: dict[int, tuple[str, Any]] = {}

    def alloc(self, nbytes: int, kind: str) -> int:
        buf = (ctypes.c_uint8 * nbytes)()
        ptr = ctypes.addressof(buf)
        self.blocks[ptr] = (kind, buf)
        return ptr

    def free(self, ptr: int, kind: str) -> bool:
        entry = self.blocks.get(ptr)
        if entry is None or entry[0] != kind:
            return False
        del self.blocks[ptr]
        return True

    def live(self, kind: str) -> int:
        return sum(1 for k, _ in self.blocks.values() if k == kind)

    def check(self, ptr: int, nbytes: int, kind: str) -> None:
        for start, (k, buf) in self.blocks.items():
            if k == kind and start <= ptr and ptr + nbytes <= start + len(buf):
                return
        raise AssertionError(f"{nbytes} bytes at {ptr:#x} are not inside a live {kind} allocation")

    def read(self, ptr: int, nbytes: int) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).copy()

    def write(self, ptr: int, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        ctypes.memmove(ptr, data.ctypes.data, data.nbytes)


# ---- tensorrt ---------------------------------------------------------------------------------------


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}  # fmt: skip
_FROM_ONNX = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
              onnx.TensorProto.UINT8: DataType.UINT8, onnx.TensorProto.INT8: DataType.INT8,
              onnx.TensorProto.INT32: DataType.INT32}  # fmt: skip


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 7


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


@dataclass
class TensorSpec:
    name: str
    shape: list[int]  # -1 for the dynamic batch
    dtype: int


@dataclass
class FakeTRT:
    """State behind one fake tensorrt module: the call log and knobs a test may turn."""

    version: str
    calls: list[tuple[Any, ...]]
    memory: Memory
    forced_parser_errors: list[str] = field(default_factory=list)
    builds: int = 0

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def record(self, *call: Any) -> None:
        self.calls.append(call)


def make_tensorrt(state: FakeTRT) -> types.ModuleType:
    """A module object that quacks like ``tensorrt`` of ``state.version`` (8.x or 10.x)."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = state.version  # type: ignore[attr-defined]
    mod.fake = state  # type: ignore[attr-defined]
    mod.DataType = DataType  # type: ignore[attr-defined]
    mod.TensorIOMode = TensorIOMode  # type: ignore[attr-defined]
    mod.BuilderFlag = BuilderFlag  # type: ignore[attr-defined]
    mod.MemoryPoolType = MemoryPoolType  # type: ignore[attr-defined]
    members = {"EXPLICIT_BATCH": 0}
    if state.major >= 10:
        members["STRONGLY_TYPED"] = 1
    mod.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members)  # type: ignore[attr-defined]
    mod.nptype = lambda dt: _NP[DataType(int(dt))]  # type: ignore[attr-defined]

    class Logger:
        WARNING = "WARNING"
        INFO = "INFO"
        ERROR = "ERROR"

        def __init__(self, severity: str = "WARNING") -> None:
            state.record("Logger", severity)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[TensorSpec] = []
            self.outputs: list[TensorSpec] = []

        def has_flag(self, name: str) -> bool:
            flag = getattr(mod.NetworkDefinitionCreationFlag, name, None)
            return flag is not None and bool(self.flags & (1 << int(flag)))

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> TensorSpec:
            return self.inputs[i]

    class ParserError:
        def __init__(self, desc: str) -> None:
            self._desc = desc

        def desc(self) -> str:
            return self._desc

        def __str__(self) -> str:
            return f"In node -1 (parseGraph): {self._desc}"

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[ParserError] = []
            state.record("OnnxParser")

        def parse_from_file(self, path: str) -> bool:
            state.record("parse_from_file", path)
            if state.forced_parser_errors:
                self.errors = [ParserError(m) for m in state.forced_parser_errors]
                return False
            if state.major < 10 and not self.network.has_flag("EXPLICIT_BATCH"):
                self.errors = [ParserError("Network must have explicit batch dimensions (EXPLICIT_BATCH)")]
                return False
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors = [ParserError(f"Failed to parse ONNX model from file: {path}"),
                               ParserError(f"ModelImporter: {type(exc).__name__}")]  # fmt: skip
                return False
            self.network.inputs = [_spec(v) for v in model.graph.input]
            self.network.outputs = [_spec(v) for v in model.graph.output]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002
            state.record("set_shape", name, tuple(min), tuple(opt), tuple(max))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"TIMING" + self.data[6:] + b"+"

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[Profile] = []
            self.pools: dict[int, int] = {}
            self.timing_cache: TimingCache | None = None

        def set_flag(self, flag: BuilderFlag) -> None:
            state.record("set_flag", BuilderFlag(flag).name)
            self.flags.append(BuilderFlag(flag).name)

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            state.record("set_memory_pool_limit", MemoryPoolType(pool).name, size)
            self.pools[int(pool)] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            state.record("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing_cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            state.record("Builder")

        def create_network(self, flags: int = 0) -> Network:
            state.record("create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            state.record("build_serialized_network")
            state.builds += 1
            if network.has_flag("STRONGLY_TYPED") and ({"FP16", "INT8"} & set(config.flags)):
                return None  # TensorRT 10: precision flags are an error on a strongly typed network
            if len(config.profiles) != 1:
                return None
            profile = config.profiles[0].shapes
            for spec in network.inputs:
                if spec.name not in profile:
                    return None
            description = {
                "inputs": [vars(s) for s in network.inputs],
                "outputs": [vars(s) for s in network.outputs],
                "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                "flags": config.flags,
                "network_flags": network.flags,
            }
            return ENGINE_MAGIC + json.dumps(description).encode()

    class Engine:
        def __init__(self, description: dict[str, Any]) -> None:
            self.d = description
            self.specs = {s["name"]: (s, TensorIOMode.INPUT) for s in description["inputs"]}
            self.specs.update({s["name"]: (s, TensorIOMode.OUTPUT) for s in description["outputs"]})

        @property
        def num_io_tensors(self) -> int:
            return len(self.specs)

        def get_tensor_name(self, i: int) -> str:
            return list(self.specs)[i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return self.specs[name][1]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType(self.specs[name][0]["dtype"])

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self.specs[name][0]["shape"])

        def create_execution_context(self) -> Context:
            state.record("create_execution_context")
            return Context(self)

        def __del__(self) -> None:
            state.record("del", "engine")

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.batch: int | None = None
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            state.record("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.d["profile"][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            spec = self.engine.specs[name][0]["shape"]
            return tuple(self.batch if d == -1 and self.batch is not None else d for d in spec)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            state.record("set_tensor_address", name, ptr)
            if name not in self.engine.specs:
                return False
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            state.record("execute_async_v3", stream_handle)
            if self.batch is None or set(self.addresses) != set(self.engine.specs):
                return False
            (name, (spec, _)) = next(
                (k, v) for k, v in self.engine.specs.items() if v[1] == TensorIOMode.INPUT
            )
            shape = self.get_tensor_shape(name)
            images = state.memory.read(self.addresses[name], int(np.prod(shape))).reshape(shape)
            results = expected_outputs(images)
            for out_name, (_, mode) in self.engine.specs.items():
                if mode == TensorIOMode.OUTPUT:
                    value = results.get(out_name, np.zeros(self.get_tensor_shape(out_name), np.float32))
                    state.memory.write(self.addresses[out_name], value.astype(np.float32))
            return True

        def __del__(self) -> None:
            state.record("del", "context")

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            state.record("Runtime")

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            state.record("deserialize_cuda_engine")
            data = bytes(data)
            if not data.startswith(ENGINE_MAGIC):
                return None
            return Engine(json.loads(data[len(ENGINE_MAGIC) :]))

        def __del__(self) -> None:
            state.record("del", "runtime")

    for cls in (Logger, Builder, OnnxParser, Runtime):
        setattr(mod, cls.__name__, cls)
    return mod


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return TensorSpec(value.name, dims, int(_FROM_ONNX[value.type.tensor_type.elem_type]))


# ---- cuda-python (cuda.bindings.runtime / cuda.cudart) --------------------------------------------------


class _CudaError(enum.IntEnum):
    cudaSuccess = 0  # noqa: N815 - CUDA's names
    cudaErrorInvalidValue = 1  # noqa: N815
    cudaErrorMemoryAllocation = 2  # noqa: N815


class _MemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1  # noqa: N815
    cudaMemcpyDeviceToHost = 2  # noqa: N815


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


@dataclass
class GpuSpec:
    name: str = "NVIDIA Jetson AGX Orin"
    major: int = 8
    minor: int = 7


def make_cudart(calls: list[tuple[Any, ...]], memory: Memory, gpu: GpuSpec | None = None) -> types.ModuleType:
    """A module object with the cuda-python runtime calls the backend makes (tuple returns, error codes)."""
    gpu = gpu or GpuSpec()
    mod = types.ModuleType("cuda.bindings.runtime")
    mod.cudaError_t = _CudaError  # type: ignore[attr-defined]
    mod.cudaMemcpyKind = _MemcpyKind  # type: ignore[attr-defined]
    ok = _CudaError.cudaSuccess
    streams: dict[int, FakeStream] = {}

    def record(*call: Any) -> None:
        calls.append(("cuda",) + call)

    def cudaSetDevice(device: int) -> tuple:  # noqa: N802
        return (ok,)

    def cudaGetDeviceProperties(device: int) -> tuple:  # noqa: N802
        return ok, types.SimpleNamespace(
            name=gpu.name.encode() + b"\x00\x00", major=gpu.major, minor=gpu.minor
        )

    def cudaGetErrorString(err: int) -> tuple:  # noqa: N802
        return ok, f"fake CUDA error {int(err)}".encode()

    def cudaMalloc(nbytes: int) -> tuple:  # noqa: N802
        record("malloc", nbytes)
        return ok, memory.alloc(nbytes, "device")

    def cudaFree(ptr: int) -> tuple:  # noqa: N802
        record("free", ptr)
        return (ok if memory.free(ptr, "device") else _CudaError.cudaErrorInvalidValue,)

    def cudaMallocHost(nbytes: int) -> tuple:  # noqa: N802
        record("malloc_host", nbytes)
        return ok, memory.alloc(nbytes, "host")

    def cudaFreeHost(ptr: int) -> tuple:  # noqa: N802
        record("free_host", ptr)
        return (ok if memory.free(ptr, "host") else _CudaError.cudaErrorInvalidValue,)

    def cudaStreamCreate() -> tuple:  # noqa: N802
        stream = FakeStream(0x5000 + len(streams) + 1)
        streams[stream.handle] = stream
        record("stream_create", stream.handle)
        return ok, stream

    def cudaStreamSynchronize(stream: FakeStream) -> tuple:  # noqa: N802
        record("stream_sync", int(stream))
        return (ok if int(stream) in streams else _CudaError.cudaErrorInvalidValue,)

    def cudaStreamDestroy(stream: FakeStream) -> tuple:  # noqa: N802
        record("stream_destroy", int(stream))
        return (ok if streams.pop(int(stream), None) else _CudaError.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(dst: int, src: int, nbytes: int, kind: int, stream: FakeStream) -> tuple:  # noqa: N802
        record("memcpy", _MemcpyKind(kind).name, nbytes)
        if int(stream) not in streams:
            return (_CudaError.cudaErrorInvalidValue,)
        to_device = kind == _MemcpyKind.cudaMemcpyHostToDevice
        memory.check(dst, nbytes, "device" if to_device else "host")
        memory.check(src, nbytes, "host" if to_device else "device")
        ctypes.memmove(dst, src, nbytes)
        return (ok,)

    for fn in (cudaSetDevice, cudaGetDeviceProperties, cudaGetErrorString, cudaMalloc, cudaFree,
               cudaMallocHost, cudaFreeHost, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy,
               cudaMemcpyAsync):  # fmt: skip
        setattr(mod, fn.__name__, fn)
    mod.streams = streams  # type: ignore[attr-defined]
    return mod


# ---- pycuda.driver ------------------------------------------------------------------------------------


def make_pycuda_driver(
    calls: list[tuple[Any, ...]], memory: Memory, gpu: GpuSpec | None = None
) -> types.ModuleType:
    """A module object with the pycuda.driver calls the backend makes (objects, exceptions on error)."""
    gpu = gpu or GpuSpec()
    mod = types.ModuleType("pycuda.driver")
    context_stack: list[Any] = []

    def record(*call: Any) -> None:
        calls.append(("pycuda",) + call)

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.ptr = memory.alloc(nbytes, "device")
            record("mem_alloc", nbytes)

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            record("free", self.ptr)
            assert memory.free(self.ptr, "device"), "double free"

    class HostAllocation:
        """Exposes its memory to numpy through __array_interface__, so arrays keep it as their base."""

        def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
            dtype = np.dtype(dtype)
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            self.ptr = memory.alloc(nbytes, "host")
            self.__array_interface__ = {
                "shape": tuple(shape),
                "typestr": dtype.str,
                "data": (self.ptr, False),
                "version": 3,
            }
            record("pagelocked_empty", tuple(shape))

        def free(self) -> None:
            record("free_host", self.ptr)
            assert memory.free(self.ptr, "host"), "double free"

    class Context:
        def push(self) -> None:
            context_stack.append(self)

        @staticmethod
        def pop() -> None:
            context_stack.pop()

        def detach(self) -> None:
            record("detach")

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.major, gpu.minor

        def retain_primary_context(self) -> Context:
            record("retain_primary_context")
            return Context()

    class Stream:
        def __init__(self) -> None:
            self.handle = 0x7000
            record("stream_create", self.handle)

        def synchronize(self) -> None:
            record("stream_sync", self.handle)

    def _need_context() -> None:
        if not context_stack:
            raise RuntimeError("pycuda: no current context (push it first)")

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _need_context()
        return DeviceAllocation(nbytes)

    def pagelocked_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _need_context()
        return np.asarray(HostAllocation(shape, dtype))

    def memcpy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
        _need_context()
        record("memcpy", "htod", src.nbytes)
        memory.check(int(dst), src.nbytes, "device")
        memory.check(src.ctypes.data, src.nbytes, "host")
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dst: np.ndarray, src: int, stream: Stream) -> None:
        _need_context()
        record("memcpy", "dtoh", dst.nbytes)
        memory.check(int(src), dst.nbytes, "device")
        memory.check(dst.ctypes.data, dst.nbytes, "host")
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    mod.init = lambda: record("init")  # type: ignore[attr-defined]
    for obj in (Device, Context, Stream, mem_alloc, pagelocked_empty, memcpy_htod_async, memcpy_dtoh_async):
        setattr(mod, obj.__name__, obj)
    mod.context_stack = context_stack  # type: ignore[attr-defined]
    return mod


# ---- installing into sys.modules ----------------------------------------------------------------------


@dataclass
class FakeGPU:
    """What a test gets back: the fake modules, their shared call log and memory."""

    trt: types.ModuleType
    state: FakeTRT
    cuda: types.ModuleType
    memory: Memory
    calls: list[tuple[Any, ...]]

    def names(self, prefix: str | None = None) -> list[Any]:
        """Call names in order (optionally only those from 'cuda' / 'pycuda')."""
        if prefix is None:
            return [c[0] for c in self.calls]
        return [c[1] for c in self.calls if c[0] == prefix]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def install(
    monkeypatch: Any,
    trt_version: str = "8.6.1",
    cuda: str = "cuda.bindings.runtime",
    gpu: GpuSpec | None = None,
) -> FakeGPU:
    """Put fake ``tensorrt`` and a fake CUDA module into ``sys.modules`` for one test.

    ``cuda``: "cuda.bindings.runtime" (cuda-python >= 12.6), "cuda.cudart" (older cuda-python) or
    "pycuda.driver". The other CUDA module names are made unimportable, so the code must take this one.
    """
    calls: list[tuple[Any, ...]] = []
    memory = Memory()
    state = FakeTRT(trt_version, calls, memory)
    trt = make_tensorrt(state)
    modules = sys.modules
    monkeypatch.setitem(modules, "tensorrt", trt)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(modules, name, None)  # None in sys.modules makes an import fail
    if cuda == "pycuda.driver":
        cuda_mod = make_pycuda_driver(calls, memory, gpu)
        package = types.ModuleType("pycuda")
        package.driver = cuda_mod  # type: ignore[attr-defined]
        monkeypatch.setitem(modules, "pycuda", package)
        monkeypatch.setitem(modules, "pycuda.driver", cuda_mod)
    else:
        cuda_mod = make_cudart(calls, memory, gpu)
        parts = cuda.split(".")
        for i in range(1, len(parts)):
            monkeypatch.setitem(modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(modules, cuda, cuda_mod)
    return FakeGPU(trt, state, cuda_mod, memory, calls)


def engine_description(path: Path) -> dict[str, Any]:
    """What the fake builder put into an engine file (network flags, builder flags, profile)."""
    data = Path(path).read_bytes()
    assert data.startswith(ENGINE_MAGIC), f"{path} is not a fake engine"
    return json.loads(data[len(ENGINE_MAGIC) :])
