"""TensorRT engine build, cache and backend, against a recording fake (tests/edge/fake_tensorrt.py) that poses
as TensorRT 8.6 or 10.x with cuda-python or pycuda; and, marked ``tensorrt``, against the real thing.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.scoring.backends import BackendError, load_backend
from edge.scoring.backends import tensorrt_engine as te
from edge.trust.manifest import Manifest, verify_bundle
from edge.util import atomic
from edge.util.deps import MissingDependency
from tests.edge import fake_tensorrt
from tests.edge.fake_tensorrt import FakeGPU, GpuSpec, engine_description, expected_outputs
from tests.helpers.tiny_bundle import good_parts_rgb, make_tiny_bundle

SIZE = 32
SHA = "ab" * 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("trt") / "bundle", size=SIZE, precisions=("fp32", "fp16", "int8")
    )


@pytest.fixture(scope="module")
def manifest(bundle: Path) -> Manifest:
    return verify_bundle(bundle)


@pytest.fixture
def gpu8(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    return fake_tensorrt.install(monkeypatch, "8.6.1")


@pytest.fixture
def gpu10(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    return fake_tensorrt.install(monkeypatch, "10.3.0")


def onnx_file(bundle: Path, manifest: Manifest, precision: str) -> Path:
    return bundle / manifest.precisions[precision].file


def build(bundle: Path, manifest: Manifest, cache: Path, precision: str = "fp32", max_batch: int = 4) -> Path:
    entry = manifest.precisions[precision]
    return te.build_engine(bundle / entry.file, cache, precision, max_batch, (SIZE, SIZE), entry.sha256)


# ---- cache key ----------------------------------------------------------------------------------------


def test_cache_key_names_everything_an_engine_depends_on() -> None:
    key = te.engine_cache_key("NVIDIA Jetson AGX Orin", (8, 7), "8.5.2.2", "int8", SHA, 8)
    assert key == "abababababab_int8_nvidia-jetson-agx-orin_sm87_trt8.5.2_b8.engine"
    assert te.engine_cache_key("NVIDIA H100 80GB HBM3", "9.0", (10, 3, 0), "fp16", SHA, 1) == (
        "abababababab_fp16_nvidia-h100-80gb-hbm3_sm90_trt10.3.0_b1.engine"
    )
    assert te.engine_cache_key("Orin", "sm87", "10.3", "fp32", SHA, 2).endswith("_sm87_trt10.3.0_b2.engine")


BASE = {"gpu_name": "Orin", "compute_capability": (8, 7), "trt_version": "8.6.1", "precision": "fp16",
        "onnx_sha256": SHA, "max_batch": 8}  # fmt: skip


@pytest.mark.parametrize(
    ("part", "other"),
    [
        ("gpu_name", "Xavier"),
        ("compute_capability", (7, 2)),
        ("trt_version", "8.5.2"),
        ("trt_version", "10.3.0"),
        ("precision", "int8"),
        ("onnx_sha256", "cd" * 32),
        ("max_batch", 4),
    ],
)
def test_cache_key_changes_when_any_part_changes(part: str, other: object) -> None:
    changed = dict(BASE, **{part: other})
    assert te.engine_cache_key(**BASE) != te.engine_cache_key(**changed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "gpu_name", ["NVIDIA GeForce RTX 4090 / (rev. A1)", "../../etc/passwd", "  ", "Orin\x00"]
)
def test_cache_key_is_a_safe_file_name(gpu_name: str) -> None:
    key = te.engine_cache_key(gpu_name, (8, 9), "10.0.1.6", "fp32", SHA, 8)
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*\.engine", key), key
    assert "/" not in key and ".." not in key


@pytest.mark.parametrize(
    "bad",
    [
        {"precision": "bf16"},
        {"onnx_sha256": "not-hex"},
        {"max_batch": 0},
        {"compute_capability": "eighty-seven"},
    ],
)
def test_cache_key_rejects_bad_parts(bad: dict) -> None:
    with pytest.raises(ValueError):
        te.engine_cache_key(**dict(BASE, **bad))  # type: ignore[arg-type]


# ---- building: TensorRT 8.x flags API -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "flags"), [("fp32", []), ("fp16", ["FP16"]), ("int8", ["INT8", "FP16"])]
)
def test_trt8_uses_explicit_batch_and_precision_flags(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, precision: str, flags: list[str]
) -> None:
    path = build(bundle, manifest, tmp_path / "engines", precision, max_batch=4)
    explicit_batch = 1 << int(gpu8.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert gpu8.of("create_network") == [("create_network", explicit_batch)]
    assert [c[1] for c in gpu8.of("set_flag")] == flags
    described = engine_description(path)
    assert described["flags"] == flags and described["network_flags"] == explicit_batch
    assert path.name == te.engine_cache_key(
        "NVIDIA Jetson AGX Orin", (8, 7), "8.6.1", precision, manifest.precisions[precision].sha256, 4
    )


def test_the_profile_spans_batch_one_to_max_batch(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    build(bundle, manifest, tmp_path, "fp32", max_batch=6)
    assert gpu8.of("set_shape") == [
        ("set_shape", "image", (1, SIZE, SIZE, 3), (6, SIZE, SIZE, 3), (6, SIZE, SIZE, 3))
    ]


def test_workspace_limit_goes_through_the_memory_pool_api(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    te.build_engine(onnx_file(bundle, manifest, "fp32"), tmp_path, "fp32", 2, (SIZE, SIZE), workspace_mb=256)
    assert gpu8.of("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]


def test_a_network_without_explicit_batch_would_fail_on_trt8(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest
) -> None:
    """The fake holds TensorRT 8 to its rule, so the flag test above can fail for the right reason."""
    trt = gpu8.trt
    network = trt.Builder(trt.Logger()).create_network(0)
    with pytest.raises(te.EngineBuildError, match="explicit batch"):
        te.parse_onnx(trt, network, trt.Logger(), onnx_file(bundle, manifest, "fp32"))


# ---- building: TensorRT 10 strongly typed ---------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt10_builds_strongly_typed_without_precision_flags(
    gpu10: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, precision: str
) -> None:
    path = build(bundle, manifest, tmp_path, precision)
    strongly_typed = 1 << int(gpu10.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert gpu10.of("create_network") == [("create_network", strongly_typed)]
    assert gpu10.of("set_flag") == []
    assert engine_description(path)["network_flags"] == strongly_typed
    assert "_trt10.3.0_" in path.name


def test_trt10_would_refuse_precision_flags_on_a_strongly_typed_network(
    gpu10: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the 8.x rule forced onto 10.x, the fake build fails: the 10.x test above is meaningful."""
    monkeypatch.setattr(te, "uses_strong_typing", lambda trt: False)
    monkeypatch.setattr(
        te, "network_flags", lambda trt: 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    )
    with pytest.raises(te.EngineBuildError, match="could not build a fp16 engine"):
        build(bundle, manifest, tmp_path, "fp16")


