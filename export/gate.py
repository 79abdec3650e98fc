"""The accuracy gate: every exported precision is compared with torch fp32 before it may ship.

Modelled on Polygraphy's comparator: run the reference (``training.graph.InferenceModel`` in torch) and
each ONNX model (through the device's own ONNX Runtime backend, on CPU) on the same images, and judge the
differences with numbers that mean something on the line:

- score error in normalised units (multiples of the good-score spread, the unit the threshold is in),
  on the held-out good images (``good_score_err_*``, what moves the false-alarm rate) and on all images;
- per-image Pearson correlation between the maps (what the defect mask is cut from): mean and minimum;
- image AUROC and its drop in points, when labelled defects are part of the set.

A precision fails when a gated number passes its limit; the table of all numbers is printed either way.
ONNX Runtime on CPU only approximates fp16 on a GPU (kernels without fp16 run in fp32 between casts), so
the device's engine can differ a little more than the fp16 row shows; int8 Q/DQ is simulated faithfully.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edge.trust.manifest import GateResult
from edge.util.deps import require
from export import ExportError
from training.progress import bar

Outputs = tuple[np.ndarray, np.ndarray]  # scores (N,), maps (N, H, W)


@dataclass(frozen=True)
class GateLimits:
    """None = not gated (still reported)."""

    max_auroc_drop_pt: float | None = None
    min_map_pearson_mean: float | None = None
    max_good_score_err_mean: float | None = None
    max_score_err_max: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items() if v is not None}


# AUROC drop and map correlation: the project's defaults (DESIGN.md, the bundle). The good-score error (mean,
# in good-spreads) guards
# the false-alarm rate, which the threshold was calibrated for on fp32 scores: a shift of 1.0 moves a typical
# good part to where the worst 1 % of good parts were.
DEFAULT_LIMITS: dict[str, GateLimits] = {
    # ONNX fp32 must reproduce torch: any visible difference means the export itself is wrong.
    "fp32": GateLimits(max_auroc_drop_pt=0.01, min_map_pearson_mean=0.9999, max_score_err_max=0.01),
    "fp16": GateLimits(max_auroc_drop_pt=0.2, min_map_pearson_mean=0.98, max_good_score_err_mean=0.25),
    "int8": GateLimits(max_auroc_drop_pt=0.5, min_map_pearson_mean=0.95, max_good_score_err_mean=1.0),
}


@dataclass
class GateSet:
    """The images the gate runs on: held-out good images first, then the labelled set (if any)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    good: np.ndarray  # bool (N,): held-out good images (the false-alarm population)
    labels: np.ndarray | None = None  # int (N,): 1 = defect, or None when no labelled set was given
    scale: float = 1.0  # the normalisation scale: score errors are divided by it

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or len(self.images) == 0:
            raise ExportError(
                f"gate images must be a non-empty uint8 (N, H, W, 3) array, got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.scale <= 0:
            raise ExportError(f"gate score scale must be > 0, got {self.scale}")


@dataclass
class GateReport:
    results: dict[str, GateResult] = field(default_factory=dict)
    n_images: int = 0
    n_good: int = 0  # held-out good images
    n_defects: int = 0  # labelled defective images

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results.values())

    def failed(self) -> list[str]:
        return [p for p, r in self.results.items() if not r.passed]


def run_batched(
    fn: Callable[[np.ndarray], Outputs], images: np.ndarray, batch: int = 8, progress: str | None = None
) -> Outputs:
    """``fn`` over ``images`` in batches; ``progress``: a bar on stderr with this label."""
    scores, maps = [], []
    with bar(len(images), progress or "", enabled=progress is not None) as shown:
        for start in range(0, len(images), batch):
            s, m = fn(images[start : start + batch])
            scores.append(np.asarray(s, np.float32))
            maps.append(np.asarray(m, np.float32))
            shown.update(len(scores[-1]))
    return np.concatenate(scores), np.concatenate(maps)


def torch_outputs(
    module: torch.nn.Module, images: np.ndarray, batch: int = 8, progress: str | None = None
) -> Outputs:
    module = module.eval()

    def run(x: np.ndarray) -> Outputs:
        with torch.no_grad():
            s, m = module(torch.from_numpy(np.ascontiguousarray(x)))
        return s.numpy(), m.numpy()

    return run_batched(run, images, batch, progress)


def onnx_outputs(path: Path, images: np.ndarray, batch: int = 8, progress: str | None = None) -> Outputs:
    """Run an ONNX model through the device's own ONNX Runtime backend (CPU): same session options, same
    output checks. An unreadable model raises ExportError naming the file."""
    require("onnxruntime", "train", "the accuracy gate")
    from edge.scoring.backends import BackendError
    from edge.scoring.backends.onnxruntime_backend import OnnxRuntimeBackend

    try:
        backend = OnnxRuntimeBackend.for_file(path, images.shape[1:3], max_batch=batch)
    except BackendError as exc:
        raise ExportError(str(exc)) from exc
    try:
        return run_batched(backend.run, images, batch, progress)
    finally:
        backend.close()


