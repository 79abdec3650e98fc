"""AnoViT: ViT encoder + convolutional decoder, anomaly = reconstruction error (arXiv 2203.10808).

All patch tokens (not the cls token) are reshaped to a feature map that keeps patch positions; the conv
decoder (shared with the conv baseline) reconstructs the image from it. The encoder is a ViT-S/14 with
DINOv2-architecture weights (no ImageNet ViT-B/16 can be had here) and is frozen by default: on a 2-core
CPU that lets training cache the encoder tokens once and fit only the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.anomaly_map import MapHead
from training.backbones.vit import ViTS14
from training.models.conv_decoder import ConvDecoder, reconstruction_error


@dataclass
class AnoViTConfig:
    image_size: int = 224  # 16 x 16 patches of 14 px
    decoder_widths: tuple[int, ...] = (96, 48, 24, 12)
    encoder_layer: int = 11  # block (0..11) whose patch tokens feed the decoder, after the final LayerNorm
    freeze_encoder: bool = True
    sigma: float = 4.0


class AnoViT(nn.Module):
    def __init__(self, config: AnoViTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTS14(img_size=config.image_size)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        size = (config.image_size, config.image_size)
        self.decoder = ConvDecoder(384, tuple(config.decoder_widths), size)
        self.head = MapHead(*size, sigma=config.sigma)

    def train(self, mode: bool = True) -> AnoViT:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_layers(x, [self.config.encoder_layer])[0]  # (N, h*w, 384), no cls
        h, w = self.encoder.grid
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (N, 384, h, w), positions kept

    def training_loss(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        features = features if features is not None else self.encode(x)
        return reconstruction_error(x, self.decoder(features)).mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(reconstruction_error(x, self.decoder(self.encode(x))))
