"""Choose the default model's fusion weight per bundle, from its own held-out good images.

The default kNN (``training.models.patchcore``, backbone "both") fuses a fine EfficientNet map and a coarse
ViT map, each in held-out good units, as ``(1 - w) * effnet + w * vit``. The default ``w`` (0.75) was
chosen across the categories here (docs/accuracy.md), but categories differ in which teacher sees their
defects (the fine map localises better on irregular texture, the ViT separates images better on parts), so
``edge-train`` measures the weight on the bundle's own data, never on a test split:

1. Candidates: ``WEIGHTS``, from 0 (the EfficientNet map alone) to 1 (the ViT map alone) in quarters.
2. Both teachers' maps are computed once for the held-out good images with CutPaste defects and with small
   drawn ones (``training.geometry.native_defect_sets``: the sets the tiles probe uses), at the bundle's
   geometry (tiles stitched as the daemon stitches them), for an evenly spaced share of the held-out
   images that keeps the probe within ``PROBE_PASSES`` model passes (under a minute on small crops, about
   two on large tiled frames, on 2 cores). Every candidate re-fuses the same maps and is scored as
   the daemon scores (the map's maximum after the top-k shift), at the images' own size.
3. A candidate replaces the default only when the sum of image AUROC, pixel AUROC, AUPRO and line recall
   at 1 % false alarms over the two sets beats the default's by more than ``MARGIN`` (the tiles probe's
   margin: eight numbers, each of which moves by noise on a few dozen held-out images) **and** beats it on
   each half of the held-out images (every other good image with its defects): on a dozen held-out images
   a second draw of the defects alone turned a lead of 0.146 into -0.017 (grass), so a lead one or two
   images make is not taken. The best such sum wins.

The held-out good images also set each teacher's normalisation and the line threshold, a bias every
candidate shares; the defects are drawn with another seed than ``edge-eval --pasted``'s, so the pasted
columns a bundle reports are not the defects its weight was chosen on. The measurements go into the
checkpoint (``data.fusion``) and the weight into the model's config, so the exported graph carries it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import TileGrid
from training.geometry import (
    PER_IMAGE,
    image_sizes,
    in_frame,
    native_defect_sets,
    sets_line,
    sets_sum,
)
from training.graph import Normalize
from training.metrics import probe_metrics
from training.native_eval import model_inputs, to_native

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the ViT map's share; the EfficientNet map's is 1 - w
MARGIN = 0.04  # a weight must beat the default by this much on the sum of 2 sets x 4 metrics
DRAW_OFFSET = 1000  # the probe's defects are other draws than edge-eval --pasted's (seed 0), which report
METRIC_SIDE = 256  # the probe's metrics are computed with the long side at most this (their cost)
PROBE_PASSES = 800  # model passes the probe may cost (both teachers: 2-3 min on 2 cores)
BATCH = 8

Cached = tuple[TileGrid | None, list[torch.Tensor], tuple[int, int]]  # grid, two (T, S, S) maps, native hw


def applies(model: Any) -> bool:
    """Whether ``model`` has a weight to choose: the kNN kind with both teachers fused by a weighted mean."""
    config = getattr(model, "config", None)
    return getattr(config, "backbone", None) == "both" and getattr(config, "fusion", None) == "mean"


@torch.no_grad()
def teacher_maps(model: Any, pre: Preprocess, image_bgr: np.ndarray) -> Cached:
    """Both teachers' normalised maps for one image's inputs (float16: a few hundred images are held)."""
    grid, inputs = model_inputs(pre, image_bgr)
    x = Normalize(pre)(torch.from_numpy(inputs))
    batches = [model.normalised_maps(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    maps = [torch.cat([b[t] for b in batches]).half() for t in range(2)]
    return grid, maps, image_bgr.shape[:2]


@torch.no_grad()
def fused_native(model: Any, pre: Preprocess, cached: Cached, vit_weight: float) -> np.ndarray:
    """One image's native-size map as the bundle would give it with this weight."""
    grid, maps, hw = cached
    _, amap = model.score_map(model.fuse_maps([m.float() for m in maps], vit_weight=vit_weight))
    return to_native(pre, grid, amap.numpy(), hw)