# ---- parser errors ------------------------------------------------------------------------------------


def test_parser_errors_are_raised_with_every_message(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    gpu8.state.forced_parser_errors = [
        "Unsupported ONNX data type: BFLOAT16 (16)",
        "Assertion failed: opset <= 17",
    ]
    with pytest.raises(te.EngineBuildError) as info:
        build(bundle, manifest, tmp_path)
    text = str(info.value)
    assert "cannot parse" in text and "model.fp32.onnx" in text
    assert "BFLOAT16" in text and "opset <= 17" in text
    assert "TensorRT 8.6.1" in text
    assert gpu8.state.builds == 0
    assert list(tmp_path.glob("*.engine")) == []


def test_a_corrupt_onnx_file_fails_to_parse_naming_it(gpu8: FakeGPU, tmp_path: Path) -> None:
    broken = tmp_path / "model.fp32.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(te.EngineBuildError, match=r"cannot parse .*model\.fp32\.onnx[\s\S]*Failed to parse"):
        te.build_engine(broken, tmp_path / "engines", "fp32", 2, (SIZE, SIZE))


def test_missing_onnx_file_is_named(gpu8: FakeGPU, tmp_path: Path) -> None:
    with pytest.raises(te.EngineBuildError, match="nowhere.onnx not found"):
        te.build_engine_bytes(tmp_path / "nowhere.onnx", "fp32", 2, (SIZE, SIZE))


# ---- cache --------------------------------------------------------------------------------------------


def test_a_cached_engine_is_reused_without_building(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    first = build(bundle, manifest, tmp_path)
    stamp = first.stat().st_mtime_ns
    second = build(bundle, manifest, tmp_path)
    assert second == first and second.stat().st_mtime_ns == stamp
    assert gpu8.state.builds == 1
    other = build(bundle, manifest, tmp_path, max_batch=2)  # another key: built again
    assert other != first and gpu8.state.builds == 2


def test_the_timing_cache_is_saved_and_fed_to_the_next_build(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    build(bundle, manifest, tmp_path, "fp32")
    timing = list(tmp_path.glob("timing_*.cache"))
    assert [p.name for p in timing] == ["timing_nvidia-jetson-agx-orin_sm87_trt8.6.1.cache"]
    build(bundle, manifest, tmp_path, "fp16")
    loaded = [c[1] for c in gpu8.of("create_timing_cache")]
    assert loaded == [b"", timing[0].read_bytes()[:-1]]  # the second build started from the saved cache


def test_disk_full_on_cache_write_leaves_no_partial_file(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "engines"
    cache.mkdir()
    data = te.build_engine_bytes(onnx_file(bundle, manifest, "fp32"), "fp32", 2, (SIZE, SIZE))

    def no_space(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(te.os, "replace", no_space)
    with pytest.raises(te.EngineCacheError, match="No space left on device"):
        te.cache_engine(data, cache / "x.engine")
    assert list(cache.iterdir()) == []


def test_disk_full_in_the_middle_of_writing_leaves_no_partial_file(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = te.build_engine_bytes(onnx_file(bundle, manifest, "fp32"), "fp32", 2, (SIZE, SIZE))
    real_open = open

    class HalfWriter:
        def __init__(self, fh: object) -> None:
            self.fh = fh

        def write(self, chunk: bytes) -> int:
            self.fh.write(chunk[: len(chunk) // 2])  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> object:
            return getattr(self.fh, name)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()  # type: ignore[attr-defined]

    monkeypatch.setattr(atomic, "open", lambda path, mode: HalfWriter(real_open(path, mode)), raising=False)
    with pytest.raises(te.EngineCacheError, match="No space left on device"):
        te.cache_engine(data, tmp_path / "e" / "y.engine")
    assert list((tmp_path / "e").iterdir()) == []


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "engines"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(te.EngineCacheError, match="cannot write .*engines"):
        te.cache_engine(b"data", blocker / "z.engine")


# ---- backend ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda", ["cuda.bindings.runtime", "cuda.cudart", "pycuda.driver"])
def test_backend_runs_the_engine_end_to_end(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, manifest: Manifest, tmp_path: Path, cuda: str
) -> None:
    gpu = fake_tensorrt.install(monkeypatch, "8.6.1", cuda=cuda)
    images = good_parts_rgb(3, SIZE, seed=11)
    with load_backend(
        "tensorrt", bundle, manifest, "fp16", engine_cache_dir=tmp_path, max_batch=4
    ) as backend:
        assert (backend.name, backend.precision, backend.max_batch, backend.input_hw) == (
            "tensorrt",
            "fp16",
            4,
            (SIZE, SIZE),
        )
        scores, maps = backend.run(images)
    want = expected_outputs(images)
    assert scores.dtype == np.float32 and maps.dtype == np.float32
    np.testing.assert_allclose(scores, want["score"], rtol=1e-6)
    np.testing.assert_allclose(maps, want["anomaly_map"], rtol=1e-6)
    assert gpu.state.builds == 1


def test_backend_binds_every_io_tensor_by_name_and_executes_on_its_stream(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    backend = load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path, max_batch=4)
    images = good_parts_rgb(2, SIZE, seed=12)
    backend.run(images)
    addresses = {c[1]: c[2] for c in gpu8.of("set_tensor_address")}
    assert set(addresses) == {"image", "score", "anomaly_map"}
    device_blocks = {ptr for ptr, (kind, _) in gpu8.memory.blocks.items() if kind == "device"}
    assert set(addresses.values()) == device_blocks  # each tensor has its own device buffer
    streams = [c[2] for c in gpu8.calls if c[:2] == ("cuda", "stream_create")]
    assert gpu8.of("execute_async_v3") == [("execute_async_v3", streams[0])]
    assert gpu8.of("set_input_shape")[-1] == ("set_input_shape", "image", (2, SIZE, SIZE, 3))
    copies = [c[2:] for c in gpu8.calls if c[:2] == ("cuda", "memcpy")]
    assert copies == [
        ("cudaMemcpyHostToDevice", 2 * SIZE * SIZE * 3),  # only the rows of this batch
        ("cudaMemcpyDeviceToHost", 2 * 4),
        ("cudaMemcpyDeviceToHost", 2 * SIZE * SIZE * 4),
    ]
    assert gpu8.names("cuda")[-1] == "stream_sync"
    backend.close()


def test_backend_chunks_batches_larger_than_max_batch(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    images = good_parts_rgb(7, SIZE, seed=13)
    with load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path, max_batch=3) as backend:
        scores, maps = backend.run(images)
    np.testing.assert_allclose(scores, expected_outputs(images)["score"], rtol=1e-6)
    assert maps.shape == (7, SIZE, SIZE)
    shapes = [c[2][0] for c in gpu8.of("set_input_shape")]
    assert shapes[-3:] == [3, 3, 1]
    assert len(gpu8.of("execute_async_v3")) == 3


def test_second_start_uses_the_cached_engine(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path).close()
    backend = load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path)
    assert gpu8.state.builds == 1
    assert backend.engine_path is not None and backend.engine_path.parent == tmp_path
    backend.close()


def test_engines_go_to_the_bundle_by_default(gpu8: FakeGPU, manifest: Manifest, tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", size=SIZE)
    with load_backend("tensorrt", bundle, verify_bundle(bundle)) as backend:
        assert backend.engine_path is not None and backend.engine_path.parent == bundle / "engines"


def test_backend_runs_from_memory_when_the_cache_cannot_be_written(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def no_space(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(te.os, "replace", no_space)
    images = good_parts_rgb(2, SIZE, seed=14)
    with (
        caplog.at_level(logging.WARNING),
        load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path) as backend,
    ):
        assert backend.engine_path is None
        scores, _ = backend.run(images)
    np.testing.assert_allclose(scores, expected_outputs(images)["score"], rtol=1e-6)
    assert any("running this engine from memory" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_cached_engine_is_rebuilt(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    path = build(bundle, manifest, tmp_path, max_batch=8)
    path.write_bytes(b"truncated")
    with load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path) as backend:
        assert backend.engine_path == path
    assert gpu8.state.builds == 2
    engine_description(path)  # a good engine again


def test_no_engine_and_no_building_says_how_to_build_one(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    with pytest.raises(BackendError, match="edge-export --build-engine"):
        load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path, build_if_missing=False)
    assert gpu8.state.builds == 0
    assert gpu8.memory.blocks == {}  # nothing leaked by the failed start


def test_manifest_names_must_match_the_engine(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    renamed = manifest.model_copy(
        update={"outputs": manifest.outputs.model_copy(update={"anomaly_map": "heatmap"})}
    )
    with pytest.raises(BackendError, match=r"tensors \['image', 'score', 'anomaly_map'\].*'heatmap'"):
        load_backend("tensorrt", bundle, renamed, engine_cache_dir=tmp_path)
    assert gpu8.memory.blocks == {}


def test_close_releases_buffers_context_engine_runtime_stream_in_order(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    backend = load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path)
    backend.run(good_parts_rgb(1, SIZE, seed=15))
    assert gpu8.memory.live("device") == 3 and gpu8.memory.live("host") == 3
    start = len(gpu8.calls)
    backend.close()
    assert gpu8.memory.blocks == {}
    assert gpu8.cuda.streams == {}
    order = [c[1] if c[0] in ("cuda", "del") else c[0] for c in gpu8.calls[start:]]
    order = [o for o in order if o in ("free", "free_host", "context", "engine", "runtime", "stream_destroy")]
    assert order[:6] == ["free_host", "free"] * 3
    assert order[6:] == ["context", "engine", "runtime", "stream_destroy"]
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.run(good_parts_rgb(1, SIZE, seed=15))


def test_pycuda_context_is_pushed_around_every_use(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    gpu = fake_tensorrt.install(monkeypatch, "10.3.0", cuda="pycuda.driver")
    backend = load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path)
    assert gpu.cuda.context_stack == []  # popped after construction
    backend.run(good_parts_rgb(1, SIZE, seed=16))  # the fake raises if memory is touched without a context
    assert gpu.cuda.context_stack == []
    backend.close()
    assert gpu.memory.blocks == {}
    assert gpu.names("pycuda")[-1] == "detach"


def test_gpu_info_and_engine_name_use_the_device(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    fake_tensorrt.install(monkeypatch, "8.5.2.2", gpu=GpuSpec("NVIDIA Jetson Xavier NX", 7, 2))
    assert te.gpu_info() == te.GpuInfo("NVIDIA Jetson Xavier NX", 7, 2)
    path = build(bundle, manifest, tmp_path, "int8", max_batch=8)
    assert path.name.endswith("_int8_nvidia-jetson-xavier-nx_sm72_trt8.5.2_b8.engine")


# ---- missing dependencies -----------------------------------------------------------------------------


def test_missing_tensorrt_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, manifest: Manifest
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependency, match=r"'tensorrt'.*edge-anomaly\[tensorrt\]"):
        load_backend("tensorrt", bundle, manifest)


def test_missing_cuda_bindings_name_both_choices(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver", "cuda", "pycuda"):
        monkeypatch.setitem(sys.modules, name, None)  # None makes the import fail
    with pytest.raises(MissingDependency, match=r"cuda-python or pycuda.*edge-anomaly\[tensorrt\]"):
        load_backend("tensorrt", bundle, manifest)


# ---- the real TensorRT (skipped where it is not installed) ----------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("fp16", 5e-3), ("int8", 2e-2)])
def test_real_tensorrt_matches_onnxruntime(
    bundle: Path, manifest: Manifest, tmp_path: Path, precision: str, tol: float
) -> None:
    images = good_parts_rgb(5, SIZE, seed=21)
    with load_backend("onnxruntime", bundle, manifest, precision) as ort_backend:
        want_scores, want_maps = ort_backend.run(images)
    with load_backend(
        "tensorrt", bundle, manifest, precision, engine_cache_dir=tmp_path, max_batch=4
    ) as backend:
        scores, maps = backend.run(images)  # 5 > max_batch: two chunks
        assert backend.engine_path is not None and backend.engine_path.is_file()
    np.testing.assert_allclose(scores, want_scores, atol=tol)
    np.testing.assert_allclose(maps, want_maps, atol=tol)


@pytest.mark.tensorrt
def test_real_tensorrt_engine_is_cached_and_reused(bundle: Path, manifest: Manifest, tmp_path: Path) -> None:
    first = build(bundle, manifest, tmp_path, "fp32", max_batch=2)
    stamp = first.stat().st_mtime_ns
    assert build(bundle, manifest, tmp_path, "fp32", max_batch=2) == first
    assert first.stat().st_mtime_ns == stamp
    with load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path, max_batch=2) as backend:
        assert backend.engine_path == first
        scores, _ = backend.run(good_parts_rgb(2, SIZE, seed=22))
    assert scores.shape == (2,) and np.all(np.isfinite(scores))


def test_numpy_dtype_falls_back_to_the_type_name(gpu8: FakeGPU) -> None:
    from edge.scoring.backends.tensorrt_backend import numpy_dtype

    trt = gpu8.trt
    assert numpy_dtype(trt, trt.DataType.HALF) == np.float16
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32}[dt]  # an old table without UINT8
    assert numpy_dtype(trt, trt.DataType.UINT8) == np.uint8
    with pytest.raises(BackendError, match="cannot map"):
        numpy_dtype(trt, "DataType.FP8")


# ---- cache integrity ------------------------------------------------------------------------------------


def test_each_cached_engine_has_its_hash_beside_it(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    path = build(bundle, manifest, tmp_path)
    assert te.hash_path(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["other-engine", "no-hash", "flipped-byte"])
def test_an_engine_that_does_not_match_its_hash_never_reaches_tensorrt(
    gpu8: FakeGPU, bundle: Path, manifest: Manifest, tmp_path: Path, damage: str
) -> None:
    """Even bytes TensorRT would load (another valid engine) are rebuilt, not deserialised."""
    path = build(bundle, manifest, tmp_path, max_batch=8)
    good = path.read_bytes()
    if damage == "other-engine":
        path.write_bytes(build(bundle, manifest, tmp_path, max_batch=2).read_bytes())
    elif damage == "no-hash":
        te.hash_path(path).unlink()
    else:
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    builds = gpu8.state.builds
    before = len(gpu8.of("deserialize_cuda_engine"))
    with load_backend("tensorrt", bundle, manifest, engine_cache_dir=tmp_path) as backend:
        assert backend.engine_path == path
    assert gpu8.state.builds == builds + 1  # rebuilt
    assert len(gpu8.of("deserialize_cuda_engine")) == before + 1  # only the fresh build was deserialised
    assert te.read_cached_engine(path) == path.read_bytes()


def test_stale_temp_files_are_cleaned_but_a_live_writers_file_is_kept(tmp_path: Path) -> None:
    dead = tmp_path / ".x.engine.999999999.tmp"
    live = tmp_path / f".y.engine.{os.getppid()}.tmp"
    keep = tmp_path / "z.engine"
    for path in (dead, live, keep):
        path.write_bytes(b"partial")
    assert te.clean_stale_temp_files(tmp_path) == 1
    assert not dead.exists() and live.exists() and keep.exists()


def test_the_cache_directory_is_fsynced_after_each_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    te.cache_engine(b"engine bytes", tmp_path / "e" / "a.engine")
    assert synced == [tmp_path / "e", tmp_path / "e"]  # the engine's rename, then its hash's
