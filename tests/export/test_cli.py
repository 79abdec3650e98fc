"""``edge-export`` end to end on the tiny checkpoint: bundle contents, gate failures, bad input, atomicity."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.trust.manifest import MANIFEST_NAME, BundleError, sha256_file, verify_bundle
from edge.trust.signing import SIGNATURE_NAME, TrustedKeys
from export.bundle import StagedBundle
from export.cli import EXIT_GATE, EXIT_INPUT, EXIT_OK, main
from export.engine import tensorrt_available
from export.gate import torch_outputs
from export.keygen import write_key_pair
from export.onnx_export import inference_module
from tests.export import TinyModel
from training.checkpoint import load_checkpoint
from training.data import load_images, load_test_set

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rc: int
    out: str
    err: str


def run_cli(*argv: object) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return Run(rc, out.getvalue(), err.getvalue())


def leftovers(parent: Path) -> list[str]:
    """Temp or old-bundle directories the atomic writer must never leave behind."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def write_images(folder: Path, n: int, value: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((64, 64, 3), value, np.uint8))
    return folder


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(private key, public key, fingerprint) from edge-keygen's own code."""
    return write_key_pair(tmp_path_factory.mktemp("keys") / "export")


@pytest.fixture(scope="module")
def full_export(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory, signing_key: tuple[Path, Path, str]
) -> tuple[Path, Run]:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    run = run_cli(
        tiny_model.checkpoint, "--out", out, "--fp16", "--int8", "--data", tiny_model.data,
        "--sign-key", signing_key[0],
    )  # fmt: skip
    return out, run


def test_full_export_writes_a_verified_bundle(tiny_model: TinyModel, full_export: tuple[Path, Run]) -> None:
    out, run = full_export
    assert run.rc == EXIT_OK, run.err + run.out
    manifest = verify_bundle(out)
    assert sorted(manifest.precisions) == ["fp16", "fp32", "int8"]
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST_NAME,
        SIGNATURE_NAME,
        "model.fp16.onnx",
        "model.fp32.onnx",
        "model.int8.onnx",
    ]
    assert manifest.model.kind == "conv-ae" and manifest.model.name == "conv-ae-parts"
    assert manifest.model.checkpoint_sha256 == sha256_file(tiny_model.checkpoint)
    assert manifest.model.config["latent_dim"] == 32
    assert (manifest.input.height, manifest.input.width, manifest.input.dtype) == (64, 64, "uint8")
    assert manifest.input.mean == pytest.approx([0.485, 0.456, 0.406]) and manifest.input.max_batch == 8
    assert manifest.opset == 17 and not manifest.gate_disabled
    assert {"torch", "onnx", "onnxruntime", "edge-anomaly"} <= set(manifest.exporter)
    for precision, entry in manifest.precisions.items():
        assert entry.gate is not None and entry.gate.passed, precision
        assert {"map_pearson_mean", "auroc_drop_pt", "good_score_err_mean"} <= set(entry.gate.metrics)
    assert manifest.threshold.method == "best-f1"  # a labelled set was given
    assert leftovers(out.parent) == []


def test_sign_key_signs_the_exported_manifest(
    full_export: tuple[Path, Run], signing_key: tuple[Path, Path, str]
) -> None:
    out, _ = full_export
    _, public, fingerprint = signing_key
    assert verify_bundle(out, trusted_keys=TrustedKeys.load([public])).signer == fingerprint
    text = (out / MANIFEST_NAME).read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text


def test_normalisation_comes_from_the_held_out_good_images(
    tiny_model: TinyModel, full_export: tuple[Path, Run]
) -> None:
    manifest = verify_bundle(full_export[0])
    ckpt = load_checkpoint(tiny_model.checkpoint)
    scores = torch_outputs(inference_module(ckpt), load_images(ckpt.data["val_files"], ckpt.preprocess))[0]
    median = float(np.median(scores))
    assert manifest.normalization.offset == pytest.approx(median, rel=1e-6)
    assert manifest.normalization.scale == pytest.approx(float(np.quantile(scores, 0.99)) - median, rel=1e-5)
    assert manifest.normalization.n_images == len(ckpt.data["val_files"])
    # best F1 on a cleanly separated set: the threshold lies between the good and the defective parts
    images, _, labels, _, _ = load_test_set(tiny_model.data, ckpt.preprocess)
    test_scores = torch_outputs(inference_module(ckpt), images)[0]
    normalised = np.array([manifest.normalize(float(v)) for v in np.concatenate([scores, test_scores])])
    is_defect = np.concatenate([np.zeros(len(scores), bool), labels == 1])
    assert normalised[~is_defect].max() < manifest.threshold.default <= normalised[is_defect].min()


