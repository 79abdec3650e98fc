"""GTrans and the kNN kind in one model: one bundle, one graph, their two maps fused in common units.

Issue 24 ("Two models together"). GTrans localises finely and catches what its student cannot reproduce;
the kNN (``patchcore``: EfficientNet-Lite0 and ViT-S/14 banks) separates good from bad images better on
real texture. Both run on the same input, each with its own default config:

- each part's smoothed map is brought to the input size (bilinear), and to common units by the held-out
  good images: (map - offset) / scale, with offset and scale from ``normalization_from_good`` of that
  part's image scores on them (median 0, 99th percentile 1; the code the kNN kind's two teachers share,
  ``map_scores.fit_map_normalization``);
- the fused map is the pixelwise mean of the two normalised maps; the image score is the mean of its top
  ``topk_fraction`` pixels, and the map is shifted so that its maximum equals that score (the daemon scores
  an image by its map's maximum), as the kNN kind does.

A part whose ``image_size`` differs from the input's gets the normalised image resized (bilinear) inside
the graph: by default GTrans sees the 256 px input as ``edge-train --model gtrans`` would, the kNN a
224 px copy (ViT-S/14's own size). The two EfficientNet-Lite0 teachers are therefore not shared: they run
at different sizes (GTrans also needs block 14), so one pass could not serve both exactly.

Training is GTrans's (same loop, denoising student, resumable); after its last epoch the kNN's banks are
filled from the same training images and the normalisation fitted on the held-out ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from training.models.base import TrainableModel
from training.models.gtrans import GTrans, GTransConfig
from training.models.map_scores import fit_map_normalization, shift_to_score, topk_count, topk_mean
from training.models.patchcore import PatchCore, PatchCoreConfig

# sub-config field -> its model kind: a checkpoint's sub-configs get that kind's FIELDS_ADDED_SINCE
# (training.checkpoint.saved_config), so a later default of either part never changes an old bundle.
NESTED_KINDS = {"gtrans": "gtrans", "patchcore": "patchcore"}
PART_NAMES = ("gtrans", "patchcore")


def _sub_config(cls: type, value: Any, name: str) -> Any:
    """A sub-config from a dataclass or a plain dict (a checkpoint's config, ``--set gtrans.dim=64``)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"gtrans-knn's {name} config must be a table of settings, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"gtrans-knn's {name} config has unknown keys {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


@dataclass
class GTransKNNConfig:
    image_size: int = 256  # the bundle's input: GTrans's own size; the kNN part gets a resized copy
    gtrans: GTransConfig = field(default_factory=GTransConfig)
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)
    topk_fraction: float = 0.01  # image score: mean of the fused map's top 1 %

    def __post_init__(self) -> None:
        self.gtrans = _sub_config(GTransConfig, self.gtrans, "gtrans")
        self.patchcore = _sub_config(PatchCoreConfig, self.patchcore, "patchcore")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")


class GTransKNN(TrainableModel):
    int8_refusal = PatchCore.int8_refusal  # the kNN part's search and teachers must stay float
    needs_held_out = True  # the fusion's normalisation is fitted on held-out good images (the trainer checks)

    def __init__(self, config: GTransKNNConfig) -> None:
        super().__init__()
        self.config = config
        self.gtrans = GTrans(config.gtrans)
        self.patchcore = PatchCore(config.patchcore)
        # per-part (offset, scale) of the held-out good scores; identity until fit_after_training sets them
        self.register_buffer("norm_offset", torch.zeros(len(PART_NAMES)))
        self.register_buffer("norm_scale", torch.ones(len(PART_NAMES)))

    @property
    def k(self) -> int:
        """Pixels the top-k score averages, from the config (as the kNN kind reads its own)."""
        return topk_count(self.config.topk_fraction, self.config.image_size)

    # --- what the trainer and the exporter ask ------------------------------------------------------

    @property
    def export_refusal(self) -> str | None:
        return self.patchcore.export_refusal

    def parts(self) -> list[tuple[torch.nn.Module, Any]]:
        """The kNN part's (teacher, bank) pairs (``training.latency_compare`` fills the banks)."""
        return self.patchcore.parts()

    def load_pretrained(self) -> None:
        self.gtrans.load_pretrained()
        self.patchcore.load_pretrained()

    def corruption_share(self) -> float:
        return self.gtrans.corruption_share()

    def pretrained_trainable(self) -> list[torch.nn.Parameter]:
        return self.gtrans.pretrained_trainable()

    def configure_optimizer(self, lr: float) -> torch.optim.AdamW:
        return self.gtrans.configure_optimizer(lr)  # only the GTrans student trains

    def resized(self, x: torch.Tensor, part: TrainableModel) -> torch.Tensor:
        """The normalised image at ``part``'s own input size."""
        size = int(part.config.image_size)
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def cache_frozen(self, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor] | None:
        return self.gtrans.cache_frozen(self.resized(x, self.gtrans), batch)

    def batch_loss(
        self,
        x: torch.Tensor,
        cached: list[torch.Tensor] | None,
        idx: torch.Tensor,
        corrupted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """GTrans's loss on images ``idx`` (the kNN part has nothing to learn)."""
        g = self.gtrans
        batch = self.resized(x[idx], g)
        sub_cached = None if cached is None else [c[idx] for c in cached]
        noisy = None if corrupted is None else self.resized(corrupted, g)
        return g.batch_loss(batch, sub_cached, torch.arange(len(idx)), noisy)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.gtrans.training_loss(self.resized(x, self.gtrans))

    @torch.no_grad()
    def fit_after_training(
        self,
        x_train: Any,
        x_val: Any,
        batch: int = 16,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """After GTrans's last epoch: fill the kNN's banks from the training images (and its own teachers'
        normalisation from the held-out ones), then fit the two parts' normalisation on the held-out ones."""
        self.eval()
        say = log or (lambda _m: None)
        p = self.patchcore
        say("filling the kNN part's banks from the training images")
        info = p.fit(
            _Resized(x_train, self, p),
            batch=batch,
            seed=seed,
            log=say,
            x_val=None if x_val is None else _Resized(x_val, self, p),
        )
        info["fusion_normalization"] = fit_map_normalization(
            lambda xb: [topk_mean(m, self.k) for m in self.part_maps(xb)],
            x_val,
            batch,
            self.norm_offset,
            self.norm_scale,
            "gtrans-knn brings GTrans's and the kNN's maps to one scale",
        )
        info["fusion_normalization"]["parts"] = list(PART_NAMES)
        return info

    # --- inference -----------------------------------------------------------------------------------

    def part_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each part's smoothed (N, H, W) map at the input size, in its own units (GTrans, then the kNN)."""
        size = x.shape[-2:]
        maps = []
        for part in (self.gtrans, self.patchcore):
            amap = part(self.resized(x, part))[1]
            if amap.shape[-2:] != size:
                amap = F.interpolate(amap[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            maps.append(amap)
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.part_maps(x)
        fused = torch.stack(
            [(m - self.norm_offset[i]) / self.norm_scale[i] for i, m in enumerate(maps)], 0
        ).mean(0)
        score = topk_mean(fused, self.k)
        return score, shift_to_score(fused, score)


class _Resized:
    """Images that slice at a part's input size: the kNN's fit reads its training images in batches."""

    def __init__(self, x: Any, model: GTransKNN, part: TrainableModel) -> None:
        self.x, self.model, self.part = x, model, part

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: slice) -> torch.Tensor:
        return self.model.resized(self.x[index], self.part)
