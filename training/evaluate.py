"""``edge-eval``: run a checkpoint over an MVTec-layout test split and report AUROC/AUPRO and throughput.

It runs the same ``InferenceModel`` (uint8 in, normalisation inside) that export traces, so these are the
numbers of the deployed graph in FP32. The F1 here is at the threshold the product would use by default:
a 1 % false-alarm quantile of the held-out good images' scores, never a threshold picked on the test set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.capture.preprocess import Preprocess
from training.checkpoint import Checkpoint, load_checkpoint
from training.data import MVTecCategory, load_images, load_test_set
from training.graph import InferenceModel
from training.metrics import evaluate_maps, f1_at_threshold, line_operating_points
from training.progress import bar
from training.worst import write_worst

FALSE_ALARM_RATE = 0.01
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}


@torch.no_grad()
def predict(
    model: InferenceModel, images: np.ndarray, batch: int = 8, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores (N,), maps (N,H,W) and images/s for uint8 images (N,H,W,3); ``progress``: a bar with this
    label."""
    scores, maps = [], []
    started = time.perf_counter()
    with bar(len(images), progress or "", enabled=progress is not None) as shown:
        for i in range(0, len(images), batch):
            s, m = model(torch.from_numpy(images[i : i + batch]))
            scores.append(s.numpy())
            maps.append(m.numpy())
            shown.update(len(s))
    elapsed = time.perf_counter() - started
    return np.concatenate(scores), np.concatenate(maps), len(images) / elapsed


def content_scores(maps: np.ndarray, sizes: list[tuple[int, int]], pre: Preprocess) -> np.ndarray:
    """Image scores as the daemon computes them: the map's maximum over where the image landed."""
    scores = np.empty(len(maps), dtype=np.float32)
    for i, (amap, (h, w)) in enumerate(zip(maps, sizes, strict=True)):
        x, y, cw, ch = pre.content_box(h, w)
        scores[i] = amap[y : y + ch, x : x + cw].max()
    return scores


def heldout_scores(ckpt: Checkpoint, model: InferenceModel, progress: bool = False) -> np.ndarray | None:
    """Scores of the held-out good images, as the daemon computes them (None when the checkpoint has none)."""
    val = [Path(p) for p in ckpt.data.get("val_files", []) if Path(p).is_file()]
    if not val:
        return None
    sizes: list[tuple[int, int]] = []
    images = load_images(val, ckpt.preprocess, sizes=sizes)
    _, maps, _ = predict(model, images, progress="held-out good images" if progress else None)
    return content_scores(maps, sizes, ckpt.preprocess)


def good_threshold(ckpt: Checkpoint, model: InferenceModel, progress: bool = False) -> float | None:
    """The 1 % false-alarm quantile of the held-out good images (None when the checkpoint has none)."""
    scores = heldout_scores(ckpt, model, progress)
    return None if scores is None else float(np.quantile(scores, 1.0 - FALSE_ALARM_RATE))


