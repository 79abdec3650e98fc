"""Choose the default model's fusion weight and image cue per bundle, from its own held-out good images.

The default kNN (``training.models.patchcore``, backbone "both") fuses a fine EfficientNet map and a coarse
ViT map, each in held-out good units, as ``(1 - w) * effnet + w * vit``. The default ``w`` (0.75) was
chosen across the categories here (docs/accuracy.md), but categories differ in which teacher sees their
defects (the fine map localises better on irregular texture, the ViT separates images better on parts), so
``edge-train`` measures the weight on the bundle's own data, never on a test split:

1. Candidates: ``WEIGHTS``, from 0 (the EfficientNet map alone) to 1 (the ViT map alone) in quarters.
2. Both teachers' maps are computed once for the held-out good images with CutPaste defects, small drawn
   ones and large faint ones (``training.geometry.native_defect_sets``: the sets the tiles probe uses), at
   the bundle's geometry (tiles stitched as the daemon stitches them), for an evenly spaced share of the
   held-out images that keeps the probe within ``PROBE_PASSES`` model passes (about a minute on small
   crops, a few on large tiled frames, on 2 cores). Every candidate re-fuses the same maps and is scored
   as the daemon scores (the map's maximum after the top-k shift), at the images' own size.
3. A candidate replaces the default only when the sum of image AUROC, pixel AUROC, AUPRO and line recall
   at 1 % false alarms over the three sets beats the default's by more than ``MARGIN`` (the tiles probe's
   margin: twelve numbers, each of which moves by noise on a few dozen held-out images) **and** beats it
   on each half of the held-out images (every other good image with its defects): on a dozen held-out
   images a second draw of the defects alone turned a lead of 0.146 into -0.017 (grass), so a lead one or
   two images make is not taken. The best such sum wins.
4. Then, at the chosen weight, the image-level cue (``training.models.image_cue``: a Gaussian on each
   teacher's pooled features, which sees large faint defects a patch kNN misses) is measured the same way
   on the same maps: ``CUE_WEIGHTS``, none (0) unless a weight beats none by the margin and on both halves.
   The cue adds one number per model input, linear in its weight, so the candidates cost no teacher pass.

The held-out good images also set each teacher's normalisation and the line threshold, a bias every
candidate shares; the defects are drawn with another seed than ``edge-eval --pasted``'s, so the pasted
columns a bundle reports are not the defects its weight was chosen on. The measurements go into the
checkpoint (``data.fusion``, ``data.image_cue``) and the weights into the model's config, so the exported
graph carries them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
CUE_WEIGHTS = (0.0, 0.25, 0.5)  # the image cue's weight; 0: none, the default
MARGIN = 0.06  # a weight must beat the default by this on the sum of 3 sets x 4 metrics (0.005 each)
DRAW_OFFSET = 1000  # the probe's defects are other draws than edge-eval --pasted's (seed 0), which report
METRIC_SIDE = 256  # the probe's metrics are computed with the long side at most this (their cost)
PROBE_PASSES = 1100  # model passes the probe may cost (both teachers: 3-4 min on 2 cores)
BATCH = 8

# grid, two (T, S, S) maps, native (h, w), the cue's (T, teachers) distances (None without a cue)
Cached = tuple[TileGrid | None, list[torch.Tensor], tuple[int, int], torch.Tensor | None]


def applies(model: Any) -> bool:
    """Whether ``model`` has a weight to choose: the kNN kind with both teachers fused by a weighted mean."""
    config = getattr(model, "config", None)
    return getattr(config, "backbone", None) == "both" and getattr(config, "fusion", None) == "mean"


@dataclass
class Probe:
    """The held-out images the choices are measured on: their defect sets and both teachers' maps."""

    paths: list[Path]
    sets: dict[str, tuple]
    cached: dict[str, list[Cached]]


