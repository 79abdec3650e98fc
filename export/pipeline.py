"""The export itself: checkpoint -> staged models -> torch reference -> score calibration -> gate -> bundle.

Workstation only (torch, onnx, the training code); ``export.cli`` imports it only for an export, so
``edge-export --build-engine BUNDLE`` still runs on a device that has none of them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibration.int8 import (
    DEFAULT_CALIB_COUNT,
    DEFAULT_METHOD,
    THIN_CALIBRATION,
    CalibrationError,
    Int8Options,
    quantize_int8,
    select_evenly,
)
from calibration.scores import (
    DEFAULT_FAR,
    Normalization,
    ScoreCalibrationError,
    Threshold,
    normalization_from_good,
    threshold_best_f1,
    threshold_from_good,
)
from edge.trust.manifest import Manifest
from export import ExportError, GateFailed
from export.bundle import StagedBundle, exporter_versions, input_spec, model_file, precision_entry, utc_now
from export.fp16 import fp16_from_file
from export.gate import GateReport, GateSet, format_table, run_gate, torch_outputs
from export.onnx_export import (
    DEFAULT_OPSET,
    inference_module,
    int8_float_nodes,
    normalized_input,
    normalized_range,
    onnx_from_checkpoint,
    tail_nodes,
)
from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.data import (
    DatasetError,
    MVTecCategory,
    TiledImages,
    good_images,
    load_images,
    load_samples,
    load_test_set,
    load_tiles,
)

DEFAULT_MAX_BATCH = 8
# Bad input the user can fix (exit code 2); the CLI adds the errors of the light modules.
INPUT_ERRORS = (CheckpointError, DatasetError, CalibrationError, ScoreCalibrationError)


def say(message: str) -> None:
    print(f"edge-export: {message}", file=sys.stderr, flush=True)


@dataclass
class ExportOptions:
    checkpoint: Path
    out: Path
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_count: int | None = DEFAULT_CALIB_COUNT
    calib_method: str = DEFAULT_METHOD
    opset: int = DEFAULT_OPSET
    max_batch: int = DEFAULT_MAX_BATCH
    build_engine: bool = False
    gate: bool = True
    data: Path | None = None
    name: str | None = None
    false_alarm_rate: float = DEFAULT_FAR
    sign_key: Path | None = None  # Ed25519 private key (edge-keygen): writes manifest.sig

    @property
    def precisions(self) -> list[str]:
        return ["fp32"] + (["fp16"] if self.fp16 else []) + (["int8"] if self.int8 else [])

    @property
    def engine_precisions(self) -> list[str]:
        """Engines wanted after the export: all with --build-engine, the int8 one with --int8 (DESIGN)."""
        if self.build_engine:
            return self.precisions
        return ["int8"] if self.int8 else []


@dataclass
class Inputs:
    """Everything read from disk before anything is written, so bad input fails fast and leaves no bundle."""

    ckpt: Checkpoint
    gate_set: GateSet  # the held-out good images first, then the labelled set
    n_val: int  # how many held-out good images (or their tiles) lead the gate set
    calib_images: np.ndarray | None
    tiled: TiledImages | None = None  # a tiled model: the held-out good images' tiles and grids


# ---- inputs ---------------------------------------------------------------------------------------------


def _recorded_paths(ckpt: Checkpoint, key: str, what: str, hint: str) -> list[Path]:
    paths = [Path(p) for p in ckpt.data.get(key) or []]
    if not paths:
        raise ExportError(f"checkpoint {ckpt.path} records no {what} (data.{key} is empty); {hint}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ExportError(
            f"{len(missing)} of the checkpoint's {len(paths)} {what} are not where training found them "
            f"(first: {missing[0]}); export on the machine that trained, or restore the data folder there."
        )
    return paths


def _calibration_paths(opts: ExportOptions, ckpt: Checkpoint) -> list[Path]:
    if opts.calib is not None:
        paths = good_images(opts.calib)  # DatasetError (clear) when missing or empty
    else:
        paths = _recorded_paths(ckpt, "train_files", "training images", "pass good images with --calib DIR")
    return select_evenly(paths, opts.calib_count)


def load_inputs(opts: ExportOptions) -> Inputs:
    ckpt = load_checkpoint(opts.checkpoint)
    unexportable = getattr(ckpt.model, "export_refusal", None)
    if unexportable:
        raise CheckpointError(f"a {ckpt.kind} model with this config cannot be exported: {unexportable}")
    pre = ckpt.preprocess
    say(
        f"loaded {ckpt.kind} checkpoint {opts.checkpoint} (sha256 {ckpt.sha256[:12]}, input "
        f"{pre.height}x{pre.width})"
    )
    val_paths = _recorded_paths(
        ckpt, "val_files", "held-out good images", "re-train with edge-train, which keeps a validation slice"
    )
    tiled = None
    if pre.tiling is not None:  # the gate compares tiles; calibration scores whole images, stitched
        if opts.data is not None:
            raise ExportError(
                "--data (threshold by best F1 on a labelled set) is not offered for a tiled model yet; "
                "export without it: the threshold then comes from the held-out good images"
            )
        tiled = load_tiles(val_paths, pre)[0]
        val = tiled.tiles
        say(f"tiled model: {len(val_paths)} held-out good images, {len(val)} tiles of {pre.tiling.tile} px")
    else:
        val = load_images(val_paths, pre)
    images, good, labels = val, np.ones(len(val), bool), None
    if opts.data is not None:
        test_images, _, test_labels, _, _ = load_test_set(MVTecCategory(opts.data), pre)
        images = np.concatenate([val, test_images])
        labels = np.concatenate([np.zeros(len(val), np.int64), test_labels])
        good = labels == 0
        say(f"labelled set {opts.data}: {len(test_images)} images, {int(test_labels.sum())} defective")
    calib = None
    refusal = getattr(ckpt.model, "int8_refusal", None)
    if opts.int8 and refusal:
        raise CheckpointError(
            f"--int8 is not offered for a {ckpt.kind} model: {refusal}; export without --int8"
        )
    if opts.int8:
        calib_paths = _calibration_paths(opts, ckpt)
        calib = load_samples(calib_paths, pre)
        if pre.tiling is not None and opts.calib_count:  # tiles of the chosen images, as many as asked
            calib = calib[np.asarray(select_evenly(list(range(len(calib))), opts.calib_count), np.int64)]
    gate_set = GateSet(images=images, good=good, labels=labels)
    return Inputs(ckpt=ckpt, gate_set=gate_set, n_val=len(val), calib_images=calib, tiled=tiled)


# ---- the export -----------------------------------------------------------------------------------------


def calibrate_scores(
    ref_scores: np.ndarray, n_val: int, labels: np.ndarray | None, far: float
) -> tuple[Normalization, Threshold]:
    """Normalisation from the held-out good scores (the first ``n_val``); threshold by false-alarm rate,
    or by best F1 over all images when a labelled set was given."""
    norm = normalization_from_good(ref_scores[:n_val])
    if labels is not None and labels.any():
        return norm, threshold_best_f1(norm.apply(ref_scores), labels)
    return norm, threshold_from_good(norm.apply(ref_scores[:n_val]), far)


def write_models(opts: ExportOptions, inputs: Inputs, stage: Path) -> dict[str, Path]:
    ckpt, files = inputs.ckpt, {}
    t = time.perf_counter()
    say(f"exporting fp32 ONNX (opset {opts.opset})…")
    files["fp32"] = onnx_from_checkpoint(ckpt, stage / model_file("fp32"), opts.opset)
    say(f"fp32 exported in {time.perf_counter() - t:.1f} s")
    if opts.fp16:
        say("converting to fp16 (tail kept in fp32)…")
        files["fp16"] = fp16_from_file(files["fp32"], stage / model_file("fp16"))
    if opts.int8:
        files["int8"] = write_int8(opts, inputs, files["fp32"], stage)
    return files


def write_int8(opts: ExportOptions, inputs: Inputs, fp32: Path, stage: Path) -> Path:
    images = inputs.calib_images
    if images is None:
        raise ExportError("internal: --int8 without calibration images loaded")
    if len(images) < THIN_CALIBRATION:
        say(
            f"WARNING: calibrating int8 on only {len(images)} good images (fewer than {THIN_CALIBRATION}); "
            "the activation ranges may miss normal variation on the line. Give more with --calib DIR."
        )
    say(f"calibrating int8 on {len(images)} images ({opts.calib_method})…")
    model = onnx.load(str(fp32))
    fixed = {}
    name = normalized_input(model)
    if name:
        fixed[name] = normalized_range(inputs.ckpt.preprocess)
    return quantize_int8(
        fp32,
        stage / model_file("int8"),
        images,
        exclude_nodes=tail_nodes(model) + int8_float_nodes(model),
        options=Int8Options(method=opts.calib_method, progress=True),
        fixed_ranges=fixed,
    )


def build_manifest(
    opts: ExportOptions,
    inputs: Inputs,
    stage: Path,
    norm: Normalization,
    threshold: Threshold,
    report: GateReport,
    started: float,
) -> Manifest:
    """``started``: perf_counter at the export's start, so the manifest records how long the export took."""
    ckpt = inputs.ckpt
    root = ckpt.data.get("root")
    name = opts.name or f"{ckpt.kind}-{Path(root).name if root else opts.checkpoint.stem}"
    return Manifest.model_validate(
        {
            "model": {
                "name": name,
                "kind": ckpt.kind,
                "checkpoint_sha256": ckpt.sha256,
                "config": ckpt.config,
            },
            "input": input_spec(ckpt.preprocess, opts.max_batch),
            "normalization": {
                "offset": norm.offset,
                "scale": norm.scale,
                "method": norm.method,
                "n_images": norm.n_images,
            },
            "threshold": {
                "default": threshold.value,
                "method": threshold.method,
                "false_alarm_rate": threshold.false_alarm_rate,
            },
            "precisions": {p: precision_entry(stage, p, report.results.get(p)) for p in opts.precisions},
            "opset": opts.opset,
            "exporter": {**exporter_versions(), "export_time_s": f"{time.perf_counter() - started:.1f}"},
            "gate_disabled": not opts.gate,
            "created_at": utc_now(),
        }
    )