def test_progress_and_table_are_printed(full_export: tuple[Path, Run]) -> None:
    run = full_export[1]
    for line in ("exporting fp32", "calibrating int8 on 36 images", "accuracy gate", "bundle written to"):
        assert line in run.err
    assert "fewer than 100" in run.err  # 36 calibration images: the thin-data warning
    assert "precision" in run.out and "map r mean" in run.out and run.out.count("pass") == 3
    if not tensorrt_available():
        assert "will be built on the device" in run.err and "--build-engine BUNDLE" in run.err


def test_failing_gate_writes_nothing_and_keeps_the_old_bundle(
    tiny_model: TinyModel,
    full_export: tuple[Path, Run],
    tmp_path: Path,
) -> None:
    old = tmp_path / "bundle"
    shutil.copytree(full_export[0], old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    gray = write_images(tmp_path / "gray", 8, 128)  # an absurd calibration set: flat grey frames
    run = run_cli(tiny_model.checkpoint, "--out", old, "--int8", "--calib", gray)
    assert run.rc == EXIT_GATE, run.err
    assert "FAIL" in run.out and "int8" in run.out and "failed the accuracy gate" in run.err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_no_gate_writes_and_records_it_replacing_the_old_bundle(
    tiny_model: TinyModel,
    full_export: tuple[Path, Run],
    tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(full_export[0], out)
    gray = write_images(tmp_path / "gray", 8, 128)
    run = run_cli(
        tiny_model.checkpoint, "--out", out, "--int8", "--calib", gray, "--no-gate", "--name", "line-3"
    )
    assert run.rc == EXIT_OK, run.err
    assert "FAIL" in run.out and "--no-gate" in run.err
    manifest = verify_bundle(out)
    assert manifest.gate_disabled and manifest.model.name == "line-3"
    assert sorted(manifest.precisions) == ["fp32", "int8"]  # the old fp16 model went with the old bundle
    assert not (out / "model.fp16.onnx").exists()
    assert manifest.precisions["int8"].gate is not None and not manifest.precisions["int8"].gate.passed
    assert manifest.threshold.method == "false-alarm-rate" and manifest.threshold.false_alarm_rate == 0.01
    assert leftovers(tmp_path) == []


def _wrong_kind(src: Path, dst: Path) -> Path:
    payload = torch.load(src, weights_only=True)
    payload["kind"] = "gtrans"
    torch.save(payload, dst)
    return dst


def _no_val(src: Path, dst: Path) -> Path:
    payload = torch.load(src, weights_only=True)
    payload["data"] = {"root": payload["data"]["root"]}
    torch.save(payload, dst)
    return dst


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda src, dst: dst.write_bytes(b"\x00not a checkpoint" * 100) and dst, "cannot be read"),
        (_wrong_kind, "gtrans config has unknown keys"),
        (_no_val, "records no held-out good images"),
        (lambda src, dst: dst, "does not exist"),
    ],
    ids=["corrupt", "wrong-kind", "no-validation-slice", "missing"],
)
def test_bad_checkpoints_are_clear_errors(tiny_model: TinyModel, tmp_path: Path, make, message: str) -> None:
    ckpt = make(tiny_model.checkpoint, tmp_path / "checkpoint.pt")
    run = run_cli(ckpt, "--out", tmp_path / "bundle", "--int8")
    assert run.rc == EXIT_INPUT
    assert message in run.err
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_empty_calibration_folder_is_a_clear_error(tiny_model: TinyModel, tmp_path: Path) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    run = run_cli(tiny_model.checkpoint, "--out", tmp_path / "bundle", "--int8", "--calib", empty)
    assert run.rc == EXIT_INPUT and "contains no images" in run.err
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_out_that_is_not_a_bundle_is_left_alone(tiny_model: TinyModel, tmp_path: Path) -> None:
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "report.docx").write_text("keep me")
    run = run_cli(tiny_model.checkpoint, "--out", precious)
    assert run.rc == EXIT_INPUT and "not a bundle" in run.err
    assert [p.name for p in precious.iterdir()] == ["report.docx"]


