"""TensorRT engines: built once on the device from a bundle's ONNX file, cached under a key that says
what they were built for, and reused while that key matches.

An engine only runs on the GPU model, TensorRT version and batch profile it was built for, so its file name
carries all of them: ``<onnx-sha12>_<precision>_<gpu-slug>_sm<major><minor>_trt<x.y.z>_b<max_batch>.engine``.

Precision, across TensorRT versions (JetPack 5 ships 8.5, JetPack 6.x 8.6 or 10.3):

- TensorRT < 10: an EXPLICIT_BATCH network; fp16 sets the FP16 builder flag, int8 (an explicitly quantized
  Q/DQ graph, no calibrator) sets INT8 plus FP16 for the layers left unquantized.
- TensorRT >= 10: a STRONGLY_TYPED network; the precision is the graph's own (fp16 tensors, Q/DQ nodes),
  and no precision flag is set (TensorRT 11 removed them).

Building is split from caching (``build_engine_bytes`` then ``cache_engine``) so a device whose disk is
full or whose bundle is read-only still runs, from memory, with a warning. The CUDA calls (device info,
buffers, streams) are :mod:`edge.scoring.backends.cuda_runtime`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.scoring.backends.cuda_runtime import GpuInfo, gpu_info
from edge.trust.manifest import PRECISIONS, sha256_file
from edge.util import atomic
from edge.util.atomic import TEMP_SUFFIX
from edge.util.deps import require

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 1024
ENGINE_SUFFIX = ".engine"
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}  # TensorRT < 10 only


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build the model; the message carries TensorRT's own reasons."""