def export_bundle(opts: ExportOptions) -> Path:
    """The whole export; raises GateFailed / input errors, and writes ``opts.out`` only on success."""
    started = time.perf_counter()
    inputs = load_inputs(opts)
    module = inference_module(inputs.ckpt)
    with StagedBundle(opts.out) as stage:
        files = write_models(opts, inputs, stage.path)
        say(f"running the torch fp32 reference on {len(inputs.gate_set.images)} images…")
        reference = torch_outputs(module, inputs.gate_set.images, progress="torch reference")
        if inputs.tiled is not None:  # image scores as the daemon computes them: max of the stitched map
            scores = np.array([m.max() for m in inputs.tiled.stitched(reference[1][: inputs.n_val])])
            norm, threshold = calibrate_scores(scores, len(scores), None, opts.false_alarm_rate)
        else:
            norm, threshold = calibrate_scores(
                reference[0], inputs.n_val, inputs.gate_set.labels, opts.false_alarm_rate
            )
        inputs.gate_set.scale = norm.scale
        say(f"accuracy gate ({', '.join(files)})…")
        report = run_gate(module, files, inputs.gate_set, reference=reference, progress=True)
        table = format_table(report)
        print(table, flush=True)
        if not report.passed:
            failed = ", ".join(report.failed())
            if opts.gate:
                raise GateFailed(
                    f"{failed} failed the accuracy gate; no bundle written (see the table above)", table
                )
            say(
                f"WARNING: {failed} failed the accuracy gate; writing the bundle anyway (--no-gate, recorded "
                f"in the manifest)"
            )
        stage.commit(
            build_manifest(opts, inputs, stage.path, norm, threshold, report, started), opts.sign_key
        )
    say(
        f"bundle written to {opts.out} in {time.perf_counter() - started:.1f} s "
        f"(threshold {threshold.value:.3f} normalised, {threshold.method})"
    )
    return opts.out
