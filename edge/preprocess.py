"""The one preprocessing definition shared by training, export and the daemon.

Only the geometric part (resize, colour order) happens outside the model: the daemon does it with OpenCV
and the exported ONNX graph takes the result as uint8 NHWC. Normalisation (mean/std) is inside the graph,
so the device never has to agree with training on float maths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Tuple

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a camera frame becomes the model's uint8 input."""

    height: int = 256
    width: int = 256
    color_order: str = "RGB"  # channel order of the model input; OpenCV frames are BGR
    mean: Tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: Tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"input size must be at least 16x16, got {self.height}x{self.width}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Preprocess:
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            color_order=str(data["color_order"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )

    def frame_to_input(self, frame_bgr: np.ndarray, prefiltered: bool = False) -> np.ndarray:
        """BGR uint8 frame of any size -> uint8 HxWx3 in the model's size and colour order.

        Shrinking uses INTER_AREA, the anti-aliased resize training used. ``prefiltered`` says the frame
        was already low-passed by a JPEG DCT-domain downscale (``Frame.image_for``): a shrink of less than
        2x left after that uses INTER_LINEAR, an eighth of the cost (0.16 against 1.3 ms, 450 -> 256 px).
        On the bottle test set as JPEG it stays as close to a full decode + INTER_AREA as INTER_AREA does
        (mean 0.37 against 0.27 grey levels, below the 0.63 that JPEG itself changes; largest GTrans score
        change 0.076 against 0.087, on a 2.9 score range; AUROC unchanged).
        """
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        if frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 frame, got {frame_bgr.dtype}")
        h, w = frame_bgr.shape[:2]
        if (h, w) != (self.height, self.width):
            shrinking = h > self.height or w > self.width
            mild = h < 2 * self.height and w < 2 * self.width
            interp = cv2.INTER_AREA if shrinking and not (prefiltered and mild) else cv2.INTER_LINEAR
            frame_bgr = cv2.resize(frame_bgr, (self.width, self.height), interpolation=interp)
        if self.color_order == "RGB":
            return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(frame_bgr)