@torch.no_grad()
def teacher_maps(model: Any, pre: Preprocess, image_bgr: np.ndarray) -> Cached:
    """Both teachers' normalised maps for one image's inputs (float16: a few hundred images are held) and,
    with a cue, its distances."""
    grid, inputs = model_inputs(pre, image_bgr)
    x = Normalize(pre)(torch.from_numpy(inputs))
    maps: list[list[torch.Tensor]] = [[], []]
    distances = []
    for i in range(0, len(x), BATCH):
        feats = model.features(x[i : i + BATCH])
        for t, m in enumerate(model.normalise(feats)):
            maps[t].append(m.half())
        if model.cue is not None:
            distances.append(model.cue.distances(feats))
    cue = torch.cat(distances) if distances else None
    return grid, [torch.cat(m) for m in maps], image_bgr.shape[:2], cue


@torch.no_grad()
def fused_native(
    model: Any, pre: Preprocess, cached: Cached, vit_weight: float, cue_weight: float = 0.0
) -> np.ndarray:
    """One image's native-size map as the bundle would give it with these weights (``cue_weight`` > 0
    needs the cue calibrated at weight 1: its addition is linear in the weight)."""
    grid, maps, hw, distances = cached
    score, amap = model.score_map(model.fuse_maps([m.float() for m in maps], vit_weight=vit_weight))
    if cue_weight:
        score, amap = model.with_cue(score, amap, cue_weight * model.cue.add(distances))
    return to_native(pre, grid, amap.numpy(), hw)


