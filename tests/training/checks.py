"""Checks shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_checkpoint
from training.graph import InferenceModel
from training.synthetic import defective_part, good_part


def assert_finds_blobs(checkpoint: Path, seed: int, max_peak_distance: float) -> None:
    """Generated blob defects outscore every good part, and each map peaks in (or next to) its blob."""
    ckpt = load_checkpoint(checkpoint)
    model = InferenceModel(ckpt.model, ckpt.preprocess)
    pre = ckpt.preprocess
    rng = np.random.default_rng(seed)
    goods = np.stack([pre.frame_to_input(good_part(rng, 128)) for _ in range(6)])
    defects = [defective_part(rng, 128, "blob") for _ in range(4)]
    with torch.no_grad():
        good_scores, _ = model(torch.from_numpy(goods))
        bad_scores, bad_maps = model(
            torch.from_numpy(np.stack([pre.frame_to_input(d.image) for d in defects]))
        )
    assert float(bad_scores.min()) > float(good_scores.max())
    for d, amap in zip(defects, bad_maps.numpy(), strict=True):
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        ys, xs = np.nonzero(d.mask > 0)  # the map is smoothed: a few pixels off the blob still count
        assert np.min(np.hypot(ys - peak[0], xs - peak[1])) <= max_peak_distance
