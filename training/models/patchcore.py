"""PatchCore-style kNN: the frozen teacher's patch features against a memory bank of good patches.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022), on the same
EfficientNet-Lite0 teacher GTrans learns from. Nothing is trained: the bank holds a greedy coreset of the
training images' locally pooled mid-level features, and a patch's anomaly is its distance to the nearest
bank row. It is the yardstick every trained model is held to on a new category, and a model to deploy
where it wins.

The search is written as ``|q|^2 - 2 q.B^T + |B|^2`` followed by a min over the bank, so the exported graph
is one MatMul and one ReduceMin with the bank as a constant: ONNX Runtime and TensorRT run it as they run
any layer, with no index library on the device. The bank size bounds both the bundle and the per-image
cost (``bank_size`` rows x feature width x 4 bytes; 16384 x 152 is 9.5 MiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.anomaly_map import MapHead
from training.backbones.efficientnet_lite import EfficientNetLite0
from training.models.base import TrainableModel


@dataclass
class PatchCoreConfig:
    image_size: int = 256
    teacher_blocks: tuple[int, ...] = (4, 10)  # EfficientNet-Lite0 blocks at strides 8 and 16
    pool: int = 3  # local neighbourhood averaged into each patch feature (PatchCore's aggregation)
    bank_size: int = 16384  # coreset rows kept; 16384 x 152 float32 = 9.5 MiB, small enough for a Jetson
    projection_dim: int = 64  # random projection the greedy coreset measures distances in
    max_candidates: int = 100_000  # patches the coreset is chosen from (a random subset beyond this)
    sigma: float = 4.0


class NearestBank(nn.Module):
    """(N, C, h, w) features -> (N, 1, h, w) Euclidean distance to the nearest bank row."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(rows, dim))
        self.register_buffer("bank_sqnorm", torch.zeros(rows))

    @torch.no_grad()
    def set_bank(self, rows: torch.Tensor) -> None:
        if rows.shape != self.bank.shape:
            raise ValueError(f"bank must be {tuple(self.bank.shape)}, got {tuple(rows.shape)}")
        self.bank.copy_(rows)
        self.bank_sqnorm.copy_(rows.pow(2).sum(dim=1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        q = f.flatten(2).transpose(1, 2)  # (N, h*w, C)
        d2 = q.pow(2).sum(-1, keepdim=True) - 2.0 * (q @ self.bank.t()) + self.bank_sqnorm  # (N, h*w, B)
        nearest = d2.amin(dim=-1).clamp_min(0.0).sqrt()  # (N, h*w)
        return nearest.view(n, 1, h, w)


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows chosen by greedy k-center (each pick the row farthest from those picked).

    Distances are measured after a random Gaussian projection, as PatchCore does, which keeps the
    ranking (Johnson-Lindenstrauss) at a fraction of the cost. Rare normal patches survive because the
    farthest row is always taken next; a uniform sample would drop them and call them anomalies. The loop
    is numpy with preallocated buffers: each pick is one matrix-vector product and three in-place passes.
    """
    m = features.shape[0]
    if n >= m:
        return torch.arange(m)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((features.shape[1], projection_dim)).astype(np.float32) / math.sqrt(
        projection_dim
    )
    z = np.ascontiguousarray(features.numpy().astype(np.float32, copy=False) @ proj)  # (M, P)
    sq = np.einsum("ij,ij->i", z, z)
    nearest = np.full(m, np.inf, dtype=np.float32)
    dist = np.empty(m, dtype=np.float32)
    picked = np.empty(n, dtype=np.int64)
    j = int(rng.integers(m))
    for i in range(n):
        picked[i] = j
        np.dot(z, z[j], out=dist)
        dist *= -2.0
        dist += sq
        dist += sq[j]
        np.minimum(nearest, dist, out=nearest)
        j = int(nearest.argmax())
    return torch.from_numpy(picked)


class PatchCore(TrainableModel):
    # The search must stay float (|q|^2 - 2q.B + |B|^2 cancels large terms), and int8 noise in the teacher
    # moves every patch off its bank neighbour: on bottle the int8 map correlated 0.62 with fp32 (the gate
    # wants 0.95). With both float there is nothing left for int8 to speed up, so export refuses --int8.
    int8_refusal = (
        "int8 noise in the teacher moves every patch off its nearest bank row (map correlation 0.62 with "
        "fp32 on bottle), and the distance search must stay float; use fp16 on a GPU"
    )
    training_free = True

    def __init__(self, config: PatchCoreConfig) -> None:
        super().__init__()
        self.config = config
        self.teacher = EfficientNetLite0()
        self.teacher.requires_grad_(False)
        self.dim = sum(self.teacher.block_channels(b) for b in config.teacher_blocks)
        self.search = NearestBank(config.bank_size, self.dim)
        size = config.image_size
        self.head = MapHead(size, size, sigma=config.sigma)

    def train(self, mode: bool = True) -> PatchCore:
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm always in inference mode
        return self

    def load_pretrained(self) -> None:
        self.teacher.load_imagenet()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised image -> (N, C, H/8, W/8) pooled multi-level patch features."""
        feats = self.teacher(x, list(self.config.teacher_blocks))
        size = feats[0].shape[-2:]
        p = self.config.pool
        out = []
        for f in feats:
            f = F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=False) if p > 1 else f
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, batch: int = 16, seed: int = 0, log=None) -> dict[str, int]:
        """Fill the bank from good images (N, 3, H, W normalised): the whole of PatchCore's 'training'."""
        self.eval()
        rows = torch.cat(
            [
                self.embed(x[i : i + batch]).permute(0, 2, 3, 1).reshape(-1, self.dim)
                for i in range(0, len(x), batch)
            ]
        )  # (N*h*w, C)
        total = rows.shape[0]
        cfg = self.config
        if total > cfg.max_candidates:
            keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: cfg.max_candidates]
            rows = rows[keep]
        if log is not None:
            log(f"choosing a {cfg.bank_size}-row coreset from {rows.shape[0]} of {total} patch features")
        if rows.shape[0] >= cfg.bank_size:
            chosen = rows[greedy_coreset(rows, cfg.bank_size, cfg.projection_dim, seed)]
        else:  # fewer patches than rows: repeat them (the nearest distance is unchanged)
            chosen = rows[torch.arange(cfg.bank_size) % rows.shape[0]]
        self.search.set_bank(chosen)
        return {"patches": int(total), "candidates": int(rows.shape[0]), "bank": cfg.bank_size}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.search(self.embed(x)))
