"""AnoViT: ViT encoder + convolutional decoder, anomaly = reconstruction error (arXiv 2203.10808).

All patch tokens (not the cls token) are reshaped to a feature map that keeps patch positions; the conv
decoder (shared with the conv baseline) reconstructs the image from it. The encoder is a ViT-S/14 with
DINOv2-architecture weights (no ImageNet ViT-B/16 can be had here).

The paper trains the encoder with the decoder. On a 2-core CPU that is done for the last blocks only:
``finetune_blocks = k`` (default 4 of 12) lets the last k blocks up to ``encoder_layer`` (and the final
LayerNorm after them) train with the decoder, while everything before them stays frozen and training caches
the token sequence that enters the first of them. ``finetune_blocks = 0`` freezes the whole encoder and
fits the decoder alone. On MVTec bottle the frozen encoder lost to the conv baseline on pixel AUROC
(0.816 vs 0.874): its last-block tokens are too coarse to reconstruct edges; fine-tuning 4 blocks gave 0.887
(results/mvtec-bottle.md).
Eval (``forward``) is the same single graph image -> (score, map) in every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.anomaly_map import MapHead
from training.backbones.vit import ViTS14
from training.models.base import TrainableModel
from training.models.conv_decoder import ConvDecoder, reconstruction_error


@dataclass
class AnoViTConfig:
    image_size: int = 224  # 16 x 16 patches of 14 px
    decoder_widths: tuple[int, ...] = (96, 48, 24, 12)
    encoder_layer: int = 11  # block (0..11) whose patch tokens feed the decoder, after the final LayerNorm
    freeze_encoder: bool = True  # False: the whole encoder trains (nothing cached)
    # The paper trains the encoder with the decoder; on 2 CPU cores the last third of it (4 blocks) trains,
    # the rest stays frozen and its output is cached. 0: fully frozen (decoder only).
    finetune_blocks: int = 4  # blocks ending at encoder_layer that train (needs freeze_encoder=True)
    # Learning rate of the encoder parameters that train, as a fraction of the decoder's: they start from
    # pretrained weights that a full decoder-sized step would wreck in the first updates, while the
    # decoder starts from random and needs the large one.
    encoder_lr_scale: float = 0.1
    # Earlier blocks whose patch tokens join encoder_layer's as decoder input (concatenated, then a 1x1 conv
    # back to 384 channels, so the decoder stays the conv baseline's). Mid-level tokens keep the local detail
    # the last block has mixed away, which a reconstruction needs at normal edges. With fine-tuned blocks
    # they must be at or after the last frozen block, whose output training caches anyway. Off by default:
    # a trade rather than a gain (benchmarks/README.md, "Design measurements").
    extra_layers: tuple[int, ...] = ()
    sigma: float = 4.0


class AnoViT(TrainableModel):
    def __init__(self, config: AnoViTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTS14(img_size=config.image_size)
        last = config.encoder_layer
        if not 0 <= last < self.encoder.cfg.depth:
            raise ValueError(f"encoder_layer must be in 0..{self.encoder.cfg.depth - 1}, got {last}")
        if not 0 <= config.finetune_blocks <= last + 1:
            raise ValueError(
                f"finetune_blocks must be in 0..{last + 1} (encoder_layer + 1), got {config.finetune_blocks}"
            )
        if config.finetune_blocks and not config.freeze_encoder:
            raise ValueError(
                "finetune_blocks needs freeze_encoder=True (freeze_encoder=False trains every block)"
            )
        self.first_tuned = last + 1 - config.finetune_blocks  # first block that trains (last + 1: none)
        extra = list(config.extra_layers)
        lowest = self.first_tuned - 1 if config.freeze_encoder and config.finetune_blocks else 0
        if len(set(extra)) != len(extra) or not all(lowest <= i < last for i in extra):
            raise ValueError(
                f"extra_layers must be distinct blocks in {lowest}..{last - 1} (with finetune_blocks="
                f"{config.finetune_blocks} and encoder_layer={last}), got {extra}"
            )
        self.layers = [*sorted(extra), last]
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
            for module in self.tuned_modules():
                module.requires_grad_(True)
        size = (config.image_size, config.image_size)
        if extra:
            self.fuse = nn.Conv2d(384 * len(self.layers), 384, 1)
        self.decoder = ConvDecoder(384, tuple(config.decoder_widths), size)
        self.head = MapHead(*size, sigma=config.sigma)

    def tuned_modules(self) -> list[nn.Module]:
        """The encoder parts that train with a frozen encoder: the fine-tuned blocks and the final norm."""
        if not self.config.finetune_blocks:
            return []
        blocks = self.encoder.blocks[self.first_tuned : self.config.encoder_layer + 1]
        return [*blocks, self.encoder.norm]

    def train(self, mode: bool = True) -> AnoViT:
        super().train(mode)
        if self.config.freeze_encoder:  # frozen parts always in eval mode, fine-tuned ones follow `mode`
            self.encoder.eval()
            for module in self.tuned_modules():
                module.train(mode)
        return self

    def to_map(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Patch tokens (N, h*w, 384) of each layer -> one (N, 384 * layers, h, w) map, positions kept."""
        h, w = self.encoder.grid
        return torch.cat([t.transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in tokens], dim=1)

    def neck(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fuse(maps) if self.config.extra_layers else maps  # -> (N, 384, h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.to_map(self.encoder.forward_layers(x, self.layers)))  # no cls token

    def frozen_part(self, x: torch.Tensor) -> torch.Tensor:
        """What the frozen encoder makes of x, cached once by training: the token sequence (N, 1 + h*w, 384)
        entering the first fine-tuned block, or with none fine-tuned the layer maps before the neck."""
        if not self.config.finetune_blocks:
            return self.to_map(self.encoder.forward_layers(x, self.layers))
        return self.encoder.tokens_after(x, self.first_tuned - 1)

    def encode_from(self, frozen: torch.Tensor) -> torch.Tensor:
        """The decoder input from ``frozen_part(x)``: equals ``encode(x)``."""
        if not self.config.finetune_blocks:
            return self.neck(frozen)
        return self.neck(self.to_map(self.encoder.layers_from(frozen, self.first_tuned, self.layers)))

    def load_pretrained(self) -> None:
        from training.backbones.vit import load_vit_s14

        self.encoder.load_state_dict(load_vit_s14(img_size=self.config.image_size).state_dict(), strict=True)

    @torch.no_grad()
    def cache_frozen(self, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor] | None:
        if not self.config.freeze_encoder:
            return None
        return [torch.cat([self.frozen_part(x[i : i + batch]) for i in range(0, len(x), batch)])]

    def batch_loss(
        self,
        x: torch.Tensor,
        cached: list[torch.Tensor] | None,
        idx: torch.Tensor,
        corrupted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.training_loss(x[idx], frozen=None if cached is None else cached[0][idx])

    def pretrained_trainable(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def training_loss(self, x: torch.Tensor, frozen: torch.Tensor | None = None) -> torch.Tensor:
        features = self.encode(x) if frozen is None else self.encode_from(frozen)
        return reconstruction_error(x, self.decoder(features)).mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(reconstruction_error(x, self.decoder(self.encode(x))))
