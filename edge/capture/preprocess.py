"""The one preprocessing definition shared by training, export and the daemon.

Only the geometric part (resize, colour order) happens outside the model: the daemon does it with OpenCV
and the exported ONNX graph takes the result as uint8 NHWC. Normalisation (mean/std) is inside the graph,
so the device never has to agree with training on float maths.

Geometry: ``letterbox`` (the default for new models) scales a frame by one factor so its longer side fits
the model input and pads the rest with black, so a part keeps its shape whatever the camera's aspect
ratio and a thin crack stays thin; ``stretch`` (bundles made before letterbox existed) resizes each axis
on its own. ``content_box`` says where the frame landed, so maps are cropped back to the frame and the
padding never scores.

``tiling`` (:mod:`edge.capture.tiling`), when set, replaces the resize altogether: the frame region is scaled
by the tiling's factor and cut into tiles of the model's input size (``tiles_of``), so small defects keep
their pixels; whole-image bundles have none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from edge.capture.tiling import TileGrid, Tiling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("stretch", "letterbox")
Box = Tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Preprocess:
    """How a camera frame becomes the model's uint8 input."""

    height: int = 256
    width: int = 256
    color_order: str = "RGB"  # channel order of the model input; OpenCV frames are BGR
    mean: Tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: Tuple[float, float, float] = field(default=IMAGENET_STD)
    resize: str = "stretch"  # "stretch" or "letterbox"; see the module docstring
    tiling: Optional[Tiling] = None  # tiles at a fixed scale instead of one resized image

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"input size must be at least 16x16, got {self.height}x{self.width}")
        if self.tiling is not None and (self.tiling.tile, self.tiling.tile) != (self.height, self.width):
            raise ValueError(
                f"tile size {self.tiling.tile} must equal the model input {self.height}x{self.width}"
            )

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        if self.tiling is None:  # whole-image checkpoints keep the keys they always had
            del out["tiling"]
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Preprocess:
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            color_order=str(data["color_order"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            resize=str(data.get("resize", "stretch")),
            tiling=Tiling.from_dict(data.get("tiling")),
        )

    def tiles_of(self, region_bgr: np.ndarray, region_hw: Tuple[int, int]) -> Tuple[TileGrid, np.ndarray]:
        """A tiled model's inputs for one region: its grid and uint8 (N, tile, tile, 3) in colour order.

        ``region_hw`` is the region's size in camera pixels; ``region_bgr`` may be smaller (a JPEG decoded
        at a reduced scale) and is scaled to the grid's size all the same."""
        if self.tiling is None:
            raise ValueError("tiles_of needs a tiled preprocessing")
        if region_bgr.ndim == 2:
            region_bgr = cv2.cvtColor(region_bgr, cv2.COLOR_GRAY2BGR)
        if region_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 frame, got {region_bgr.dtype}")
        grid = self.tiling.grid(*region_hw)
        scaled = grid.scale_region(region_bgr)
        if self.color_order == "RGB":
            scaled = cv2.cvtColor(scaled, cv2.COLOR_BGR2RGB)
        return grid, grid.cut(scaled)

    def content_box(self, h: int, w: int) -> Box:
        """Where an h x w frame lands in the model input, (x, y, width, height) in model pixels."""
        if self.resize == "stretch" or h <= 0 or w <= 0:
            return (0, 0, self.width, self.height)
        scale = min(self.width / w, self.height / h)
        cw = min(self.width, max(1, int(round(w * scale))))
        ch = min(self.height, max(1, int(round(h * scale))))
        return ((self.width - cw) // 2, (self.height - ch) // 2, cw, ch)

    def fit(self, image: np.ndarray, interpolation: int) -> np.ndarray:
        """The geometric step alone, for frames and masks alike: resize into the content box, pad black."""
        h, w = image.shape[:2]
        x, y, cw, ch = self.content_box(h, w)
        if (h, w) != (ch, cw):
            image = cv2.resize(image, (cw, ch), interpolation=interpolation)
        if (cw, ch) == (self.width, self.height):
            return image
        return cv2.copyMakeBorder(
            image, y, self.height - ch - y, x, self.width - cw - x, cv2.BORDER_CONSTANT, value=0
        )

    def frame_to_input(self, frame_bgr: np.ndarray, prefiltered: bool = False) -> np.ndarray:
        """BGR uint8 frame of any size -> uint8 HxWx3 in the model's size and colour order.

        Shrinking uses INTER_AREA, the anti-aliased resize training used. ``prefiltered`` says the frame
        was already low-passed by a JPEG DCT-domain downscale (``Frame.image_for``): a shrink of less than
        2x left after that uses INTER_LINEAR, which stays as close to a full decode + INTER_AREA as
        INTER_AREA does (benchmarks/README.md, "Design measurements").
        """
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        if frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 frame, got {frame_bgr.dtype}")
        h, w = frame_bgr.shape[:2]
        _, _, cw, ch = self.content_box(h, w)
        if (h, w) != (ch, cw) or (cw, ch) != (self.width, self.height):
            shrinking = h > ch or w > cw
            mild = h < 2 * ch and w < 2 * cw
            interp = cv2.INTER_AREA if shrinking and not (prefiltered and mild) else cv2.INTER_LINEAR
            frame_bgr = self.fit(frame_bgr, interp)
        if self.color_order == "RGB":
            return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(frame_bgr)