class EngineCacheError(RuntimeError):
    """An engine (or timing cache) could not be written to the cache directory."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


# ---- versions and cache keys --------------------------------------------------------------------------


def tensorrt_module() -> Any:
    return require("tensorrt", "tensorrt", "Building or running a TensorRT engine")


def trt_version(trt: Any) -> tuple[int, int, int]:
    """(major, minor, patch) of an imported tensorrt module."""
    return _version_tuple(str(getattr(trt, "__version__", "0")))


def _version_tuple(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def slug(text: str) -> str:
    """Lower-case, filename-safe: 'NVIDIA Jetson AGX Orin' -> 'nvidia-jetson-agx-orin'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_cache_key(
    gpu_name: str,
    compute_capability: tuple[int, int] | str,
    trt_version: str | Sequence[int],
    precision: str,
    onnx_sha256: str,
    max_batch: int,
) -> str:
    """The engine's file name: changes whenever anything that makes an engine unusable changes."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not re.fullmatch(r"[0-9a-fA-F]{12,}", onnx_sha256 or ""):
        raise ValueError(f"onnx_sha256 must be a hex digest, got {onnx_sha256!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    major, minor = _capability(compute_capability)
    version = trt_version if isinstance(trt_version, str) else ".".join(str(v) for v in trt_version)
    version = ".".join(str(v) for v in _version_tuple(version))
    return (
        f"{onnx_sha256[:12].lower()}_{precision}_{slug(gpu_name)}_sm{major}{minor}_trt{version}_b{max_batch}"
        f"{ENGINE_SUFFIX}"
    )


def _capability(value: tuple[int, int] | str) -> tuple[int, int]:
    if isinstance(value, str):
        digits = re.findall(r"\d+", value)
        if len(digits) == 1 and len(digits[0]) >= 2:  # "sm87" / "87"
            return int(digits[0][:-1]), int(digits[0][-1])
        if len(digits) == 2:  # "8.7"
            return int(digits[0]), int(digits[1])
        raise ValueError(f"compute capability must look like '8.7' or (8, 7), got {value!r}")
    major, minor = value
    return int(major), int(minor)


def timing_cache_name(gpu: GpuInfo, version: tuple[int, int, int]) -> str:
    return f"timing_{slug(gpu.name)}_{gpu.sm}_trt{'.'.join(map(str, version))}.cache"


# ---- building -----------------------------------------------------------------------------------------


def uses_strong_typing(trt: Any) -> bool:
    """TensorRT >= 10 takes precision from the graph (strongly typed network)."""
    return trt_version(trt)[0] >= 10 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def network_flags(trt: Any) -> int:
    flags = 0
    if trt_version(trt)[0] < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if uses_strong_typing(trt):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse the ONNX file into ``network``; every parser message ends up in the error. Keep the parser
    alive."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return parser
    messages = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["(the parser gave no reason)"]
    raise EngineBuildError(
        f"TensorRT {'.'.join(map(str, trt_version(trt)))} cannot parse {onnx_path}:\n  - "
        + "\n  - ".join(messages)
        + "\nThe bundle needs ONNX opset <= 17 and TensorRT >= 8.5; re-export it or update JetPack."
    )


def configure_builder(
    trt: Any,
    builder: Any,
    network: Any,
    precision: str,
    max_batch: int,
    input_hw: tuple[int, int],
    input_name: str,
    workspace_mb: int,
) -> Any:
    """Builder config: one optimisation profile 1..max_batch, workspace limit, precision flags (< 10 only)."""
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in inputs:
        raise EngineBuildError(f"the ONNX graph has inputs {inputs}, but the manifest names '{input_name}'")
    config = builder.create_builder_config()
    h, w = input_hw
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, h, w, 3), (max_batch, h, w, 3), (max_batch, h, w, 3))
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not uses_strong_typing(trt):
        for flag in PRECISION_FLAGS[precision]:
            config.set_flag(getattr(trt.BuilderFlag, flag))
    return config


def _attach_timing_cache(config: Any, path: Path | None) -> None:
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read timing cache %s (%s); starting a new one", path, exc)
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("timing cache %s is not usable by this TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, False)


def _save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        write_atomically(path, bytes(cache.serialize()))
    except EngineCacheError as exc:
        log.warning("%s (the next build will just take longer)", exc)


def build_engine_bytes(
    onnx_path: Path,
    precision: str,
    max_batch: int,
    input_hw: tuple[int, int],
    *,
    input_name: str = "image",
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache_path: Path | None = None,
) -> bytes:
    """Build a serialized engine in memory (no cache involved). Minutes on a Jetson."""
    if precision not in PRECISION_FLAGS:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_FLAGS)}, got {precision!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX model {onnx_path} not found; is the bundle complete?")
    trt = tensorrt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = parse_onnx(trt, network, logger, onnx_path)
    config = configure_builder(
        trt, builder, network, precision, max_batch, input_hw, input_name, workspace_mb
    )
    _attach_timing_cache(config, timing_cache_path)
    log.info("building TensorRT %s engine from %s (max batch %d)", precision, onnx_path.name, max_batch)
    serialized = builder.build_serialized_network(network, config)
    del parser  # the network may reference the parser's weights until the build is done
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build a {precision} engine from {onnx_path} (see TensorRT's messages "
            f"above). "
            "Try a larger workspace_mb, another precision, or check the GPU supports it."
        )
    _save_timing_cache(config, timing_cache_path)
    return bytes(serialized)


HASH_SUFFIX = ".sha256"  # beside each engine: sha256 of its bytes, checked before TensorRT sees them


def write_atomically(path: Path, data: bytes) -> Path:
    """``edge.util.atomic.write_atomically``, with an error that says what to do about a full or read-only
    cache."""
    try:
        return atomic.write_atomically(path, data)
    except OSError as exc:
        raise EngineCacheError(
            f"cannot write {path} ({exc.strerror or exc}); free disk space or make {Path(path).parent} "
            f"writable "
            "(or set the engine cache directory elsewhere)"
        ) from exc


def clean_stale_temp_files(cache_dir: Path) -> int:
    """Remove temp files left by a writer that died (power cut, kill -9); returns how many went.

    A temp file is named ``.<name>.<thread>.<pid>.tmp`` (``edge.util.atomic.temp_name``); one whose pid no
    longer runs is stale. A writer that is
    still running (another build in progress) keeps its file.
    """
    removed = 0
    try:
        entries = list(Path(cache_dir).iterdir())
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
            continue
        pid_text = name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        with contextlib.suppress(OSError):
            if not entry.is_symlink() and entry.is_file():
                entry.unlink()
                removed += 1
    if removed:
        log.info("removed %d stale temp file(s) from %s", removed, cache_dir)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def hash_path(engine: Path) -> Path:
    return engine.with_name(engine.name + HASH_SUFFIX)


def cache_engine(engine_bytes: bytes, path: Path) -> Path:
    """Store a built engine and its sha256 in the cache, atomically; EngineCacheError when they cannot be
    written. The hash is written after the engine, so a crash between the two leaves an engine without a
    hash, which :func:`read_cached_engine` treats as absent (rebuilt), never as trusted."""
    path = Path(path)
    with contextlib.suppress(OSError):
        hash_path(path).unlink()  # an old hash must never vouch for new bytes
    write_atomically(path, engine_bytes)
    write_atomically(hash_path(path), (hashlib.sha256(engine_bytes).hexdigest() + "\n").encode("ascii"))
    return path


def read_cached_engine(path: Path) -> bytes | None:
    """The cached engine's bytes when they match the hash beside them, else None (removed, to be rebuilt).

    Guards against a truncated or corrupted file reaching TensorRT's deserialiser (which can crash or, worse,
    load a damaged engine). Links are not followed. The cache directory belongs to the service user, who
    runs the engine anyway, so this is integrity against accidents, not authenticity (bundles have that).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cached engine %s cannot be opened (%s); rebuilding it", path, exc.strerror or exc)
        _drop(path)
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
    try:
        expected = hash_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        expected = ""
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("cached engine %s does not match its recorded sha256 (or has none); rebuilding it", path)
        _drop(path)
        return None
    return data


