"""GTrans: a Transformer student guided by a frozen ImageNet CNN over multi-resolution features.

arXiv 2305.14880. The Anomaly Guided Network (AGN, here EfficientNet-Lite0: no ImageNet ResNet can be had
on these machines) gives features at strides 8, 16 and 32. The student ("Trans") sees only the image: a
small conv stem makes tokens at the same three resolutions, and Transformer blocks let every token attend
to a key set drawn from all three resolutions (the finest one pooled once, as in PVT's spatial-reduction
attention, to keep CPU cost in check). Heads regress the AGN features of each scale.

The anomaly map per scale combines a spatial-distance term (squared error against channel-standardised
AGN features) and a direction term (1 - cosine similarity); scales are upsampled to the finest one and
averaged. The AGN channel statistics are fitted once on the training images and stored as buffers, so
every score depends on its own image only (no batch statistics, no test-set normalisation).

``vit_layers`` adds a second teacher (issue 24: on real products the ViT-S/14 mid-block tokens separate good
from bad images better than the CNN's): the L2-normalised tokens of those blocks, of a 224 px copy of the
input (16 x 16), become one more target at the student's stride-16 grid, with its own head and the same
distance + direction map, averaged with the CNN's three scales. It is the default (chosen on visible data,
docs/accuracy.md "GTrans with the ViT as a second teacher"); empty is the paper's CNN teacher alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.anomaly_map import MapHead
from training.backbones.efficientnet_lite import EfficientNetLite0
from training.models.base import TrainableModel
from training.models.patchcore import ViTPatches

# Checkpoints written before the ViT teacher existed had the CNN teacher alone (training.checkpoint)
FIELDS_ADDED_SINCE = {"vit_layers": ()}

VIT_SIZE = 224  # ViT-S/14's own input: a 16 x 16 token grid
VIT_SCALE = 1  # the student scale (stride 16) that regresses the ViT tokens


@dataclass
class GTransConfig:
    image_size: int = 256
    teacher_blocks: tuple[int, ...] = (4, 10, 14)  # EfficientNet-Lite0 blocks at strides 8, 16, 32
    stem_widths: tuple[int, ...] = (24, 48, 64, 96, 128)  # student conv stem, strides 2..32
    dim: int = 96  # token width; sized so training fits ~20 min on 2 CPU cores
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    cos_weight: float = 1.0  # weight of the direction term against the distance term
    sigma: float = 4.0
    # "scratch": the student's conv stem learns from pixels; "teacher": the student starts from the AGN's
    # frozen first blocks (stride 4), so the part that must fit a few hundred images is smaller.
    student_stem: str = "scratch"
    stem_block: int = 2  # the AGN block whose output feeds a "teacher" stem (EfficientNet-Lite0: stride 4)
    # Share of training images the student sees with a synthetic anomaly (training.corruption) while it
    # must still give the teacher's features of the clean image: a denoising student. 0 turns it off.
    # Chosen on pasted defects over held-out good images of bottle and DeepPCB (README, Generalization).
    denoise: float = 0.5
    # ViT-S/14 blocks (0-based) whose tokens are one more target at stride 16; () = the CNN teacher alone
    vit_layers: tuple[int, ...] = (5, 8)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class CrossScaleAttention(nn.Module):
    """Every token (all scales) queries keys/values from the coarse scales plus the pooled finest scale."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        m = ctx.shape[1]
        hd = d // self.heads
        q = self.q(x).view(n, t, self.heads, hd).transpose(1, 2)  # (N, heads, T, hd)
        k, v = self.kv(ctx).view(n, m, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (N, heads, M, hd) each
        attn = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)  # (N, heads, T, M)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CrossScaleAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, context_tokens(h, grids))
        return x + self.mlp(self.ln2(x))


