"""The deployable function: uint8 NHWC image -> (score, anomaly_map), with normalisation inside.

This is what export traces to ONNX, and what evaluation runs, so the numbers measured on the torch
side are the numbers of the exported graph.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.capture.preprocess import Preprocess


class Normalize(nn.Module):
    """uint8 (N, H, W, 3) in the model's colour order -> float (N, 3, H, W) normalised by mean/std."""

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", 1.0 / std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.mean) * self.inv_std


class InferenceModel(nn.Module):
    """Normalise, run the model in eval mode, return (score (N,), anomaly_map (N, H, W)) in raw units."""

    def __init__(self, model: nn.Module, pre: Preprocess) -> None:
        super().__init__()
        self.normalize = Normalize(pre)
        self.model = model.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(self.normalize(image))
