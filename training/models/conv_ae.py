"""Convolutional encoder-decoder: the baseline the AnoViT paper compares against (arXiv 2203.10808).

Same decoder as AnoViT; only the encoder differs (strided convs from scratch instead of a ViT), so
"AnoViT beats the conv baseline" measures what the encoder brings. Anomaly map = per-pixel
reconstruction error, smoothed; score = its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.anomaly_map import MapHead
from training.models.base import TrainableModel
from training.models.conv_decoder import ConvDecoder, reconstruction_error


@dataclass
class ConvAEConfig:
    image_size: int = 224
    widths: tuple[int, ...] = (32, 64, 128, 256)  # encoder stages, each stride 2 -> grid = image_size / 16
    latent_dim: int = 384  # same width the ViT encoder hands to the decoder
    decoder_widths: tuple[int, ...] = (96, 48, 24, 12)
    sigma: float = 4.0


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class ConvAE(TrainableModel):
    def __init__(self, config: ConvAEConfig) -> None:
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for width in config.widths:
            layers += [conv_bn_relu(c_in, width, 2), conv_bn_relu(width, width, 1)]
            c_in = width
        layers.append(nn.Conv2d(c_in, config.latent_dim, 1))
        self.encoder = nn.Sequential(*layers)
        size = (config.image_size, config.image_size)
        self.decoder = ConvDecoder(config.latent_dim, tuple(config.decoder_widths), size)
        self.head = MapHead(*size, sigma=config.sigma)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (N, 3, H, W) -> (N, latent, H/16, W/16) -> (N, 3, H, W)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruction_error(x, self.reconstruct(x)).mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(reconstruction_error(x, self.reconstruct(x)))
