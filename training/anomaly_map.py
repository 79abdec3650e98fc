"""The shared tail of every model: per-pixel map at input size, smoothed, and the image score from it.

Written with plain conv/interpolate ops so it exports to ONNX and TensorRT as part of the graph. The
score is the maximum of the smoothed map, so a score above the threshold always has at least one map
pixel above it: the defect mask and the verdict can never disagree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian as two fixed depthwise convs with reflect padding (no learnable weights)."""

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma)
        self.pad = k.numel() // 2
        # persistent=False: the kernel follows from sigma, so it stays out of checkpoints.
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, H, W)
        x = F.pad(x, (self.pad, self.pad, 0, 0), mode="reflect")
        x = F.conv2d(x, self.kx)
        x = F.pad(x, (0, 0, self.pad, self.pad), mode="reflect")
        return F.conv2d(x, self.ky)


class MapHead(nn.Module):
    """(N, 1, h, w) raw map at any resolution -> (score (N,), map (N, H, W)) at the input size."""

    def __init__(self, height: int, width: int, sigma: float = 4.0) -> None:
        super().__init__()
        self.size = (height, width)
        self.blur = GaussianBlur(sigma) if sigma > 0 else nn.Identity()

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if raw.shape[-2:] != self.size:
            raw = F.interpolate(raw, size=self.size, mode="bilinear", align_corners=False)
        amap = self.blur(raw)[:, 0]  # (N, H, W)
        score = amap.flatten(1).amax(dim=1)  # (N,)
        return score, amap
