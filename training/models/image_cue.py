"""An image-level cue for the kNN's score: a Gaussian on each teacher's features averaged over the image.

Rippel et al., "Modeling the Distribution of Normal Data in Pre-Trained Deep Features for Anomaly Detection"
(ICPR 2020). A patch kNN asks whether every small neighbourhood looks like some good one; a large faint
defect (uneven shading, a smeared area, a dent bending the pattern) can pass that test patch by patch and
still move the image's feature statistics. The cue is the squared Mahalanobis distance of the image's mean
feature vector to a Gaussian fitted to the training images (Ledoit-Wolf shrinkage: hundreds of images,
hundreds of dimensions), per teacher.

Units: each teacher's distance and the local score are each brought to the held-out good images' scale
(median 0, 99th percentile 1, ``calibration.scores.normalization_from_good``), so ``weight`` reads "how much
one p99 of the cue counts against one p99 of the local score". Expressed in the local score's own units,
the cue adds ``gain * (sum of normalised distances - offset)``; the score's later normalisation (the
bundle's calibration) sees one number, and the graph carries the cue as two small MatMuls. The map follows
the score at its peak only (``map_scores.peak_to_score``): the cue says the part is off, not where.

The distance is written as ``|(f - mean) @ L|^2`` with ``L`` the Cholesky factor of the precision matrix,
so fp16 sees values of order one, never the precision's own large entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class ImageCue(nn.Module):
    """Per-teacher Gaussians on pooled features and the affine map that puts their sum in score units."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        for t, d in enumerate(dims):
            self.register_buffer(f"mean_{t}", torch.zeros(d))
            self.register_buffer(f"whiten_{t}", torch.zeros(d, d))
        self.register_buffer("norm", torch.stack([torch.zeros(len(dims)), torch.ones(len(dims))]))
        self.register_buffer("affine", torch.zeros(2))  # (gain, offset): no cue until calibrated

    def fit_gaussians(self, pooled: list[torch.Tensor]) -> None:
        """Each teacher's (N, C) training features averaged per image -> mean and whitening factor."""
        from sklearn.covariance import LedoitWolf

        for t, f in enumerate(pooled):
            if len(f) < 2:
                raise ValueError(f"the image cue's Gaussian needs at least 2 training images, got {len(f)}")
            fit = LedoitWolf().fit(f.double().numpy())
            whiten = np.linalg.cholesky(fit.precision_)  # precision = L L^T, so d^2 = |(f - mean) L|^2
            getattr(self, f"mean_{t}").copy_(torch.from_numpy(fit.location_))
            getattr(self, f"whiten_{t}").copy_(torch.from_numpy(whiten))

    def distances(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Teachers' (N, C, h, w) features -> (N, T) squared Mahalanobis distances of their image means."""
        out = []
        for t, f in enumerate(feats):
            z = (f.mean(dim=(2, 3)) - getattr(self, f"mean_{t}")) @ getattr(self, f"whiten_{t}")
            out.append(z.pow(2).sum(dim=1))
        return torch.stack(out, dim=1)

    def calibrate(self, scores: torch.Tensor, distances: torch.Tensor, weight: float) -> dict[str, Any]:
        """Held-out good images' local scores (N,) and distances (N, T) -> the cue's units (see module)."""
        from calibration.scores import normalization_from_good

        per_teacher = [normalization_from_good(distances[:, t].numpy()) for t in range(distances.shape[1])]
        self.norm.copy_(torch.tensor([[n.offset for n in per_teacher], [n.scale for n in per_teacher]]))
        summed = normalization_from_good(self.summed(distances).numpy())
        local = normalization_from_good(scores.numpy())
        gain = weight * local.scale / summed.scale
        self.affine.copy_(torch.tensor([gain, summed.offset]))
        return {"weight": weight, "gain": gain, "offset": summed.offset, "local_scale": local.scale}

    def summed(self, distances: torch.Tensor) -> torch.Tensor:
        return ((distances - self.norm[0]) / self.norm[1]).sum(dim=1)

    def add(self, distances: torch.Tensor) -> torch.Tensor:
        """(N, T) distances -> (N,) the amount the cue adds to the local score (linear in the weight)."""
        return self.affine[0] * (self.summed(distances) - self.affine[1])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.add(self.distances(feats))
