"""``edge-video FOLDER OUT``: a test video from a folder of images, for ``edge-run`` to play as a camera.

    edge-video line-photos/ line.avi --fps 5

The images are taken in name order (PNG, JPEG, BMP, TIFF); any whose size differs from the first is resized
to it. The writer is the one the tests and the walk-through use (:func:`training.synthetic.write_video`:
MJPG, which OpenCV reads back everywhere; an .avi name is the safest, .mp4 works too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from training.synthetic import write_video

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_frames(folder: Path) -> list[np.ndarray]:
    """The folder's images in name order, BGR, all at the first one's size."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    frames: list[np.ndarray] = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path} is not an image OpenCV can read")
        if frames and image.shape[:2] != frames[0].shape[:2]:
            image = cv2.resize(image, (frames[0].shape[1], frames[0].shape[0]), interpolation=cv2.INTER_AREA)
        frames.append(image)
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-video", description="Make a test video (a camera for edge-run) from a folder of images."
    )
    p.add_argument("folder", type=Path, help="folder of images, taken in name order")
    p.add_argument("out", type=Path, help="the video to write (.avi recommended; .mp4 works)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    args = p.parse_args(argv)
    if not args.fps > 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    try:
        if not args.folder.is_dir():
            raise ValueError(f"{args.folder} is not a folder")
        frames = read_frames(args.folder)
        if not frames:
            raise ValueError(f"{args.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        write_video(args.out, frames, fps=args.fps)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"edge-video: error: {exc}", file=sys.stderr)
        return 2
    h, w = frames[0].shape[:2]
    print(f"edge-video: wrote {args.out}: {len(frames)} frames of {w}x{h} at {args.fps:g} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
