"""Real-texture categories cut from scikit-image's bundled photographs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("skimage", reason="scikit-image (a dev extra) ships the photographs")

from training.data import MVTecCategory  # noqa: E402
from training.real_textures import PHOTOS, crops, photograph, write_category  # noqa: E402


def test_photographs_are_real_grey_images() -> None:
    for name in PHOTOS:
        photo = photograph(name)
        assert photo.dtype == np.uint8 and photo.ndim == 2 and min(photo.shape) >= 256
        assert photo.std() > 10  # texture, not a blank stand-in
    with pytest.raises(ValueError, match="unknown photograph"):
        photograph("marble")


def test_crops_come_only_from_the_region_given() -> None:
    region = np.full((200, 300), 50, np.uint8)
    out = crops(region, 5, np.random.default_rng(0), size=160)
    assert all(c.shape == (160, 160, 3) for c in out)
    assert all(abs(float(c.mean()) - 50) < 10 for c in out)  # gain and light vary a little, not the source
    with pytest.raises(ValueError, match="too small"):
        crops(region[:100], 1, np.random.default_rng(0), size=160)


def test_category_layout_masks_cover_exactly_the_pasted_pixels(tmp_path: Path) -> None:
    root = write_category(tmp_path, "gravel", n_train=4, n_test=3, seed=1)
    category = MVTecCategory(root)
    assert len(category.train_images()) == 4
    items = category.test_items()
    assert [i.defect_type for i in items].count("good") == 3 and len(items) == 6
    for item in items:
        if item.mask_path is None:
            continue
        mask = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        assert 0 < mask.mean() < 0.2