def test_tampered_bundle_is_refused(full_export: tuple[Path, Run], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(full_export[0], bundle)
    model = bundle / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its manifest"):
        verify_bundle(bundle)
    run = run_cli("--build-engine", bundle)
    assert run.rc == EXIT_INPUT and "does not match its manifest" in run.err


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_says_where_it_will_be_built(full_export: tuple[Path, Run]) -> None:
    run = run_cli("--build-engine", full_export[0])
    assert run.rc == EXIT_INPUT
    assert "TensorRT is not importable" in run.err and "on the device" in run.err
    assert not (full_export[0] / "engines").exists()


@pytest.mark.tensorrt
def test_build_engine_on_the_device(full_export: tuple[Path, Run], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(full_export[0], bundle)
    run = run_cli("--build-engine", bundle, "--max-batch", 2)
    assert run.rc == EXIT_OK, run.err
    engines = sorted((bundle / "engines").glob("*.engine"))
    assert len(engines) == 3
    verify_bundle(bundle)  # engines do not disturb the manifest's checksums


def test_usage_errors_exit_2(tiny_model: TinyModel) -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main([str(tiny_model.checkpoint)])
    assert exc.value.code == 2
    run = run_cli(tiny_model.checkpoint, "--out", "/nonexistent/x", "--max-batch", 0)
    assert run.rc == EXIT_INPUT and "--max-batch must be at least 1" in run.err
    run = run_cli(tiny_model.checkpoint, "--out", "/nonexistent/x", "--false-alarm-rate", 5)
    assert run.rc == EXIT_INPUT and "--false-alarm-rate must be between 0 and 0.5" in run.err


def test_cli_defaults_agree_with_the_pipeline() -> None:
    """export.cli repeats a few defaults so that it imports nothing heavy; they must not drift."""
    from calibration import int8, scores
    from export import cli, onnx_export, pipeline

    assert cli.DEFAULT_OPSET == onnx_export.DEFAULT_OPSET
    assert cli.DEFAULT_CALIB_COUNT == int8.DEFAULT_CALIB_COUNT
    assert tuple(cli.CALIBRATION_METHODS) == tuple(int8.CALIBRATION_METHODS)
    assert cli.DEFAULT_METHOD == int8.DEFAULT_METHOD
    assert cli.DEFAULT_FAR == scores.DEFAULT_FAR
    assert cli.DEFAULT_MAX_BATCH == pipeline.DEFAULT_MAX_BATCH


def test_build_engine_path_imports_no_training_stack(full_export: tuple[Path, Run]) -> None:
    """On the device there is no torch or onnx: ``edge-export --build-engine BUNDLE`` must not need them."""
    code = (
        "import sys; from export.cli import main; rc = main(['--build-engine', sys.argv[1]]); "
        "heavy = sorted(m for m in ('torch', 'onnx', 'training', 'export.pipeline', 'calibration') if m in "
        "sys.modules); "
        "print(rc, heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(full_export[0])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    rc, heavy = done.stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    assert int(rc) == (EXIT_OK if tensorrt_available() else EXIT_INPUT)


def test_staged_bundle_that_fails_verification_is_discarded(
    full_export: tuple[Path, Run], tmp_path: Path
) -> None:
    """The atomic writer on its own: a manifest whose checksum does not match never replaces the old
    bundle."""
    old = tmp_path / "bundle"
    shutil.copytree(full_export[0], old)
    before = (old / MANIFEST_NAME).read_bytes()
    manifest = verify_bundle(old)
    with pytest.raises(BundleError, match="does not match its manifest"), StagedBundle(old) as stage:
        shutil.copy(old / "model.fp32.onnx", stage.path / "model.fp32.onnx")
        (stage.path / "model.fp32.onnx").write_bytes(b"truncated")
        stage.commit(manifest.model_copy(update={"precisions": {"fp32": manifest.precisions["fp32"]}}))
    assert (old / MANIFEST_NAME).read_bytes() == before
    assert leftovers(tmp_path) == []
