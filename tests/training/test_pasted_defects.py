"""Pasted defects: each paste changes only the pixels its mask names, and by enough to be a defect; the set
lines up images, masks and labels, so a model that sees the change scores 1.0 and one that does not, ~0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.pasted_defects import KINDS, paste_defect, pasted_set, score_pasted
from training.small_defects import MIN_CHANGE
from training.synthetic import good_part


def goods(n: int = 6, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([good_part(rng, size) for _ in range(n)])


@pytest.mark.parametrize("kind", KINDS)
def test_a_paste_changes_exactly_its_mask_and_enough(kind: str) -> None:
    good = goods()
    rng = np.random.default_rng(1)
    for _ in range(5):
        out, mask = paste_defect(good[0], good[1], kind, rng)
        assert out.shape == good[0].shape and out.dtype == np.uint8 and mask.dtype == bool
        assert 0 < mask.mean() < 0.2
        assert np.array_equal(out[~mask], good[0][~mask])  # nothing outside the mask moved
        change = np.abs(out.astype(np.float32).mean(axis=2) - good[0].astype(np.float32).mean(axis=2))
        assert change[mask].mean() >= MIN_CHANGE


def test_unknown_kind_is_refused() -> None:
    good = goods(2)
    with pytest.raises(ValueError, match="unknown pasted defect kind 'crack'"):
        paste_defect(good[0], good[1], "crack", np.random.default_rng(0))


def test_the_set_lines_up_and_replays_from_its_seed() -> None:
    good = goods(4)
    images, masks, labels, types = pasted_set(good, per_image=3, seed=7)
    assert images.shape == (16, 64, 64, 3) and masks.shape == (16, 64, 64)
    assert labels.tolist() == [0] * 4 + [1] * 12
    assert types[:4] == ["good"] * 4 and sorted(set(types[4:])) == sorted(KINDS)
    assert np.array_equal(images[:4], good) and not masks[:4].any() and all(m.any() for m in masks[4:])
    again = pasted_set(good, per_image=3, seed=7)
    assert np.array_equal(again[0], images) and np.array_equal(again[1], masks)
    assert not np.array_equal(pasted_set(good, per_image=3, seed=8)[0], images)
    with pytest.raises(ValueError, match="per_image"):
        pasted_set(good, per_image=0)


def test_a_model_that_sees_the_change_scores_one_and_a_blind_one_chance() -> None:
    good = goods(8)
    flat = good.reshape(len(good), -1).astype(np.float32)

    def sees(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An oracle: the difference to the good image each one was made from (its nearest)."""
        x = images.reshape(len(images), -1).astype(np.float32)
        source = np.abs(x[:, None] - flat[None]).sum(axis=2).argmin(axis=1)
        maps = np.abs(images.astype(np.float32) - good[source].astype(np.float32)).mean(axis=3)
        return maps.reshape(len(images), -1).max(axis=1), maps

    rng = np.random.default_rng(3)

    def blind(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rng.random(len(images)), rng.random(images.shape[:3])

    seen = score_pasted(sees, good, per_image=3, seed=0)
    assert seen["image_auroc"] == 1.0 and seen["pixel_auroc"] > 0.99
    assert set(seen["per_type"]) == set(KINDS) and seen["n_good"] == 8 and seen["n_pasted"] == 24
    chance = score_pasted(blind, good, per_image=3, seed=0)
    assert 0.3 < chance["image_auroc"] < 0.7 and 0.45 < chance["pixel_auroc"] < 0.55


def test_a_checkpoint_without_held_out_images_is_a_clear_error(tmp_path: Path, capsys) -> None:
    import torch

    from edge.capture.preprocess import Preprocess
    from training.checkpoint import build_model, save_checkpoint
    from training.cli import eval_main

    path = save_checkpoint(
        tmp_path / "c.pt", "conv-ae", build_model("conv-ae", {"image_size": 32}), Preprocess(32, 32)
    )
    assert torch.load(path, weights_only=True)["data"] == {}
    assert eval_main([str(path), "--pasted"]) == 2
    assert "records no held-out good images" in capsys.readouterr().err