def context_tokens(tokens: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
    """Keys/values: the finest grid average-pooled 2x, the coarser grids as they are."""
    (h0, w0) = grids[0]
    fine, coarse = tokens[:, : h0 * w0], tokens[:, h0 * w0 :]
    n, _, d = fine.shape
    fine = fine.transpose(1, 2).reshape(n, d, h0, w0)
    fine = F.avg_pool2d(fine, 2).flatten(2).transpose(1, 2)  # (N, h0*w0/4, d)
    return torch.cat([fine, coarse], dim=1)


class Student(nn.Module):
    """Image -> features at the AGN's three resolutions, related across scales by attention."""

    def __init__(
        self,
        cfg: GTransConfig,
        teacher_channels: list[int],
        stem_channels: int | None = None,
        vit_channels: int = 0,
    ) -> None:
        super().__init__()
        w = cfg.stem_widths
        if stem_channels is None:  # pixels in: learn the stride-4 stem
            self.stem = nn.Sequential(conv_bn_relu(3, w[0], 2), conv_bn_relu(w[0], w[1], 2))
        else:  # stride-4 AGN features in: a 1x1 projection to the stem width
            self.stem = nn.Sequential(
                nn.Conv2d(stem_channels, w[1], 1, bias=False), nn.BatchNorm2d(w[1]), nn.ReLU(inplace=True)
            )
        self.down = nn.ModuleList(
            [nn.Sequential(conv_bn_relu(w[1], w[2], 2), conv_bn_relu(w[2], w[2]))]  # stride 8
            + [
                nn.Sequential(conv_bn_relu(w[i], w[i + 1], 2), conv_bn_relu(w[i + 1], w[i + 1]))
                for i in (2, 3)
            ]
        )
        self.to_tokens = nn.ModuleList([nn.Conv2d(c, cfg.dim, 1) for c in w[2:]])
        self.grids = [(cfg.image_size // s, cfg.image_size // s) for s in (8, 16, 32)]
        self.pos = nn.ParameterList([nn.Parameter(torch.zeros(1, h * ww, cfg.dim)) for h, ww in self.grids])
        for p in self.pos:
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.dim)
        self.heads = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(cfg.dim + c, cfg.dim, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cfg.dim, ct, 1),
                )
                for c, ct in zip(w[2:], teacher_channels, strict=True)
            ]
        )
        # the ViT teacher's tokens, regressed from the stride-16 tokens and conv features (VIT_SCALE)
        self.vit_head = (
            nn.Sequential(
                nn.Conv2d(cfg.dim + w[2 + VIT_SCALE], cfg.dim, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(cfg.dim, vit_channels, 1),
            )
            if vit_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.stem(x)
        convs = []
        for down in self.down:
            f = down(f)
            convs.append(f)  # strides 8, 16, 32
        tokens = torch.cat(
            [
                proj(c).flatten(2).transpose(1, 2) + pos
                for proj, c, pos in zip(self.to_tokens, convs, self.pos, strict=True)
            ],
            dim=1,
        )  # (N, sum(h*w), dim)
        for block in self.blocks:
            tokens = block(tokens, self.grids)
        tokens = self.ln(tokens)
        outs, start = [], 0
        joined = []  # per scale: its tokens as a grid beside its conv features
        for (h, w), c, head in zip(self.grids, convs, self.heads, strict=True):
            t = tokens[:, start : start + h * w].transpose(1, 2).reshape(-1, tokens.shape[-1], h, w)
            start += h * w
            joined.append(torch.cat([t, c], dim=1))
            outs.append(head(joined[-1]))  # (N, C_teacher, h, w)
        if self.vit_head is not None:
            outs.append(self.vit_head(joined[VIT_SCALE]))  # (N, C_vit, h16, w16)
        return outs


class GTrans(TrainableModel):
    def __init__(self, config: GTransConfig) -> None:
        super().__init__()
        self.config = config
        self.teacher = EfficientNetLite0()
        self.teacher.requires_grad_(False)
        if config.student_stem not in ("scratch", "teacher"):
            raise ValueError(f"student_stem must be 'scratch' or 'teacher', got {config.student_stem!r}")
        if config.student_stem == "teacher" and self.teacher.block_stride(config.stem_block) != 4:
            raise ValueError(f"stem_block {config.stem_block} is not at stride 4; the student's stem is")
        channels = [self.teacher.block_channels(b) for b in config.teacher_blocks]
        self.vit = ViTPatches(VIT_SIZE, tuple(config.vit_layers)) if config.vit_layers else None
        vit_channels = self.vit.dim if self.vit is not None else 0
        # channel statistics of each target (AGN blocks, then the ViT), fitted by fit_teacher_stats
        for i, c in enumerate(channels + ([vit_channels] if vit_channels else [])):
            self.register_buffer(f"t_mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"t_std{i}", torch.ones(1, c, 1, 1))
        stem_channels = self.teacher.block_channels(config.stem_block) if self.teacher_stem else None
        self.student = Student(config, channels, stem_channels, vit_channels)
        size = config.image_size
        self.head = MapHead(size, size, sigma=config.sigma)

    @property
    def int8_keep_float(self) -> tuple[str, ...]:
        """The score *is* the teacher-student difference, so int8 noise in a frozen teacher reads as anomaly
        (measured: map r 0.59 with the CNN teacher quantised, 0.9996 without). Export keeps them in float."""
        return ("teacher", "vit") if self.vit is not None else ("teacher",)

    def train(self, mode: bool = True) -> GTrans:
        super().train(mode)
        self.teacher.eval()  # frozen AGN: BatchNorm always in inference mode
        if self.vit is not None:
            self.vit.eval()
        return self

    @property
    def teacher_stem(self) -> bool:
        return self.config.student_stem == "teacher"

    def agn_blocks(self) -> list[int]:
        """The AGN blocks one teacher pass computes: the student's input block first when it has one."""
        return ([self.config.stem_block] if self.teacher_stem else []) + list(self.config.teacher_blocks)

    def standardise(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(f - getattr(self, f"t_mean{i}")) / getattr(self, f"t_std{i}") for i, f in enumerate(raw)]

    @torch.no_grad()
    def vit_targets(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT teacher's tokens of a 224 px copy of ``x``, on the student's stride-16 grid."""
        if self.vit is None:
            raise RuntimeError("this GTrans has no ViT teacher (vit_layers is empty)")
        t = self.vit(F.interpolate(x, size=(VIT_SIZE, VIT_SIZE), mode="bilinear", align_corners=False))
        grid = self.student.grids[VIT_SCALE]
        if tuple(t.shape[-2:]) != grid:
            t = F.interpolate(t, size=grid, mode="bilinear", align_corners=False)
        return t

    @torch.no_grad()
    def raw_targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One pass of the frozen teachers: [the AGN stem (teacher stem only)] + the AGN blocks + [ViT]."""
        feats = list(self.teacher(x, self.agn_blocks()))
        return feats + ([self.vit_targets(x)] if self.vit is not None else [])

    @torch.no_grad()
    def agn(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One AGN pass: (the student's input, the standardised targets per scale)."""
        feats = self.raw_targets(x)
        if self.teacher_stem:
            return feats[0], self.standardise(feats[1:])
        return x, self.standardise(feats)

    @torch.no_grad()
    def agn_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher-stem student's input for images the cache does not hold (corrupted ones)."""
        return self.teacher(x, [self.config.stem_block])[0]

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.agn(x)[1]

    @torch.no_grad()
    def fit_teacher_stats(self, raw_feats: list[torch.Tensor]) -> None:
        """Set the per-channel mean/std of the AGN features from good images (un-standardised features)."""
        for i, f in enumerate(raw_feats):
            getattr(self, f"t_mean{i}").copy_(f.mean(dim=(0, 2, 3), keepdim=True))
            getattr(self, f"t_std{i}").copy_(f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def scale_maps(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per scale (N, 1, h, w): distance term + cos_weight * direction term."""
        maps = []
        for s, t in zip(student, teacher, strict=True):
            dist = (s - t).pow(2).mean(dim=1, keepdim=True)
            direction = 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-6).unsqueeze(1)
            maps.append(dist + self.config.cos_weight * direction)
        return maps

    def load_pretrained(self) -> None:
        self.teacher.load_imagenet()
        if self.vit is not None:
            self.vit.load_pretrained()

    @torch.no_grad()
    def cache_frozen(self, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor] | None:
        """[the student's input (teacher stem only)] + the standardised targets per scale; fits the teacher's
        channel statistics on the way, from the same pass."""
        raw = [self.raw_targets(x[i : i + batch]) for i in range(0, len(x), batch)]
        per_block = [torch.cat(parts) for parts in zip(*raw, strict=True)]
        stem = per_block[:1] if self.teacher_stem else []
        targets = per_block[len(stem) :]
        self.fit_teacher_stats(targets)
        return stem + self.standardise(targets)

    def batch_loss(
        self,
        x: torch.Tensor,
        cached: list[torch.Tensor] | None,
        idx: torch.Tensor,
        corrupted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``corrupted`` (a denoising student) is what the student sees instead of images ``idx``, while the
        teacher's targets stay those of the clean images."""
        if cached is None:
            return self.training_loss(x[idx])
        n_stem = 1 if self.teacher_stem else 0
        student_input = cached[0][idx] if n_stem else None
        if corrupted is not None:
            student_input = self.agn_stem(corrupted) if n_stem else corrupted
        return self.training_loss(
            x[idx], teacher=[c[idx] for c in cached[n_stem:]], student_input=student_input
        )

    def training_loss(
        self,
        x: torch.Tensor,
        teacher: list[torch.Tensor] | None = None,
        student_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean map over scales; ``teacher`` and ``student_input`` come from a cache of ``agn`` when given."""
        if teacher is None:
            student_input, teacher = self.agn(x)
        elif student_input is None:
            student_input = x
        maps = self.scale_maps(self.student(student_input), teacher)
        return torch.stack([m.mean() for m in maps]).mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student_input, teacher = self.agn(x)
        maps = self.scale_maps(self.student(student_input), teacher)
        size = maps[0].shape[-2:]
        combined = torch.stack(
            [
                m
                if m.shape[-2:] == size
                else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps
            ]
        ).mean(dim=0)  # (N, 1, H/8, W/8)
        return self.head(combined)
