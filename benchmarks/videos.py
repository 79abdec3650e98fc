"""The benchmark's camera footage: a looping clip of generated parts, or a dataset's test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def generated_video(path: Path, frame_size: int, n_frames: int = 60, defect_every: int = 10) -> Path:
    """A looping clip of generated parts (every ``defect_every``-th defective), ``frame_size`` square."""
    from training.synthetic import part_sequence, write_video

    frames, _ = part_sequence(n_frames, defect_every, size=frame_size, seed=11)
    return write_video(path, frames, fps=25.0)


def dataset_video(path: Path, data: Path, max_frames: int = 200) -> Path:
    """The dataset's test images (good and defective, their own resolution) as one clip."""
    import cv2

    from training.data import MVTecCategory
    from training.synthetic import write_video

    items = MVTecCategory(data).test_items()[:max_frames]
    frames = []
    for item in items:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot read test image {item.path}; replace or remove it")
        if frames and image.shape != frames[0].shape:
            image = cv2.resize(image, (frames[0].shape[1], frames[0].shape[0]), interpolation=cv2.INTER_AREA)
        frames.append(image)
    return write_video(path, frames, fps=25.0)


def video_info(path: Path) -> dict[str, Any]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return {
            "path": str(path),
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "codec": "MJPG",
        }
    finally:
        cap.release()
