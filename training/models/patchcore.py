"""PatchCore-style kNN: a frozen teacher's patch features against a memory bank of good patches.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022). Nothing is trained: the
bank holds a greedy coreset of the training images' patch features, and a patch's anomaly is its distance
to the nearest bank row. Two teachers can be used (``backbone``):

- ``effnet``: EfficientNet-Lite0 blocks 4 + 10 (strides 8 and 16), 3x3 locally averaged, Euclidean
  distance: a fine map (image/8), the teacher GTrans learns from.
- ``vit``: ViT-S/14 (DINOv2 architecture, the AnoViT encoder) tokens after blocks 5 and 8 (0-based, as
  ``ViTS14.forward_layers`` counts them: the 6th and 9th of 12 blocks), each final-LayerNorm'd, concatenated,
  L2-normalised, cosine distance (1 - cos): a coarse map (image/14) that separates good from bad images
  better on real texture.
- ``both``: the two maps, each brought to the same units by the held-out good images' score statistics
  (``calibration.scores.normalization_from_good``: median 0, 99th percentile 1), fused (``fusion``).

The search is written as ``|q|^2 - 2 q.B^T + |B|^2`` followed by a min over the bank, so the exported graph
is one MatMul and one ReduceMin per teacher with the bank as a constant: ONNX Runtime and TensorRT run it
as they run any layer, with no index library on the device. The bank size bounds both the bundle and the
per-image cost (rows x feature width x 4 bytes; 16384 x 152 is 9.5 MiB; 4096 x 768 is 12 MiB). A bank
can live in its training patches' principal components (``pca_dim`` / ``vit_pca_dim``): 8192 ViT rows of
96 components cost what 1024 rows of 768 do, and cover the good patches far better.
``bank_size = 0`` keeps every training patch: the plain full-bank kNN, an evaluation yardstick that
export refuses (its bank grows with the data set). The bank, its coreset and its coverage report are in
``training.models.memory_bank``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.anomaly_map import MapHead
from training.backbones.efficientnet_lite import EfficientNetLite0
from training.backbones.vit import ViTS14
from training.models.base import TrainableModel
from training.models.image_cue import ImageCue
from training.models.map_scores import (
    fit_map_normalization,
    peak_to_score,
    shift_to_score,
    topk_count,
    topk_mean,
)
from training.models.memory_bank import (
    PCA_SAMPLE,
    NearestBank,
    StreamedCoreset,
    candidate_stride,
    coverage,
    format_quantiles,
    greedy_coreset,
    grid_rows,
    pca_basis,
)

BACKBONES = ("effnet", "vit", "both")
SCORES = ("max", "topk")
FUSIONS = ("mean", "max", "shift")
PEAKS = ("shift", "clip")
# Checkpoints written before these fields existed were EfficientNet-only max-scored kNNs (training.checkpoint)
FIELDS_ADDED_SINCE = {
    "backbone": "effnet",
    "score": "max",
    "vit_bank_size": 1024,
    "fusion": "mean",
    "pca_dim": 0,
    "vit_pca_dim": 0,
    "vit_weight": 0.5,
    "peak": "shift",
    "image_cue": 0.0,
    "candidate_stride": 1,
}


# Set by training itself (the ViT weight and the image cue's weight measured per bundle,
# training.fusion_weight): a finished run's value is its own, not a setting a later command must repeat
MEASURED_FIELDS = ("vit_weight", "image_cue")


@dataclass
class PatchCoreConfig:
    # Defaults = the recommended model (docs/accuracy.md says which data chose each): both teachers,
    # weighted mean fusion, top-0.1 % mean score, banks sized so the bundle's CPU p50 stays near 3x GTrans's.
    image_size: int = 224  # ViT-S/14's own size (16 x 16 patches); EfficientNet gets 28 x 28 cells
    backbone: str = "both"  # "effnet" | "vit" | "both" (see the module docstring)
    teacher_blocks: tuple[int, ...] = (4, 10)  # EfficientNet-Lite0 blocks at strides 8 and 16
    pool: int = (
        3  # local neighbourhood averaged into each EfficientNet patch feature (PatchCore's aggregation)
    )
    vit_layers: tuple[int, ...] = (5, 8)  # ViT-S/14 blocks, 0-based (ViTS14.forward_layers)
    bank_size: int = (
        4096  # EfficientNet coreset rows; 4096 x 152 float32 = 2.4 MiB. 0: every patch (eval only)
    )
    vit_bank_size: int = 8192  # ViT coreset rows; 8192 x 96 float32 = 3 MiB. 0: every patch (eval only)
    pca_dim: int = 0  # EfficientNet bank in this many principal components; 0: the 152-d features
    vit_pca_dim: int = 96  # ViT bank in this many principal components of its 768-d tokens; 0: none
    projection_dim: int = 64  # random projection the greedy coreset measures distances in
    max_candidates: int = 0  # 0: coreset from every patch (or candidate_stride's grid); > 0: a random subset
    candidate_stride: int = 2  # candidates on this grid, turning per image, where 8 a row remain (grid_rows)
    score: str = "topk"  # image score from the smoothed map: "max", or "topk" (mean of its top topk_fraction)
    topk_fraction: float = 0.001  # of the map's pixels: 50 of 224 x 224
    fusion: str = (
        "mean"  # backbone "both": "mean" or "max" of the two normalised maps, or "shift" (fuse_maps)
    )
    vit_weight: float = 0.75  # fusion "mean": the ViT map's weight, the EfficientNet's is 1 - vit_weight
    sigma: float = 4.0
    peak: str = "shift"  # score "topk": how the map's maximum becomes the score (score_map)
    image_cue: float = 0.0  # weight of the image-level cue (image_cue.py), 0: none; measured per bundle


# --- the teachers ----------------------------------------------------------------------------------------


class EffNetPatches(nn.Module):
    """(N, 3, H, W) normalised image -> (N, C, H/8, W/8) pooled EfficientNet-Lite0 multi-level features."""

    def __init__(self, blocks: tuple[int, ...], pool: int) -> None:
        super().__init__()
        self.net = EfficientNetLite0()
        self.net.requires_grad_(False)
        self.blocks, self.pool = list(blocks), pool
        self.dim = sum(self.net.block_channels(b) for b in blocks)

    def load_pretrained(self) -> None:
        self.net.load_imagenet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net(x, self.blocks)
        size = feats[0].shape[-2:]
        p, out = self.pool, []
        for f in feats:
            f = F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=False) if p > 1 else f
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)


class ViTPatches(nn.Module):
    """(N, 3, S, S) normalised image -> (N, 384 * layers, S/14, S/14) L2-normalised ViT-S/14 tokens."""

    def __init__(self, image_size: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.net = ViTS14(img_size=image_size)
        self.net.requires_grad_(False)
        self.layers = list(layers)
        self.dim = self.net.dim * len(self.layers)

    def load_pretrained(self) -> None:
        from training.backbones.vit import load_vit_s14

        self.net.load_state_dict(load_vit_s14(img_size=self.net.cfg.img_size).state_dict(), strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat(self.net.forward_layers(x, self.layers), dim=-1)  # (N, h*w, C)
        tokens = tokens / tokens.pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
        h, w = self.net.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def _check(config: PatchCoreConfig) -> None:
    for name, value, allowed in (
        ("backbone", config.backbone, BACKBONES),
        ("score", config.score, SCORES),
        ("fusion", config.fusion, FUSIONS),
        ("peak", config.peak, PEAKS),
    ):
        if value not in allowed:
            raise ValueError(f"patchcore {name} must be one of {', '.join(allowed)}; got {value!r}")
    if config.backbone != "effnet" and config.image_size % 14:
        raise ValueError(
            f"backbone {config.backbone!r} runs ViT-S/14, which needs image_size a multiple of 14; "
            f"got {config.image_size} (224 is the ViT's own size)"
        )
    if not 0.0 < config.topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1], got {config.topk_fraction}")
    if min(config.bank_size, config.vit_bank_size) < 0:
        raise ValueError("bank sizes must be >= 0 (0 keeps every training patch)")
    if not 0.0 <= config.vit_weight <= 1.0:
        raise ValueError(f"vit_weight must be in [0, 1], got {config.vit_weight}")
    if min(config.pca_dim, config.vit_pca_dim) < 0:
        raise ValueError("pca dims must be >= 0 (0 keeps the teacher's features)")
    if config.image_cue < 0:
        raise ValueError(f"image_cue must be >= 0 (0: no image-level cue), got {config.image_cue}")


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
        _check(config)
        self.config = config
        self.teachers = [t for t in ("effnet", "vit") if config.backbone in (t, "both")]
        if "effnet" in self.teachers:
            self.teacher = EffNetPatches(tuple(config.teacher_blocks), config.pool)
            self.search = NearestBank(config.bank_size, self.teacher.dim, project_to=config.pca_dim)
        if "vit" in self.teachers:
            self.vit = ViTPatches(config.image_size, tuple(config.vit_layers))
            self.vit_search = NearestBank(
                config.vit_bank_size, self.vit.dim, metric="cosine", project_to=config.vit_pca_dim
            )
        # per-teacher (offset, scale) of the held-out good scores; identity until fit sets them ("both" only)
        self.register_buffer("norm_offset", torch.zeros(len(self.teachers)))
        self.register_buffer("norm_scale", torch.ones(len(self.teachers)))
        size = config.image_size
        self.head = MapHead(size, size, sigma=config.sigma)
        self.cue = ImageCue([t.dim for t, _ in self.parts()]) if config.image_cue else None

    def prepare_cue(self) -> None:
        """Fit the image cue's Gaussians in ``fit`` even at weight 0, so training can measure its weight
        (``training.fusion_weight.choose_image_cue``); a weight of 0 chosen there removes it again."""
        if self.cue is None:
            self.cue = ImageCue([t.dim for t, _ in self.parts()])

    @property
    def k(self) -> int:
        """Pixels the top-k score averages; read from the config at each call, so a model whose config is
        replaced (a re-scoring run trying other scores on the same bank) scores as its config says."""
        return topk_count(self.config.topk_fraction, self.config.image_size)

    @property
    def dim(self) -> int:
        """Feature width of the first teacher (EfficientNet's when it is used)."""
        return self.parts()[0][0].dim

    @property
    def export_refusal(self) -> str | None:
        """Why this model cannot be exported (a full bank), or None."""
        full = [t for t, (_, s) in zip(self.teachers, self.parts(), strict=True) if s.resizable]
        if full:
            return (
                f"its {' and '.join(full)} bank keeps every training patch (bank_size=0, the evaluation "
                "yardstick); train with a bank size (the default) to get a deployable model"
            )
        return None

    def parts(self) -> list[tuple[nn.Module, NearestBank]]:
        return [
            (self.teacher, self.search) if t == "effnet" else (self.vit, self.vit_search)
            for t in self.teachers
        ]

    def train(self, mode: bool = True) -> PatchCore:
        super().train(mode)
        for teacher, _ in self.parts():
            teacher.eval()  # frozen: BatchNorm always in inference mode
        return self

    def load_pretrained(self) -> None:
        for teacher, _ in self.parts():
            teacher.load_pretrained()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised image -> (N, C, h, w) patch features of the first teacher."""
        return self.parts()[0][0](x)

    # --- fitting -------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit(
        self,
        x: torch.Tensor,
        batch: int = 16,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
        x_val: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Fill the banks from good images (N, 3, H, W normalised): the whole of PatchCore's 'training'.

        With held-out good images ``x_val``: the coverage report (their patches' nearest-bank distances)
        and, for ``both``, each teacher's score normalisation.
        """
        self.eval()
        say = log or (lambda _m: None)
        info: dict[str, Any] = {"teachers": {}}
        pooled: list[list[torch.Tensor]] = [[] for _ in self.teachers]  # per image, for the cue
        for t, (name, (teacher, search)) in enumerate(zip(self.teachers, self.parts(), strict=True)):
            size = self.config.bank_size if name == "effnet" else self.config.vit_bank_size
            keep = pooled[t] if self.cue is not None else None
            info["teachers"][name] = self._fit_bank(name, teacher, search, x, size, batch, seed, say, keep)
            if x_val is not None and len(x_val):
                cov = coverage(search, _embed_batches(teacher, x_val, batch))
                info["teachers"][name]["coverage"] = cov
                say(f"{name} coverage, held-out good patches' nearest-bank distance: {format_quantiles(cov)}")
        first = info["teachers"][self.teachers[0]]  # the keys the single-teacher reports always had
        info.update({k: first[k] for k in ("patches", "candidates", "bank")})
        if len(self.teachers) > 1:
            info["normalization"] = self._fit_normalization(x_val, batch)
        if self.cue is not None:
            self.cue.fit_gaussians([torch.cat(p) for p in pooled])
            if self.config.image_cue:  # at weight 0 (prepare_cue) the measurement calibrates it
                info["image_cue"] = self.calibrate_image_cue(x_val, batch)
        return info

    @torch.no_grad()
    def calibrate_image_cue(
        self, x_val: Any, batch: int = 16, weight: float | None = None
    ) -> dict[str, Any] | None:
        """Put the cue in the score's units on the held-out good images (``ImageCue.calibrate``) at ``weight``
        (the config's unless given); run again whenever the map's fusion changes (``edge-train`` does,
        after measuring the ViT weight)."""
        if self.cue is None:
            return None
        if x_val is None or len(x_val) < 2:
            raise ValueError(
                "image_cue is scaled on held-out good images; train with --val-fraction > 0 and at least 2"
            )
        scores, distances = [], []
        for i in range(0, len(x_val), batch):
            feats = self.features(x_val[i : i + batch])
            scores.append(self.image_score(self.fused_map(feats)))
            distances.append(self.cue.distances(feats))
        weight = self.config.image_cue if weight is None else weight
        return self.cue.calibrate(torch.cat(scores), torch.cat(distances), weight)

    def _fit_bank(self, name, teacher, search, x, size, batch, seed, say, pooled=None) -> dict[str, Any]:
        cfg = self.config
        stream = StreamedCoreset(teacher.dim, cfg.projection_dim, seed)
        stride, patches = 0, 0
        try:
            for f in _embed_batches(teacher, x, batch):
                cells = f.shape[2] * f.shape[3]
                if not stride:  # the first batch tells how many patches there are
                    asked = 1 if cfg.max_candidates else cfg.candidate_stride
                    stride = candidate_stride(asked, len(x) * cells, size)
                stream.add(grid_rows(f, stride, patches // cells))  # (B*h*w / stride^2, C)
                patches += len(f) * cells
                if pooled is not None:
                    pooled.append(f.mean(dim=(2, 3)))
            total = stream.count
            if search.projected:  # the coreset is chosen where the search measures: in the projection
                width = search.bank.shape[1]
                say(f"{name}: {width} principal components of {teacher.dim}-d patch features")
                search.set_projection(*pca_basis(stream.sample(PCA_SAMPLE, seed), width))
                full, stream = stream, StreamedCoreset(width, cfg.projection_dim, seed)  # closed below
                try:
                    for rows in full.chunks(65536):
                        stream.add(search.project(rows))
                finally:
                    full.close()
            if cfg.max_candidates and total > cfg.max_candidates:  # the old random-subset behaviour
                keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[
                    : cfg.max_candidates
                ]
                rows_all = stream.rows(0)[keep]
                candidates = len(keep)
                chosen = (
                    rows_all[greedy_coreset(rows_all, size, cfg.projection_dim, seed)] if size else rows_all
                )
            else:
                candidates = total
                grid = f" of {patches} patch features (a {stride} x {stride} grid turning per image)"
                pool = f"{total}{grid}" if stride > 1 else f"all {total} patch features"
                say(
                    f"{name}: "
                    + (f"choosing a {size}-row coreset from {pool}" if size else f"keeping {pool}")
                )
                chosen = stream.rows(size)
        finally:
            stream.close()
        if size and len(chosen) < size:  # fewer patches than rows: repeat them (nearest distance unchanged)
            chosen = chosen[torch.arange(size) % len(chosen)]
        search.set_bank(chosen)
        return {"patches": int(patches), "candidates": int(candidates), "bank": int(len(chosen))}

    def _fit_normalization(self, x_val: torch.Tensor | None, batch: int) -> dict[str, list[float]]:
        return fit_map_normalization(
            lambda xb: [self.image_score(self.head(r)[1]) for r in self.raw_maps(xb)],
            x_val,
            batch,
            self.norm_offset,
            self.norm_scale,
            "backbone 'both' brings the two teachers to one scale",
        )

    # --- inference -----------------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each teacher's (N, C, h, w) patch features."""
        return [teacher(x) for teacher, _ in self.parts()]

    def raw_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each teacher's (N, 1, h, w) nearest-bank distance map, at its own grid."""
        return self._raw(self.features(x))

    def _raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [search(f) for f, (_, search) in zip(feats, self.parts(), strict=True)]

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        """(N, H, W) smoothed map -> (N,) image score: its max, or the mean of its top ``k`` pixels."""
        if self.config.score == "topk":
            return topk_mean(amap, self.k)
        return amap.flatten(1).amax(dim=1)

    def fuse_maps(self, maps: list[torch.Tensor], vit_weight: float | None = None) -> torch.Tensor:
        """Normalised (EfficientNet, ViT) (N, H, W) maps -> one map. "mean": their pixelwise mean weighted
        by ``vit_weight`` (the config's unless given: ``training.fusion_weight`` tries others); "max": their
        pixelwise max; "shift": the first (fine, EfficientNet) map moved so that its peak equals the mean
        of the maps' image scores."""
        if self.config.fusion == "mean":
            w = self.config.vit_weight if vit_weight is None else vit_weight
            return (1.0 - w) * maps[0] + w * maps[1]
        if self.config.fusion == "max":
            return torch.stack(maps, 0).amax(0)
        fused = torch.stack([self.image_score(m) for m in maps], 0).mean(0)  # (N,)
        return maps[0] + (fused - self.image_score(maps[0]))[:, None, None]

    def normalised_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each teacher's (N, H, W) upsampled, smoothed map; with two teachers each in held-out good units."""
        return self.normalise(self.features(x))

    def normalise(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The teachers' features -> their maps as ``normalised_maps`` gives them."""
        maps = [self.head(r)[1] for r in self._raw(feats)]
        if len(maps) == 1:
            return maps
        return [(m - self.norm_offset[i]) / self.norm_scale[i] for i, m in enumerate(maps)]

    def fused_map(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The teachers' features -> the one (N, H, W) map the score is read from."""
        maps = self.normalise(feats)
        return maps[0] if len(maps) == 1 else self.fuse_maps(maps)

    def score_map(self, amap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W) final map -> (score, a map whose maximum is the score: the daemon reads the score as
        the map's maximum). A top-k score is below the map's peak; ``peak`` says how the map comes down to
        it: "shift" moves the whole map by the difference (every pixel of the image changes), "clip" cuts
        it at the score (only the pixels above the score change, so the mask of a flagged part is the
        map's own region above the threshold)."""
        score = self.image_score(amap)
        if self.config.score == "max":
            return score, amap
        if self.config.peak == "clip":
            return score, torch.minimum(amap, score[:, None, None])
        return score, shift_to_score(amap, score)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        score, amap = self.score_map(self.fused_map(feats))
        if self.cue is None:
            return score, amap
        return self.with_cue(score, amap, self.cue(feats))

    def with_cue(
        self, score: torch.Tensor, amap: torch.Tensor, add: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image-level cue's ``add`` (N,) on the score; only the map's peak follows it (the cue says the
        part is off, not where)."""
        score = score + add
        return score, peak_to_score(amap, score, self.k)


def _embed_batches(teacher: nn.Module, x: torch.Tensor, batch: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(x), batch):
        yield teacher(x[i : i + batch])