def map_pearson(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-image Pearson r of two (N, H, W) map stacks; images whose reference map is flat are skipped."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = cand.reshape(len(cand), -1).astype(np.float64)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = na > 0
    r = np.zeros(len(a))
    both = ok & (nb > 0)
    r[both] = (a[both] * b[both]).sum(axis=1) / (na[both] * nb[both])
    return r[ok]


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from training.metrics import image_auroc

    return image_auroc(labels, scores)


def compare(ref: Outputs, cand: Outputs, gate_set: GateSet) -> dict[str, float]:
    """All gate numbers for one candidate against the reference (NaN-free, JSON-safe)."""
    (rs, rm), (cs, cm) = ref, cand
    if cs.shape != rs.shape or cm.shape != rm.shape:
        raise ExportError(
            f"candidate outputs have shapes {cs.shape}/{cm.shape}, reference {rs.shape}/{rm.shape}"
        )
    if not (np.isfinite(cs).all() and np.isfinite(cm).all()):
        return {"non_finite_outputs": 1.0}
    err = np.abs(cs.astype(np.float64) - rs) / gate_set.scale
    metrics = {"score_err_max": float(err.max()), "score_err_mean": float(err.mean())}
    if gate_set.good.any():
        metrics["good_score_err_max"] = float(err[gate_set.good].max())
        metrics["good_score_err_mean"] = float(err[gate_set.good].mean())
    r = map_pearson(rm, cm)
    if r.size:
        metrics["map_pearson_mean"] = float(r.mean())
        metrics["map_pearson_min"] = float(r.min())
    labels = gate_set.labels
    if labels is not None and 0 < int(labels.sum()) < labels.size:
        auroc_ref, auroc = _auroc(labels, rs), _auroc(labels, cs)
        metrics.update(auroc_ref=auroc_ref, auroc=auroc, auroc_drop_pt=100.0 * (auroc_ref - auroc))
    return metrics


def judge(metrics: dict[str, float], limits: GateLimits) -> GateResult:
    """Pass when every gated number that could be measured is inside its limit."""
    checks = [
        ("auroc_drop_pt", limits.max_auroc_drop_pt, 1),
        ("map_pearson_mean", limits.min_map_pearson_mean, -1),
        ("good_score_err_mean", limits.max_good_score_err_mean, 1),
        ("score_err_max", limits.max_score_err_max, 1),
    ]
    passed = "non_finite_outputs" not in metrics
    for key, limit, sign in checks:
        if limit is not None and key in metrics and sign * (metrics[key] - limit) > 0:
            passed = False
    return GateResult(passed=passed, checked=True, metrics=metrics, limits=limits.as_dict())


def failures(result: GateResult) -> list[str]:
    """Human-readable reasons a result failed, e.g. 'map r mean 0.912 < 0.95'."""
    m, lim, out = result.metrics, result.limits, []
    if "non_finite_outputs" in m:
        out.append("NaN/inf in outputs")
    for key, limit_key, op in (
        ("auroc_drop_pt", "max_auroc_drop_pt", ">"),
        ("map_pearson_mean", "min_map_pearson_mean", "<"),
        ("good_score_err_mean", "max_good_score_err_mean", ">"),
        ("score_err_max", "max_score_err_max", ">"),
    ):
        if (
            key in m
            and limit_key in lim
            and ((m[key] > lim[limit_key]) if op == ">" else (m[key] < lim[limit_key]))
        ):
            out.append(f"{key} {m[key]:.4g} {op} {lim[limit_key]:.4g}")
    return out


def run_gate(
    module: torch.nn.Module,
    models: dict[str, Path],
    gate_set: GateSet,
    limits: dict[str, GateLimits] | None = None,
    reference: Outputs | None = None,
    progress: bool = False,
) -> GateReport:
    """Compare each ONNX model (precision -> path) with the torch module on ``gate_set``."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    ref = reference if reference is not None else torch_outputs(module, gate_set.images)
    n_defects = 0 if gate_set.labels is None else int(gate_set.labels.sum())
    report = GateReport(n_images=len(gate_set.images), n_good=int(gate_set.good.sum()), n_defects=n_defects)
    for precision, path in models.items():
        cand = onnx_outputs(path, gate_set.images, progress=f"gate {precision}" if progress else None)
        report.results[precision] = judge(compare(ref, cand, gate_set), limits.get(precision, GateLimits()))
    return report


_COLUMNS = (
    ("good err max", "good_score_err_max", "{:.3f}"),
    ("good err mean", "good_score_err_mean", "{:.3f}"),
    ("all err max", "score_err_max", "{:.3f}"),
    ("map r mean", "map_pearson_mean", "{:.4f}"),
    ("map r min", "map_pearson_min", "{:.4f}"),
    ("ref AUROC %", "auroc_ref", "{:.2f}"),
    ("AUROC %", "auroc", "{:.2f}"),
    ("drop pt", "auroc_drop_pt", "{:.2f}"),
)


def format_table(report: GateReport) -> str:
    """A fixed-width table of every number, with the limits and the verdict per precision."""
    head = ["precision", *(c[0] for c in _COLUMNS), "result"]
    rows = []
    for precision, res in report.results.items():
        cells = [precision]
        for _, key, fmt in _COLUMNS:
            value = res.metrics.get(key)
            if value is None:
                cells.append("-")
            else:
                cells.append(fmt.format(100.0 * value if key in ("auroc", "auroc_ref") else value))
        cells.append("pass" if res.passed else "FAIL: " + "; ".join(failures(res)))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]

    def line(cells: list[str]) -> str:
        return (
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
            )
            + "  "
            + cells[-1]
        )

    limits = "; ".join(
        f"{p}: " + ", ".join(f"{k}={v:g}" for k, v in r.limits.items()) for p, r in report.results.items()
    )
    title = (
        f"accuracy gate vs torch fp32 on {report.n_images} images ({report.n_good} held-out good, "
        f"{report.n_defects} labelled defects); "
        "score errors in normalised units (multiples of the good-score spread)"
    )
    return "\n".join([title, line(head), *(line(r) for r in rows), f"limits: {limits}"])
