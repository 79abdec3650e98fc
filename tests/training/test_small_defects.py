"""Small structural defects: drawn at the file's size, on edges or flat areas, resized like a frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from training.small_defects import SMALL_KINDS, draw_small_defect, drawn_set


def _board(size: int = 400) -> np.ndarray:
    """Black and white line art: two thick traces and a pad, like a binarised PCB crop."""
    img = np.zeros((size, size, 3), np.uint8)
    cv2.rectangle(img, (40, 60), (360, 110), (255, 255, 255), -1)
    cv2.rectangle(img, (40, 250), (360, 300), (255, 255, 255), -1)
    cv2.circle(img, (200, 180), 30, (255, 255, 255), -1)
    return img


@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_a_small_defect_changes_only_its_mask_which_stays_small(kind: str) -> None:
    img = _board()
    out, mask = draw_small_defect(img, kind, np.random.default_rng(3))
    changed = (out != img).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()
    assert mask.mean() < 0.01  # a few pixels of a 400 px image, not a CutPaste patch
    assert np.abs(out.astype(float) - img)[mask].mean() >= 20  # visibly different where it is drawn


def test_nicks_and_bridges_sit_on_edges_and_specks_in_flat_areas() -> None:
    img = _board()
    edges = cv2.dilate(cv2.Canny(img[:, :, 0], 50, 150), np.ones((9, 9), np.uint8)) > 0
    rng = np.random.default_rng(0)
    for kind in ("nick", "bridge"):
        for _ in range(5):
            _, mask = draw_small_defect(img, kind, rng)
            assert (mask & edges).any(), kind
    _, mask = draw_small_defect(img, "speck", rng)
    assert mask.mean() < 0.01


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown small defect kind 'dent'"):
        draw_small_defect(_board(), "dent", np.random.default_rng(0))


def test_the_set_is_resized_like_frames_and_replays_from_its_seed(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.roll(_board(), 20 * i, axis=1))
    pre = Preprocess(
        height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="letterbox"
    )
    images, masks, labels, types = drawn_set(paths, pre, per_image=2, seed=1)
    assert images.shape == (9, 64, 64, 3) and masks.shape == (9, 64, 64)
    assert labels.tolist() == [0, 0, 0] + [1] * 6
    assert types[:3] == ["good"] * 3 and set(types[3:]) == set(SMALL_KINDS)
    assert not masks[:3].any() and all(m.any() for m in masks[3:])
    assert (images[0] == pre.frame_to_input(cv2.imread(str(paths[0])))).all()
    again = drawn_set(paths, pre, per_image=2, seed=1)
    assert (again[0] == images).all() and (again[1] == masks).all()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match="cannot read image"):
        drawn_set([tmp_path / "gone.png"], pre)


def test_the_defect_set_by_name_is_the_same_draw_and_an_unknown_name_is_refused(tmp_path: Path) -> None:
    from training.pasted_defects import defect_set

    path = tmp_path / "0.png"
    cv2.imwrite(str(path), _board())
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    by_name = defect_set("small", [path], pre, per_image=2, seed=4)
    assert (by_name[1] == drawn_set([path], pre, per_image=2, seed=4)[1]).all()
    assert defect_set("cutpaste", [path], pre, per_image=2)[3][1:] == ["patch", "scar"]
    with pytest.raises(ValueError, match="unknown defect set 'dents'"):
        defect_set("dents", [path], pre)


def test_the_native_set_is_the_same_draw_at_the_files_own_size(tmp_path: Path) -> None:
    from training.pasted_defects import defect_set

    path = tmp_path / "0.png"
    cv2.imwrite(str(path), _board(200))
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    images, masks, labels, types = defect_set("small", [path], pre, per_image=2, seed=4, native=True)
    assert [i.shape for i in images] == [(200, 200, 3)] * 3 and [m.shape for m in masks] == [(200, 200)] * 3
    assert (images[0] == cv2.imread(str(path))).all() and not masks[0].any()
    resized = drawn_set([path], pre, per_image=2, seed=4)
    for i in (1, 2):  # the resized set's masks are these masks after the model's resize
        cover = pre.fit(masks[i].astype(np.uint8) * 255, cv2.INTER_AREA)
        assert (resized[1][i] == (cover >= 64)).all()
        assert (resized[0][i] == pre.frame_to_input(images[i])).all()