def score_quantiles(scores: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """p50/p95/p99/max of the good and of the defective images' scores (beside the bank coverage)."""
    out = {}
    for name, sel in (("good", labels == 0), ("defective", labels == 1)):
        if sel.any():
            out[name] = {k: float(np.quantile(scores[sel], q)) for k, q in QUANTILES.items()}
    return out


def evaluate(
    checkpoint: Path,
    data: Path,
    batch: int = 8,
    threads: int | None = None,
    progress: bool = False,
    worst: int = 0,
    worst_dir: Path | None = None,
    native: bool = False,
) -> dict[str, Any]:
    """``native`` (always for a tiled checkpoint): maps and masks at the images' own size
    (``training.native_eval``)."""
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model = InferenceModel(ckpt.model, ckpt.preprocess).eval()
    category = MVTecCategory(Path(data))
    if native or ckpt.preprocess.tiling is not None:
        return _native(ckpt, model, category, batch, progress, worst, worst_dir)
    sizes: list[tuple[int, int]] = []  # each image's own size, read while loading: where it landed
    images, masks, labels, types, paths = load_test_set(category, ckpt.preprocess, sizes=sizes)
    predict(model, images[:batch], batch)  # warm-up, not counted
    _, maps, rate = predict(model, images, batch, progress="test images" if progress else None)
    scores = content_scores(maps, sizes, ckpt.preprocess)
    if progress:
        print("computing image/pixel AUROC and AUPRO…", file=sys.stderr, flush=True)
    result = evaluate_maps(labels, scores, masks, maps, types)
    good = heldout_scores(ckpt, model, progress)
    if good is not None:
        threshold = float(np.quantile(good, 1.0 - FALSE_ALARM_RATE))
        result["f1_at_good_threshold"] = {
            "threshold": threshold,
            **f1_at_threshold(labels, scores, threshold),
        }
        result["line"] = line_operating_points(good, labels, scores)
        if worst:
            result["worst"] = str(worst_dir)
            write_worst(worst_dir, worst, images, maps, scores, labels, [str(p) for p in paths], good)
    elif worst:
        raise ValueError(
            f"{checkpoint} records no held-out good images: --worst needs them for its threshold"
        )
    result.update(
        {
            "model": ckpt.kind,
            "checkpoint": str(checkpoint),
            "category": category.name,
            "n_test_images": int(len(images)),
            "throughput_img_s": rate,
            "batch": batch,
            "threads": torch.get_num_threads(),
            "train_seconds": ckpt.train_state.get("train_seconds"),
            "epochs": ckpt.train_state.get("epoch"),
            "score_quantiles": score_quantiles(scores, labels),
            "coverage": bank_coverage(ckpt),
        }
    )
    return result


def _native(
    ckpt: Checkpoint,
    model: InferenceModel,
    category: MVTecCategory,
    batch: int,
    progress: bool,
    worst: int = 0,
    worst_dir: Path | None = None,
) -> dict[str, Any]:
    from training.native_eval import evaluate_native

    started = time.perf_counter()
    val = [Path(p) for p in ckpt.data.get("val_files", [])]
    result = evaluate_native(model, ckpt.preprocess, category.root, val, batch, progress, worst, worst_dir)
    tiling = ckpt.preprocess.tiling
    result.update(
        {
            "model": ckpt.kind,
            "checkpoint": str(ckpt.path),
            "category": category.name,
            "tiling": None if tiling is None else tiling.to_dict(),
            "throughput_img_s": (result["n_test_images"] + len(val)) / (time.perf_counter() - started),
            "batch": batch,
            "threads": torch.get_num_threads(),
            "train_seconds": ckpt.train_state.get("train_seconds"),
            "epochs": ckpt.train_state.get("epoch"),
            "coverage": bank_coverage(ckpt),
        }
    )
    return result


def bank_coverage(ckpt: Checkpoint) -> dict[str, Any]:
    """A kNN model's held-out good patches' nearest-bank distance quantiles, per teacher (recorded by fit)."""
    teachers = (ckpt.train_state.get("memory") or {}).get("teachers") or {}
    return {name: t["coverage"] for name, t in teachers.items() if "coverage" in t}


def format_table(result: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    where = ""
    if result.get("resolution") == "native":
        tiling = result.get("tiling")
        where = ", native resolution" + (
            f", tiles {tiling['tile']} px, overlap {tiling['overlap']}, scale {tiling['scale']:g}"
            if tiling
            else ""
        )
    lines = [
        f"{result['model']} on {result['category']} ({result['n_test_images']} test images{where})",
        f"{'defect type':<18} {'image AUROC':>11} {'pixel AUROC':>11} {'AUPRO':>7}",
    ]
    for name, m in result["per_type"].items():
        lines.append(f"{name:<18} {f(m['image_auroc']):>11} {f(m['pixel_auroc']):>11} {f(m['aupro']):>7}")
    lines.append(
        f"{'all':<18} {f(result['image_auroc']):>11} {f(result['pixel_auroc']):>11} {f(result['aupro']):>7}"
    )
    for fpr, op in result.get("line", {}).items():
        lines.append(
            f"recall at {float(fpr):.1%} false alarms, threshold from held-out good images (the line "
            "protocol): "
            f"{op['recall']:.3f} (false alarms on the good test images: {op['false_alarm_rate']:.1%})"
        )
    for fpr, recall in result.get("recall_at_fpr", {}).items():
        lines.append(
            f"recall at {float(fpr):.1%} false alarms, threshold from the good TEST images: {recall:.3f}"
        )
    if "f1_at_good_threshold" in result:
        lines.append(
            f"F1 at the 1% false-alarm threshold of held-out good images: "
            f"{result['f1_at_good_threshold']['f1']:.3f}"
        )
    for name, q in result.get("score_quantiles", {}).items():
        lines.append(f"{name} test image scores: " + " ".join(f"{k} {v:.4g}" for k, v in q.items()))
    for name, q in result.get("coverage", {}).items():
        lines.append(
            f"{name} bank coverage, held-out good patches' nearest-bank distance: "
            + " ".join(f"{k} {v:.4g}" for k, v in q.items())
        )
    if result.get("worst"):
        lines.append(f"worst images written to {result['worst']} (index.md)")
    lines.append(
        f"throughput {result['throughput_img_s']:.1f} img/s (batch {result['batch']}, {result['threads']} "
        f"threads)"
    )
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