def choose_vit_weight(
    model: Any,
    pre: Preprocess,
    val_paths: Sequence[Path],
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Measure every candidate weight (module docstring), set the chosen one in ``model.config`` and return
    ``{"vit_weight", "reason", "probe": {weight: {"sets": {set: metrics}, "halves": [sum, sum]}}}``."""
    default = float(model.config.vit_weight)
    if len(val_paths) < 2:
        return {"vit_weight": default, "reason": "fewer than 2 held-out good images: nothing to measure on"}
    paths, sizes = within_budget(pre, val_paths)
    sets = native_defect_sets(paths, seed + DRAW_OFFSET, sizes)
    total_images = sum(len(labelled[0]) for labelled in sets.values())
    log(
        f"fusion weight: both teachers' maps of {len(paths)} of {len(val_paths)} held-out good images, "
        f"with pasted and with small defects ({total_images} images)"
    )
    cached: dict[str, list[Cached]] = {}
    seen: dict[int, Cached] = {}  # the good images open both sets: their maps are computed once
    for name, labelled in sets.items():
        cached[name] = []
        for image in labelled[0]:
            if id(image) not in seen:
                seen[id(image)] = teacher_maps(model, pre, image)
                if len(seen) % 50 == 0:
                    log(f"fusion weight: {len(seen)} images")
            cached[name].append(seen[id(image)])
    halves_of = [half(len(paths), h) for h in (0, 1)]
    probe: dict[float, dict[str, Any]] = {}
    for w in sorted({*WEIGHTS, default}):
        framed = {n: frame_set(model, pre, cached[n], labelled, w) for n, labelled in sets.items()}
        whole = {n: probe_metrics(*f) for n, f in framed.items()}
        halves = [
            sets_sum({n: probe_metrics(*(a[idx] for a in f)) for n, f in framed.items()}) for idx in halves_of
        ]
        probe[w] = {"sets": whole, "halves": halves}
        log(f"fusion weight {w:g}: {sets_line(whole)}; halves {halves[0]:.3f} {halves[1]:.3f}")
    chosen, reason = pick(
        {w: sets_sum(m["sets"]) for w, m in probe.items()},
        default,
        {w: m["halves"] for w, m in probe.items()},
    )
    log(f"fusion weight: {chosen:g} ({reason})")
    model.config.vit_weight = chosen
    return {"vit_weight": chosen, "reason": reason, "probe": {f"{w:g}": m for w, m in probe.items()}}


def half(n_good: int, h: int) -> list[int]:
    """Every other held-out good image (``h`` 0 or 1) and its defective copies, as indices into a defect
    set (``small_defects.with_defects``' order: the good images, then ``PER_IMAGE`` copies of each)."""
    goods = list(range(h, n_good, 2))
    return goods + [n_good + i * PER_IMAGE + j for i in goods for j in range(PER_IMAGE)]


def frame_set(
    model: Any, pre: Preprocess, cached: Sequence[Cached], labelled: tuple, vit_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One defect set re-fused at ``vit_weight``: labels, scores, masks and maps in one frame (long side
    ``METRIC_SIDE``), the arguments of ``probe_metrics``; index them for a subset."""
    maps = (fused_native(model, pre, c, vit_weight) for c in cached)
    scores, frame_maps, frame_masks = in_frame(maps, labelled, METRIC_SIDE)
    return labelled[2], scores, frame_masks, frame_maps


def within_budget(pre: Preprocess, val_paths: Sequence[Path]) -> tuple[list[Path], list[tuple[int, int]]]:
    """An evenly spaced share of the held-out images whose two defect sets cost at most ``PROBE_PASSES``
    model passes (tiles count one each), and their sizes."""
    paths = [Path(p) for p in val_paths]
    sizes = image_sizes(paths)
    passes = sum(1 if pre.tiling is None else len(pre.tiling.grid(h, w)) for h, w in sizes)
    step = max(1, -(-passes * (1 + 2 * PER_IMAGE) // PROBE_PASSES))  # ceil; good images computed once
    step = min(step, max(1, len(paths) // 4))  # two halves of at least two good images each, where there are
    return paths[::step], sizes[::step]


def pick(
    total: dict[float, float], default: float, halves: dict[float, list[float]] | None = None
) -> tuple[float, str]:
    """The weight with the best summed metrics when it beats ``default``'s by more than ``MARGIN`` and, given
    ``halves`` (each weight's sums on the two halves of the held-out images), on each half too; else
    ``default`` (a tie keeps it); and why, in words."""
    best = max(total, key=lambda w: (total[w], w == default))
    gain = total[best] - total[default]
    if gain <= MARGIN:
        return (
            default,
            f"no weight beat the default {default:g} by more than {MARGIN} (best {best:g}, {gain:+.3f})",
        )
    leads = [b - d for b, d in zip(halves[best], halves[default], strict=True)] if halves else [1.0]
    if min(leads) <= 0:
        return default, (
            f"{best:g} beat the default {default:g} by {gain:.3f} but not on both halves of the held-out "
            f"images ({' / '.join(f'{x:+.3f}' for x in leads)})"
        )
    return best, f"{best:g} beat the default {default:g} by {gain:.3f} (> {MARGIN}), on both halves"


def main(argv: list[str] | None = None) -> int:
    """Measure the weight of an already trained default checkpoint (its banks and normalisation do not
    depend on it) and write a copy with the chosen weight, as ``edge-train`` would have written it."""
    import argparse
    import time

    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.train import CHECKPOINT_NAME

    p = argparse.ArgumentParser(prog="python -m training.fusion_weight", description=main.__doc__)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the re-weighted checkpoint")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    if not applies(ckpt.model):
        print(
            f"{args.checkpoint}: not the kNN with both teachers fused by a mean; no weight to measure",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    val = [Path(f) for f in ckpt.data.get("val_files", [])]
    chosen = choose_vit_weight(ckpt.model, ckpt.preprocess, val, ckpt.train_state.get("seed", 0), print)
    state = {**ckpt.train_state}
    state["train_seconds"] = state.get("train_seconds", 0.0) + time.perf_counter() - started
    out = save_checkpoint(
        args.out / CHECKPOINT_NAME,
        ckpt.kind,
        ckpt.model,
        ckpt.preprocess,
        {**ckpt.data, "fusion": chosen},
        state,
    )
    print(f"wrote {out} (ViT weight {chosen['vit_weight']:g})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