def probe_maps(
    model: Any,
    pre: Preprocess,
    val_paths: Sequence[Path],
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> Probe:
    """The defect sets of a share of the held-out images (``within_budget``) and both teachers' maps."""
    paths, sizes = within_budget(pre, val_paths)
    sets = native_defect_sets(paths, seed + DRAW_OFFSET, sizes)
    total_images = sum(len(labelled[0]) for labelled in sets.values())
    log(
        f"fusion probe: both teachers' maps of {len(paths)} of {len(val_paths)} held-out good images, "
        f"with pasted, small and faint defects ({total_images} images)"
    )
    cached: dict[str, list[Cached]] = {}
    seen: dict[int, Cached] = {}  # the good images open every set: their maps are computed once
    for name, labelled in sets.items():
        cached[name] = []
        for image in labelled[0]:
            if id(image) not in seen:
                seen[id(image)] = teacher_maps(model, pre, image)
                if len(seen) % 50 == 0:
                    log(f"fusion probe: {len(seen)} images")
            cached[name].append(seen[id(image)])
    return Probe(paths, sets, cached)


def measure(
    model: Any,
    pre: Preprocess,
    probe: Probe,
    candidates: dict[float, tuple[float, float]],
    what: str,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[float, dict[str, Any]]:
    """Each candidate's (ViT weight, cue weight) scored on every set and on each half of the images."""
    halves_of = [half(len(probe.paths), h) for h in (0, 1)]
    out: dict[float, dict[str, Any]] = {}
    for key, (w, c) in candidates.items():
        framed = {n: frame_set(model, pre, probe.cached[n], s, w, c) for n, s in probe.sets.items()}
        whole = {n: probe_metrics(*f) for n, f in framed.items()}
        halves = [
            sets_sum({n: probe_metrics(*(a[idx] for a in f)) for n, f in framed.items()}) for idx in halves_of
        ]
        out[key] = {"sets": whole, "halves": halves}
        log(f"{what} {key:g}: {sets_line(whole)}; halves {halves[0]:.3f} {halves[1]:.3f}")
    return out


def decide(measured: dict[float, dict[str, Any]], default: float) -> tuple[float, str]:
    sums = {k: sets_sum(m["sets"]) for k, m in measured.items()}
    return pick(sums, default, {k: m["halves"] for k, m in measured.items()})


def choose_vit_weight(
    model: Any,
    pre: Preprocess,
    val_paths: Sequence[Path],
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Measure every candidate weight (module docstring), set the chosen one in ``model.config`` and return
    ``{"vit_weight", "reason", "probe": {weight: {"sets": {set: metrics}, "halves": [sum, sum]}}}``."""
    default = float(model.config.vit_weight)
    if len(val_paths) < 2:
        return {"vit_weight": default, "reason": "fewer than 2 held-out good images: nothing to measure on"}
    probe = probe or probe_maps(model, pre, val_paths, seed, log)
    measured = measure(
        model, pre, probe, {w: (w, 0.0) for w in sorted({*WEIGHTS, default})}, "ViT weight", log
    )
    chosen, reason = decide(measured, default)
    log(f"fusion weight: {chosen:g} ({reason})")
    model.config.vit_weight = chosen
    return {"vit_weight": chosen, "reason": reason, "probe": {f"{w:g}": m for w, m in measured.items()}}


def choose_image_cue(
    model: Any,
    pre: Preprocess,
    probe: Probe,
    x_val: torch.Tensor,
    batch: int = 16,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Step 4 of the module docstring on a model whose cue is fitted (``PatchCore.prepare_cue``): set the
    chosen weight in ``model.config`` (removing the cue at 0, calibrating it at the weight otherwise) and
    return ``{"image_cue", "reason", "probe", "calibration"}``."""
    model.calibrate_image_cue(x_val, batch, weight=1.0)  # at the chosen ViT weight; candidates scale it
    w = float(model.config.vit_weight)
    measured = measure(model, pre, probe, {c: (w, c) for c in CUE_WEIGHTS}, "image cue", log)
    chosen, reason = decide(measured, 0.0)
    log(f"image cue: {chosen:g} ({reason})")
    model.config.image_cue = chosen
    calibration = model.calibrate_image_cue(x_val, batch) if chosen else None
    if not chosen:
        model.cue = None
    probed = {f"{c:g}": m for c, m in measured.items()}
    return {"image_cue": chosen, "reason": reason, "probe": probed, "calibration": calibration}


def half(n_good: int, h: int) -> list[int]:
    """Every other held-out good image (``h`` 0 or 1) and its defective copies, as indices into a defect
    set (``small_defects.with_defects``' order: the good images, then ``PER_IMAGE`` copies of each)."""
    goods = list(range(h, n_good, 2))
    return goods + [n_good + i * PER_IMAGE + j for i in goods for j in range(PER_IMAGE)]


def frame_set(
    model: Any,
    pre: Preprocess,
    cached: Sequence[Cached],
    labelled: tuple,
    vit_weight: float,
    cue_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One defect set re-fused at these weights: labels, scores, masks and maps in one frame (long side
    ``METRIC_SIDE``), the arguments of ``probe_metrics``; index them for a subset."""
    maps = (fused_native(model, pre, c, vit_weight, cue_weight) for c in cached)
    scores, frame_maps, frame_masks = in_frame(maps, labelled, METRIC_SIDE)
    return labelled[2], scores, frame_masks, frame_maps


def within_budget(pre: Preprocess, val_paths: Sequence[Path]) -> tuple[list[Path], list[tuple[int, int]]]:
    """An evenly spaced share of the held-out images whose two defect sets cost at most ``PROBE_PASSES``
    model passes (tiles count one each), and their sizes."""
    paths = [Path(p) for p in val_paths]
    sizes = image_sizes(paths)
    passes = sum(1 if pre.tiling is None else len(pre.tiling.grid(h, w)) for h, w in sizes)
    step = max(1, -(-passes * (1 + 3 * PER_IMAGE) // PROBE_PASSES))  # ceil; good images computed once
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
    """Measure the ViT weight of an already trained default checkpoint (its banks and normalisation do not
    depend on it) and write a copy with the chosen weight, as ``edge-train`` would have written it (an image
    cue it carries is put in the new map's units; its weight is not measured again: that needs the
    training images' features)."""
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
    if ckpt.model.cue is not None:  # a cue is scaled to the fused map: again at the new weight
        from training.data import load_samples
        from training.train import NormalizedView

        x_val = NormalizedView(load_samples(val, ckpt.preprocess), ckpt.preprocess)
        ckpt.model.calibrate_image_cue(x_val)
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
