"""Large faint defects: soft-edged, 10-30 % of the image, low contrast, changing nothing far outside."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from training.uneven_defects import MIN_CHANGE, UNEVEN_KINDS, draw_uneven_defect


def _texture(size: int = 240) -> np.ndarray:
    """A woven-looking grey texture, detail everywhere: smears and dents have something to move."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    grey = 128 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0) + 20 * np.sin((x + y) / 7.0)
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", UNEVEN_KINDS)
def test_an_uneven_defect_is_large_faint_and_local(kind: str) -> None:
    img = _texture()
    out, mask = draw_uneven_defect(img, kind, np.random.default_rng(5))
    assert 0.05 < mask.mean() < 0.35  # a large region, the soft edge's half-weight line inside the ellipse
    diff = np.abs(out.astype(np.float32) - img).mean(axis=2)
    assert diff[mask].mean() >= MIN_CHANGE  # faint, never invisible
    assert diff[mask].mean() < 60  # not a full-contrast paste
    far = cv2.dilate(mask.astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
    assert far.any() and diff[far].max() <= 1.0  # the feathered edge ends; nothing changes far from it


def test_a_shade_on_a_flat_image_still_changes_it_and_the_draw_replays_from_its_seed() -> None:
    flat = np.full((200, 300, 3), 90, np.uint8)
    out, mask = draw_uneven_defect(flat, "shade", np.random.default_rng(1))
    assert np.abs(out.astype(np.float32) - flat)[mask].mean() >= 12 * 0.5  # at least half its amplitude
    again, mask2 = draw_uneven_defect(flat, "shade", np.random.default_rng(1))
    assert (again == out).all() and (mask2 == mask).all()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown uneven defect kind 'nick'"):
        draw_uneven_defect(_texture(), "nick", np.random.default_rng(0))


def test_the_uneven_set_by_name_resizes_like_frames_and_scores_natively(tmp_path: Path) -> None:
    from training.pasted_defects import defect_set

    path = tmp_path / "0.png"
    cv2.imwrite(str(path), _texture(160))
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    images, masks, labels, types = defect_set("uneven", [path], pre, per_image=3, seed=2)
    assert images.shape == (4, 64, 64, 3) and labels.tolist() == [0, 1, 1, 1]
    assert types == ["good", *UNEVEN_KINDS] and not masks[0].any() and masks[1:].any(axis=(1, 2)).all()
    native = defect_set("uneven", [path], pre, per_image=3, seed=2, native=True)
    assert [m.shape for m in native[1]] == [(160, 160)] * 4
    cover = pre.fit(native[1][1].astype(np.uint8) * 255, cv2.INTER_AREA)
    assert (masks[1] == (cover >= 64)).all()  # the same draw, before and after the model's resize
