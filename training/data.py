"""Images for training and evaluation: the MVTec AD layout and plain folders of good parts.

MVTec AD layout (one category)::

    <root>/train/good/*.png                     defect-free training images
    <root>/test/<type>/*.png                    'good' or one folder per defect type
    <root>/ground_truth/<type>/<stem>_mask.png  one mask per defect image ('good' has none)

A line engineer who only has photos of good parts can instead point training at a plain folder of them.

Every image goes through ``edge.capture.preprocess.Preprocess.frame_to_input``, the same resize and colour
order the
daemon applies to camera frames, so training never sees pixels the device would not produce.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import TileGrid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
MASK_SUFFIX = "_mask"

LAYOUT_HINT = "expected an MVTec AD category: train/good/, test/<type>/, ground_truth/<type>/<stem>_mask.png"


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty or unreadable; the message names the path."""


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name; hidden files and other suffixes ignored."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(
            f"image folder {folder} does not exist; expected a folder of {'/'.join(IMAGE_SUFFIXES)} images"
        )
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; expected a folder of images")
    images = sorted(p for p in folder.iterdir() if _is_image(p))
    if not images:
        raise DatasetError(
            f"image folder {folder} contains no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return images


def read_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image as uint8 HxWx3 at the model size and in its colour order (the daemon's preprocessing)."""
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise DatasetError(
            f"cannot read image {path}: the file is missing, corrupt or not an image; replace or remove it"
        )
    return pre.frame_to_input(frame)


def read_mask(path: Path | None, pre: Preprocess) -> np.ndarray:
    """A ground-truth mask as bool HxW at the model size; all False for a good image (``path`` None).

    It goes through the image's geometry (``Preprocess.fit``); nearest-neighbour resizing keeps it
    binary; any non-zero pixel is defective.
    """
    if path is None:
        return np.zeros((pre.height, pre.width), dtype=bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}: the file is missing, corrupt or not an image")
    return pre.fit(mask, cv2.INTER_NEAREST) > 0


@dataclass(frozen=True)
class TestItem:
    """One evaluation image: its defect type ('good' for normal) and its mask (None for good images)."""

    __test__ = False  # not a pytest test class despite the name

    path: Path
    defect_type: str
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


class MVTecCategory:
    """One category folder in MVTec AD layout (e.g. ``mvtec/bottle``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; {LAYOUT_HINT}")

    @property
    def name(self) -> str:
        return self.root.name

    def train_images(self) -> list[Path]:
        return list_images(self.root / "train" / GOOD)

    @property
    def test_types(self) -> list[str]:
        """Every folder under test/, 'good' first, then the defect types by name."""
        test = self.root / "test"
        if not test.is_dir():
            raise DatasetError(f"test folder {test} does not exist; {LAYOUT_HINT}")
        names = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DatasetError(f"test folder {test} has no sub-folders; {LAYOUT_HINT}")
        return sorted(names, key=lambda n: (n != GOOD, n))

    @property
    def defect_types(self) -> list[str]:
        return [t for t in self.test_types if t != GOOD]

    def mask_for(self, image: Path, defect_type: str) -> Path:
        """The ground-truth mask of a defect image; DatasetError naming the expected path when it is
        missing."""
        folder = self.root / "ground_truth" / defect_type
        stem = image.stem + MASK_SUFFIX
        for suffix in (".png", *IMAGE_SUFFIXES):
            candidate = folder / (stem + suffix)
            if candidate.is_file():
                return candidate
        raise DatasetError(
            f"defect image {image} has no ground-truth mask: expected {folder / (stem + '.png')}; "
            "add the mask or move the image out of test/"
        )

    def test_items(self) -> list[TestItem]:
        items: list[TestItem] = []
        for defect_type in self.test_types:
            for image in list_images(self.root / "test" / defect_type):
                mask = None if defect_type == GOOD else self.mask_for(image, defect_type)
                items.append(TestItem(path=image, defect_type=defect_type, mask_path=mask))
        return items

    def __repr__(self) -> str:
        return f"MVTecCategory({str(self.root)!r})"


def good_images(data: Path) -> list[Path]:
    """Good training images: ``data/train/good`` for an MVTec layout, else the folder itself."""
    data = Path(data)
    if not data.is_dir():
        raise DatasetError(
            f"data folder {data} does not exist; expected an MVTec category or a folder of good images"
        )
    train_good = data / "train" / GOOD
    return list_images(train_good if train_good.is_dir() else data)


def split_train_val(
    paths: Sequence[Path], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """A seeded split of good images into training and validation (for score calibration), both sorted.

    The split depends only on the sorted paths and the seed, so the same folder always splits the same way.
    With at least two images and a non-zero fraction, validation gets at least one and training keeps one.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(Path(p) for p in paths)
    n = len(ordered)
    if n == 0:
        raise DatasetError("no images to split into training and validation")
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the images' names (relative to their common folder) and byte sizes.

    Cheap (no file reads) and independent of where the dataset is mounted; it tells a cache or a
    checkpoint that the training set changed, not that one pixel did.
    """
    ordered = sorted(Path(p).resolve() for p in paths)
    if not ordered:
        raise DatasetError("cannot fingerprint an empty list of images")
    base = Path(os.path.commonpath([str(p.parent) for p in ordered]))
    digest = hashlib.sha256()
    for p in ordered:
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise DatasetError(f"cannot fingerprint image {p}: {exc.strerror or exc}") from exc
        digest.update(f"{p.relative_to(base).as_posix()}\0{size}\n".encode())
    return digest.hexdigest()


class ImageFolderDataset(Dataset):
    """Images read on demand as torch uint8 HxWx3 (the model's input layout); for sets too big to cache."""

    def __init__(self, paths: Sequence[Path], pre: Preprocess) -> None:
        self.paths = [Path(p) for p in paths]
        self.pre = pre
        if not self.paths:
            raise DatasetError("ImageFolderDataset needs at least one image")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.paths[index], self.pre))


def load_images(
    paths: Sequence[Path], pre: Preprocess, progress: bool = False, sizes: list[tuple[int, int]] | None = None
) -> np.ndarray:
    """All images as one uint8 (N, H, W, 3) array; for small sets held in memory (MVTec: ~200 per category).

    ``sizes``, when given, receives each file's own (height, width), which ``Preprocess.content_box`` maps
    to where the image landed in the model input.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no images to load")
    out = np.empty((len(paths), pre.height, pre.width, 3), dtype=np.uint8)
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="loading images", unit="img")
    for i, path in enumerate(iterator):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DatasetError(
                f"cannot read image {path}: the file is missing, corrupt or not an image; replace or remove "
                f"it"
            )
        if sizes is not None:
            sizes.append(frame.shape[:2])
        out[i] = pre.frame_to_input(frame)
    return out


def load_test_set(
    category: MVTecCategory | Path, pre: Preprocess, sizes: list[tuple[int, int]] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[Path]]:
    """The whole test split: images (N,H,W,3) uint8, masks (N,H,W) bool, labels (N,) int (1 = defect),
    defect types and paths, in the order of ``MVTecCategory.test_items``; ``sizes`` as in ``load_images``."""
    if not isinstance(category, MVTecCategory):
        category = MVTecCategory(category)
    items = category.test_items()
    paths = [item.path for item in items]
    images = load_images(paths, pre, sizes=sizes)
    masks = np.stack([read_mask(item.mask_path, pre) for item in items])
    labels = np.array([int(item.is_anomalous) for item in items], dtype=np.int64)
    types = [item.defect_type for item in items]
    return images, masks, labels, types, paths


@dataclass
class TiledImages:
    """Every tile of a list of images (a tiled preprocessing): the tiles in image order, which image each
    came from, and each image's grid, so per-tile maps can be stitched back per image."""

    tiles: np.ndarray  # uint8 (M, tile, tile, 3)
    owner: np.ndarray  # (M,) index of the image each tile came from
    grids: list[TileGrid]

    def stitched(self, maps: np.ndarray) -> list[np.ndarray]:
        """Per-tile maps (M, tile, tile) -> one map per image at its scaled size."""
        out, start = [], 0
        for grid in self.grids:
            out.append(grid.stitch(maps[start : start + len(grid)]))
            start += len(grid)
        return out


def load_tiles(
    paths: Sequence[Path], pre: Preprocess, masks: Sequence[Path | None] | None = None
) -> tuple[TiledImages, list[np.ndarray]]:
    """Every image cut into tiles as the daemon cuts a camera region (``Preprocess.tiles_of``), and, with
    ``masks``, each image's ground-truth mask at its scaled size (bool; all False for None)."""
    if pre.tiling is None:
        raise ValueError("load_tiles needs a tiled preprocessing")
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no images to load")
    tiles, owners, grids, scaled_masks = [], [], [], []
    for i, path in enumerate(paths):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DatasetError(
                f"cannot read image {path}: the file is missing, corrupt or not an image; replace or remove "
                f"it"
            )
        grid, cut = pre.tiles_of(frame, frame.shape[:2])
        tiles.append(cut)
        owners.append(np.full(len(cut), i, np.int64))
        grids.append(grid)
        if masks is not None:
            scaled_masks.append(_scaled_mask(masks[i], grid))
    return TiledImages(np.concatenate(tiles), np.concatenate(owners), grids), scaled_masks


def _scaled_mask(path: Path | None, grid: TileGrid) -> np.ndarray:
    if path is None:
        return np.zeros(grid.scaled_hw, dtype=bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}: the file is missing, corrupt or not an image")
    sh, sw = grid.scaled_hw
    if mask.shape != (sh, sw):
        mask = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def load_samples(paths: Sequence[Path], pre: Preprocess) -> np.ndarray:
    """Training samples: each image at the model size, or, for a tiled preprocessing, every tile of every
    image (the tiles are the samples, for every model kind)."""
    if pre.tiling is None:
        return load_images(paths, pre)
    return load_tiles(paths, pre)[0].tiles
