"""The convolutional decoder shared by AnoViT and its conv baseline, so the comparison isolates the
encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UpBlock(nn.Module):
    """x2 nearest upsample then two 3x3 convs: avoids transposed-conv checkerboards in the error map."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class ConvDecoder(nn.Module):
    """(N, C, h, w) feature map -> (N, 3, H, W) image in normalised units; four x2 stages then resize."""

    def __init__(self, c_in: int, widths: tuple[int, ...], out_hw: tuple[int, int]) -> None:
        super().__init__()
        chans = (c_in, *widths)
        self.blocks = nn.Sequential(*[UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.to_image = nn.Conv2d(chans[-1], 3, 3, padding=1)
        self.out_hw = out_hw

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.to_image(self.blocks(feat))  # (N, 3, h * 2^k, w * 2^k)
        if x.shape[-2:] != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return x


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error averaged over channels: (N, 3, H, W) x2 -> (N, 1, H, W)."""
    return (x - recon).pow(2).mean(dim=1, keepdim=True)
