"""Compare image scores for the default kNN on visible data: what a reject gate would see from each.

    python -m training.score_compare --data ../shared/data/mvtec-bottle/bottle --out runs/scores/bottle.json

One category, the split ``edge-train`` makes, the default model fitted on the training images (its two
teachers normalised on the held-out good images, as training does), defects pasted onto the held-out good
images (``training.pasted_defects``: visible data, the test split is never read). Every score below is
computed from the same fused map (before the per-image shift the default applies):

- ``max``: the map's maximum;
- ``topk``: the mean of the map's top ``topk_fraction`` (the default's score);
- ``region``: the mean of the map over its largest connected region above the held-out good images' 99th
  pixel percentile (the map's max when no pixel is above it);
- ``gauss``: an image-level feature score (Rippel et al. 2020): each teacher's patch features averaged over
  the image, a Gaussian fitted to the training images (Ledoit-Wolf shrinkage), the Mahalanobis distance
  (the model's own cue, ``training.models.image_cue``), the two teachers' distances each normalised by the
  held-out good images and added;
- ``topk+gauss*W``: ``topk`` and ``gauss`` each normalised by the held-out good images (median 0, p99 1),
  the Gaussian weighed W (``--cue-weights``, 1 and 0.5 unless given) and added: a local and a global cue
  together (the model's ``image_cue`` setting computes the same in the graph).

``--defects`` names the drawn sets to score (each on the same fitted model): ``cutpaste``, ``small`` and
``uneven`` (large faint defects, ``training.uneven_defects``: the type an image-level cue is meant for).

Columns: image AUROC and the line recall at 1 % false alarms (threshold from the held-out good images of
the set). The held-out good images also set the normalisations: every score shares that small bias.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from calibration.scores import normalization_from_good
from training.data import good_images, load_images, split_train_val
from training.metrics import image_auroc, line_operating_points
from training.models.patchcore import PatchCore, PatchCoreConfig
from training.pasted_defects import DEFECT_SETS, defect_set
from training.train import images_to_tensor, make_preprocess


def _maps_and_distances(model: PatchCore, x: torch.Tensor, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One teacher pass per batch: the default's fused map before its per-image shift (N, H, W) and each
    teacher's Gaussian distance of the image's mean features (N, T), from the model's own cue."""
    maps, distances = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            feats = model.features(x[i : i + batch])
            maps.append(model.fused_map(feats).numpy())
            distances.append(model.cue.distances(feats).numpy())
    return np.concatenate(maps), np.concatenate(distances)


def _normalised(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    n = normalization_from_good(good)
    return (values - n.offset) / n.scale


def region_score(amap: np.ndarray, level: float) -> float:
    """Mean of the map over its largest connected region above ``level`` (its max when there is none)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((amap > level).astype(np.uint8), connectivity=8)
    if n <= 1:
        return float(amap.max())
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return float(amap[labels == largest].mean())


def _scores(
    model: PatchCore,
    x: torch.Tensor,
    labels: np.ndarray,
    cue_weights: tuple[float, ...],
) -> dict[str, Any]:
    """Image AUROC and line recall @ 1 % of every score on one labelled set (good images first)."""
    is_good = labels == 0
    maps, distances = _maps_and_distances(model, x)
    k = model.k
    flat = maps.reshape(len(maps), -1)
    scores: dict[str, np.ndarray] = {
        "max": flat.max(axis=1),
        "topk": np.sort(flat, axis=1)[:, -k:].mean(axis=1),
    }
    level = float(np.quantile(maps[is_good], 0.99))
    scores["region"] = np.array([region_score(m, level) for m in maps])
    gauss = sum(_normalised(d, d[is_good]) for d in distances.T)
    scores["gauss"] = gauss
    local = _normalised(scores["topk"], scores["topk"][is_good])
    for w in cue_weights:
        scores[f"topk+gauss*{w:g}"] = local + w * _normalised(gauss, gauss[is_good])
    out = {}
    for name, s in scores.items():
        line = line_operating_points(s[is_good], labels, s)
        out[name] = {"image_auroc": image_auroc(labels, s), "recall_1": line["0.01"]["recall"]}
    return out


def compare(
    data: Path,
    defects: tuple[str, ...] = ("cutpaste",),
    log=print,
    seed: int = 0,
    cue_weights: tuple[float, ...] = (1.0, 0.5),
) -> dict[str, Any]:
    """Every score on each of the ``defects`` sets drawn (from ``seed``) on the held-out good images:
    {set: {score: ...}}."""
    torch.manual_seed(0)
    pre = make_preprocess("patchcore", {})
    train_paths, val_paths = split_train_val(good_images(data), 0.1, 0)
    x_train = images_to_tensor(load_images(train_paths, pre), pre)
    good = load_images(val_paths, pre)
    # the cue's Gaussians are fitted while the bank fills; its weight is not used here (scores re-weigh it)
    model = PatchCore(PatchCoreConfig(image_cue=1.0)).eval()
    model.load_pretrained()
    model.fit(x_train, x_val=images_to_tensor(good, pre), log=log)
    out: dict[str, Any] = {"data": str(data), "n_good": len(val_paths)}
    for d in defects:
        images, _, labels, _ = defect_set(d, val_paths, pre, 3, seed, good)
        out[d] = _scores(model, images_to_tensor(images, pre), labels, cue_weights)
        for name, r in out[d].items():
            log(f"{data.name} {d} {name}: image AUROC {r['image_auroc']:.3f} recall@1% {r['recall_1']:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--defects", default="cutpaste", help=f"sets, comma-separated, of {', '.join(DEFECT_SETS)}"
    )
    p.add_argument("--seed", type=int, default=0, help="the defects' draw (edge-eval --pasted's is 0)")
    p.add_argument(
        "--cue-weights", default="1,0.5", help="weights of the Gaussian added to topk, comma-separated"
    )
    args = p.parse_args(argv)
    weights = tuple(float(w) for w in args.cue_weights.split(",") if w)
    defects = tuple(d for d in args.defects.split(",") if d)
    unknown = [d for d in defects if d not in DEFECT_SETS]
    if unknown or not defects:
        p.error(f"--defects: unknown set(s) {unknown}; use {', '.join(DEFECT_SETS)}")
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = compare(args.data, defects, say, args.seed, weights)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
