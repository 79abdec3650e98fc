"""The onnxruntime backend on a real tiny bundle: numbers, batching, options and errors a user can act on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.scoring.backends import BACKENDS, BackendError, load_backend
from edge.scoring.backends.onnxruntime_backend import OnnxRuntimeBackend, provider_chain
from edge.trust.manifest import BundleError, Manifest, verify_bundle
from tests.helpers.tiny_bundle import (
    default_reference,
    defective_parts_rgb,
    good_parts_rgb,
    make_tiny_bundle,
    reference_scores,
)

SIZE = 128


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("tiny") / "bundle", size=SIZE, precisions=("fp32", "fp16", "int8")
    )


@pytest.fixture(scope="module")
def manifest(bundle: Path) -> Manifest:
    return verify_bundle(bundle)


@pytest.fixture(scope="module")
def good() -> np.ndarray:
    return good_parts_rgb(12, SIZE, seed=77)


@pytest.fixture(scope="module")
def defective() -> np.ndarray:
    return defective_parts_rgb(12, SIZE, seed=78)


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-5), ("fp16", 2e-3), ("int8", 1e-2)])
def test_outputs_match_the_reference_maths(
    bundle: Path, manifest: Manifest, good: np.ndarray, defective: np.ndarray, precision: str, tol: float
) -> None:
    images = np.concatenate([good[:4], defective[:4]])
    want_scores, want_maps = reference_scores(images, default_reference(SIZE))
    with load_backend("onnxruntime", bundle, manifest, precision, intra_op_threads=1) as backend:
        assert (backend.name, backend.precision, backend.max_batch, backend.input_hw) == (
            "onnxruntime",
            precision,
            8,
            (SIZE, SIZE),
        )
        scores, maps = backend.run(images)
    assert scores.dtype == np.float32 and maps.dtype == np.float32
    assert scores.shape == (8,) and maps.shape == (8, SIZE, SIZE)
    np.testing.assert_allclose(scores, want_scores, atol=tol)
    np.testing.assert_allclose(maps, want_maps, atol=tol)
    np.testing.assert_allclose(scores, maps.max(axis=(1, 2)), atol=tol)


def test_calibrated_threshold_separates_good_from_defective_parts(
    bundle: Path, manifest: Manifest, good: np.ndarray, defective: np.ndarray
) -> None:
    with load_backend("onnxruntime", bundle, manifest) as backend:
        good_scores = [manifest.normalize(float(s)) for s in backend.run(good)[0]]
        bad_scores = [manifest.normalize(float(s)) for s in backend.run(defective)[0]]
    threshold = manifest.threshold.default
    assert max(good_scores) < threshold - 1.0, good_scores
    assert min(bad_scores) > threshold + 1.0, bad_scores
    assert abs(float(np.median(good_scores))) < 1.0  # offset = median of good parts


def test_defect_map_peaks_on_the_defect(bundle: Path, manifest: Manifest) -> None:
    from training.synthetic import defective_part

    rng = np.random.default_rng(5)
    part = defective_part(rng, SIZE, "blob")
    rgb = part.image[..., ::-1].copy()
    with load_backend("onnxruntime", bundle, manifest) as backend:
        _, maps = backend.run(rgb[None])
    peak = np.unravel_index(int(maps[0].argmax()), maps[0].shape)
    assert part.mask[peak] == 255


def test_batches_larger_than_max_batch_run_in_chunks(bundle: Path, manifest: Manifest) -> None:
    images = good_parts_rgb(7, SIZE, seed=3)
    with load_backend("onnxruntime", bundle, manifest, max_batch=3) as backend:
        assert backend.max_batch == 3
        scores, maps = backend.run(images)
        singles = [backend.run(img[None]) for img in images]
        empty_scores, empty_maps = backend.run(images[:0])
    assert scores.shape == (7,) and maps.shape == (7, SIZE, SIZE)
    np.testing.assert_allclose(scores, np.concatenate([s for s, _ in singles]), rtol=1e-6)
    np.testing.assert_allclose(maps, np.concatenate([m for _, m in singles]), rtol=1e-6, atol=1e-7)
    assert empty_scores.shape == (0,) and empty_maps.shape == (0, SIZE, SIZE)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((1, SIZE, SIZE, 3), np.float32), "uint8"),
        (np.zeros((SIZE, SIZE, 3), np.uint8), "shape"),
        (np.zeros((1, 64, 64, 3), np.uint8), r"\(N, 128, 128, 3\)"),
        (np.zeros((1, SIZE, SIZE, 4), np.uint8), "shape"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_input_is_rejected_with_the_expected_shape(
    bundle: Path, manifest: Manifest, images: object, match: str
) -> None:
    with load_backend("onnxruntime", bundle, manifest) as backend, pytest.raises(ValueError, match=match):
        backend.run(images)  # type: ignore[arg-type]


def test_non_contiguous_input_gives_the_same_result(bundle: Path, manifest: Manifest) -> None:
    images = good_parts_rgb(2, SIZE, seed=9)
    bgr_view = images[..., ::-1]  # a strided view, as a colour-order flip produces
    with load_backend("onnxruntime", bundle, manifest) as backend:
        a = backend.run(bgr_view)[0]
        b = backend.run(np.ascontiguousarray(bgr_view))[0]
    np.testing.assert_array_equal(a, b)


def test_intra_op_threads_reaches_the_session(bundle: Path, manifest: Manifest) -> None:
    backend = OnnxRuntimeBackend(bundle, manifest, intra_op_threads=1)
    assert backend._session.get_session_options().intra_op_num_threads == 1
    backend.close()


def test_unknown_backend_lists_the_known_ones(bundle: Path, manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="onnxruntime, tensorrt"):
        load_backend("openvino", bundle, manifest)
    assert set(BACKENDS) == {"onnxruntime", "tensorrt"}


def test_unknown_option_is_named(bundle: Path, manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="threads.*accepts: intra_op_threads"):
        load_backend("onnxruntime", bundle, manifest, threads=2)


def test_missing_precision_is_a_bundle_error(tmp_path: Path) -> None:
    only_fp32 = make_tiny_bundle(tmp_path / "b", size=32)
    with pytest.raises(BundleError, match="no int8 model"):
        load_backend("onnxruntime", only_fp32, verify_bundle(only_fp32), "int8")


def test_unavailable_provider_is_an_error_naming_what_is_available(
    bundle: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="CUDAExecutionProvider.*available: CPUExecutionProvider"):
        load_backend("onnxruntime", bundle, manifest, providers="cuda")


@pytest.mark.parametrize(
    ("wanted", "chain"),
    [
        ("cpu", ["CPUExecutionProvider"]),
        ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("TensorRT", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_provider_chain(wanted: object, chain: list[str]) -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain(wanted, available) == chain  # type: ignore[arg-type]


def test_unknown_provider_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        provider_chain("rocm", ["CPUExecutionProvider"])


def test_corrupt_onnx_file_names_the_file(bundle: Path, manifest: Manifest, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    model = broken / "model.fp32.onnx"
    model.write_bytes(model.read_bytes()[:200])  # truncated in transfer
    with pytest.raises(BackendError, match=r"cannot load .*model\.fp32\.onnx.*copy the bundle again"):
        load_backend("onnxruntime", broken, manifest)


def test_manifest_output_names_must_exist_in_the_graph(bundle: Path, manifest: Manifest) -> None:
    renamed = manifest.model_copy(
        update={"outputs": manifest.outputs.model_copy(update={"score": "image_score"})}
    )
    with pytest.raises(BackendError, match="missing: \\['image_score'\\]"):
        load_backend("onnxruntime", bundle, renamed)


def test_manifest_input_size_must_match_the_graph(bundle: Path, manifest: Manifest) -> None:
    wrong = manifest.model_copy(
        update={"input": manifest.input.model_copy(update={"height": 96, "width": 96})}
    )
    with pytest.raises(BackendError, match="takes 128x128 images but the manifest says 96x96"):
        load_backend("onnxruntime", bundle, wrong)


def test_close_is_idempotent_and_run_after_close_fails(bundle: Path, manifest: Manifest) -> None:
    backend = load_backend("onnxruntime", bundle, manifest)
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.run(good_parts_rgb(1, SIZE, seed=1))


def test_tiny_bundle_manifest_is_complete(manifest: Manifest) -> None:
    assert manifest.model.kind == "tiny-reference" and manifest.opset == 17
    assert set(manifest.precisions) == {"fp32", "fp16", "int8"}
    assert manifest.input.color_order == "RGB" and (manifest.input.height, manifest.input.width) == (
        SIZE,
        SIZE,
    )
    assert manifest.normalization.scale > 0 and manifest.normalization.n_images == 16


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False), ("int8", True, True)]
)
def test_tensorrt_provider_caches_engines_and_follows_the_precision(
    tmp_path: Path, precision: str, fp16: bool, int8: bool
) -> None:
    from edge.scoring.backends.onnxruntime_backend import _with_provider_options

    chain = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    out = _with_provider_options(chain, precision, tmp_path / "ort-trt")
    name, options = out[0]  # type: ignore[misc]
    assert name == "TensorrtExecutionProvider" and out[1:] == chain[1:]
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt") and (tmp_path / "ort-trt").is_dir()
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
