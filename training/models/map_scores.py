"""Image scores read from an anomaly map, and the map brought to agree with them.

The daemon scores an image by its map's maximum, so every score that is not the maximum (a top-k mean, a
score with an image-level cue added) comes with a map whose maximum equals it. Shared by the kNN kind
(``training.models.patchcore``) and the fused GTrans + kNN kind (``training.models.gtrans_knn``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def topk_count(fraction: float, size: int) -> int:
    """Pixels a top-``fraction`` score averages on a ``size`` x ``size`` map (at least one)."""
    return max(1, round(fraction * size * size))


def topk_mean(amap: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W) map -> (N,) mean of its ``k`` highest pixels."""
    return amap.flatten(1).topk(k, dim=1).values.mean(dim=1)


def shift_to_score(amap: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The map moved so that its maximum is ``score``: the daemon scores an image by its map's maximum."""
    return amap + (score - amap.flatten(1).amax(dim=1))[:, None, None]


def peak_to_score(amap: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """The map whose maximum is ``score``, moving only its top pixels: below the score, what is above it is
    cut (as ``peak="clip"``); above, the pixels over the map's ``k``-th highest value are raised in
    proportion to their height, the peak by the whole difference. An image-level cue says the part is off,
    not where; moving the whole map by it would rank every pixel of the image by the cue."""
    flat = amap.flatten(1)
    peak = flat.amax(dim=1)
    level = flat.topk(min(k + 1, flat.shape[1]), dim=1).values[:, -1]
    share = ((amap - level[:, None, None]) / (peak - level).clamp_min(1e-6)[:, None, None]).clamp(0.0, 1.0)
    lifted = amap + (score - peak).clamp_min(0.0)[:, None, None] * share
    return torch.minimum(lifted, score[:, None, None])


@torch.no_grad()
def fit_map_normalization(
    part_scores: Callable[[torch.Tensor], list[torch.Tensor]],
    x_val: Any,
    batch: int,
    offset: torch.Tensor,
    scale: torch.Tensor,
    why: str,
) -> dict[str, list[float]]:
    """Bring several maps to one scale: each part's (offset, scale) from its held-out good image scores
    (``calibration.scores.normalization_from_good``: median 0, 99th percentile 1), written into the
    ``offset`` / ``scale`` buffers. ``part_scores``: a batch of images -> each part's (N,) image scores."""
    from calibration.scores import normalization_from_good

    if x_val is None or len(x_val) < 2:
        raise ValueError(
            f"{why} with held-out good images; train with --val-fraction > 0 and at least 2 held-out images"
        )
    scores: list[list[torch.Tensor]] = [[] for _ in range(len(offset))]
    for i in range(0, len(x_val), batch):
        for t, s in enumerate(part_scores(x_val[i : i + batch])):
            scores[t].append(s)
    norms = [normalization_from_good(torch.cat(s).numpy()) for s in scores]
    offset.copy_(torch.tensor([n.offset for n in norms]))
    scale.copy_(torch.tensor([n.scale for n in norms]))
    return {"offset": [n.offset for n in norms], "scale": [n.scale for n in norms]}
