"""Accuracy per precision on an MVTec-layout test set, next to the speed numbers it trades against.

Each precision of the bundle runs through the same backend the daemon uses; the torch FP32 reference runs
``InferenceModel`` from the checkpoint when one is given. Metrics are ``training.metrics.evaluate_maps``
(image AUROC, pixel AUROC, AUPRO to 30 % FPR) plus F1 at the bundle's calibrated threshold, and each
precision's drift from FP32 (AUROC difference in points, score correlation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.model_bench import Engine, open_backend, open_torch
from edge.capture.preprocess import Preprocess
from edge.trust.manifest import Manifest

MAX_ROC_POINTS = 400


def load_dataset(data: Path, pre: Preprocess) -> dict[str, Any]:
    """The test split at the engine's size and colour order (the daemon's preprocessing)."""
    from training.data import load_test_set

    images, masks, labels, types, paths = load_test_set(Path(data), pre)
    return {"images": images, "masks": masks, "labels": labels, "types": types, "paths": paths}


def score_all(engine: Engine, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N,H,W) of every image, in batches of ``batch``."""
    scores, maps = [], []
    for i in range(0, len(images), batch):
        s, m = engine.run(np.ascontiguousarray(images[i : i + batch]))
        scores.append(np.asarray(s, np.float32).reshape(-1))
        maps.append(np.asarray(m, np.float32))
    return np.concatenate(scores), np.concatenate(maps)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """The image-level ROC curve (fpr, tpr), thinned to at most ``MAX_ROC_POINTS`` for the JSON and plot."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    if len(fpr) > MAX_ROC_POINTS:
        idx = np.unique(np.linspace(0, len(fpr) - 1, MAX_ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def metrics_for(
    data: dict[str, Any],
    scores: np.ndarray,
    maps: np.ndarray,
    manifest: Manifest,
) -> dict[str, Any]:
    """evaluate_maps + F1 at the calibrated threshold + the ROC curve."""
    from training.metrics import evaluate_maps, f1_at_threshold

    result = evaluate_maps(data["labels"], scores, data["masks"], maps, data["types"])
    normalised = (scores - manifest.normalization.offset) / manifest.normalization.scale
    threshold = manifest.threshold.default
    result["f1_at_threshold"] = {
        "threshold": threshold,
        **f1_at_threshold(data["labels"], normalised, threshold),
    }
    result["roc"] = roc_points(data["labels"], scores)
    result["n_images"] = int(len(scores))
    result["n_defect"] = int(np.sum(data["labels"]))
    return result


def drift_vs(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """How far ``other`` is from ``reference``: AUROC differences in points, score correlation."""

    def pt(key: str) -> float | None:
        a, b = reference["metrics"].get(key), other["metrics"].get(key)
        return None if a is None or b is None else (b - a) * 100.0

    ra, rb = np.asarray(reference["scores"]), np.asarray(other["scores"])
    corr = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else None
    return {
        "image_auroc_delta_pt": pt("image_auroc"),
        "pixel_auroc_delta_pt": pt("pixel_auroc"),
        "aupro_delta_pt": pt("aupro"),
        "score_correlation": corr,
        "max_abs_score_diff": float(np.max(np.abs(ra - rb))),
    }


def _evaluate(
    engine: Engine,
    data_path: Path,
    manifest: Manifest,
    batch: int,
    cache: dict[tuple[int, int, str], dict[str, Any]],
) -> dict[str, Any]:
    key = (*engine.input_hw, engine.color_order)
    if key not in cache:  # the images are read once per input size and colour order, not once per engine
        cache[key] = load_dataset(data_path, Preprocess(height=key[0], width=key[1], color_order=key[2]))
    data = cache[key]
    scores, maps = score_all(engine, data["images"], batch)
    return {"metrics": metrics_for(data, scores, maps, manifest), "scores": scores.tolist()}


def run_accuracy_bench(
    bundle: Path,
    manifest: Manifest,
    backend: str,
    precisions: Sequence[str],
    options: dict[str, object],
    data: Path,
    checkpoint: Path | None = None,
    torch_device_name: str = "auto",
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Accuracy of every precision (and torch FP32 when a checkpoint is given); the ``accuracy`` section."""
    cache: dict[tuple[int, int, str], dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        log(f"accuracy: {backend}/{precision}")
        engine = open_backend(backend, bundle, manifest, precision, options)
        try:
            entries[engine.label] = _evaluate(engine, data, manifest, manifest.input.max_batch, cache)
        finally:
            engine.close()
    if checkpoint is not None:
        log("accuracy: torch-eager/fp32")
        engine = open_torch(checkpoint, torch_device_name)
        try:
            entries[engine.label] = _evaluate(engine, data, manifest, manifest.input.max_batch, cache)
        finally:
            engine.close()
    reference = entries.get(f"{backend}/fp32")
    for label, entry in entries.items():
        entry["vs_fp32"] = (
            drift_vs(reference, entry) if reference is not None and label != f"{backend}/fp32" else None
        )
    return {
        "dataset": str(data),
        "n_images": next(iter(cache.values()))["labels"].size if cache else 0,
        "engines": {
            label: {"metrics": e["metrics"], "vs_fp32": e["vs_fp32"]} for label, e in entries.items()
        },
    }