def _drop(path: Path) -> None:
    for stale in (path, hash_path(path)):
        with contextlib.suppress(OSError):
            stale.unlink()


def engine_path(
    cache_dir: Path,
    gpu: GpuInfo,
    version: tuple[int, int, int],
    precision: str,
    onnx_sha256: str,
    max_batch: int,
) -> Path:
    key = engine_cache_key(gpu.name, (gpu.major, gpu.minor), version, precision, onnx_sha256, max_batch)
    return Path(cache_dir) / key


def build_engine(
    onnx_path: Path,
    cache_dir: Path,
    precision: str,
    max_batch: int,
    input_hw: tuple[int, int],
    onnx_sha256: str | None = None,
    timing_cache: bool = True,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    *,
    input_name: str = "image",
    device: int = 0,
) -> Path:
    """The cached engine for this model, GPU, TensorRT and profile: reused if present, else built and cached.

    Raises EngineCacheError when the engine was built but cannot be stored (use ``build_engine_bytes`` and
    ``cache_engine`` to keep running from memory in that case, as the backend does).
    """
    trt = tensorrt_module()
    version = trt_version(trt)
    sha = onnx_sha256 or sha256_file(Path(onnx_path))
    gpu = gpu_info(device)
    path = engine_path(cache_dir, gpu, version, precision, sha, max_batch)
    clean_stale_temp_files(Path(cache_dir))
    if read_cached_engine(path) is not None:
        log.info("reusing cached TensorRT engine %s", path)
        return path
    timing = Path(cache_dir) / timing_cache_name(gpu, version) if timing_cache else None
    data = build_engine_bytes(
        onnx_path,
        precision,
        max_batch,
        input_hw,
        input_name=input_name,
        workspace_mb=workspace_mb,
        timing_cache_path=timing,
    )
    return cache_engine(data, path)
