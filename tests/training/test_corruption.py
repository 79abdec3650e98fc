"""Synthetic anomalies for the denoising student: never a no-op, replayable, and the targets stay clean."""

from __future__ import annotations

import numpy as np
import torch

from training.checkpoint import build_model
from training.corruption import corrupt, corrupt_batch, region_mask


def test_regions_are_small_and_never_empty() -> None:
    rng = np.random.default_rng(0)
    shares = [float((region_mask(rng, 96, 128) > 0.5).mean()) for _ in range(40)]
    assert min(shares) > 0.0 and max(shares) <= 0.15


def test_a_corrupted_image_differs_and_replays_from_its_seed() -> None:
    image = np.random.default_rng(1).integers(60, 200, (64, 64, 3), dtype=np.uint8)
    for seed in range(12):  # every kind comes up in a dozen draws
        a = corrupt(image, np.random.default_rng(seed))
        b = corrupt(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        changed = np.abs(a.astype(int) - image.astype(int)).max(axis=2) > 0
        assert changed.any() and changed.mean() < 0.5


def test_share_of_a_batch_is_corrupted_and_the_input_is_untouched() -> None:
    batch = np.random.default_rng(2).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    before = batch.copy()
    out = corrupt_batch(batch, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(batch, before)
    changed = [(out[i] != batch[i]).any() for i in range(40)]
    assert 10 <= sum(changed) <= 30
    np.testing.assert_array_equal(corrupt_batch(batch, 0.0, np.random.default_rng(3)), batch)


def test_denoising_student_is_scored_against_the_clean_targets() -> None:
    torch.manual_seed(0)
    model = build_model("gtrans", {"image_size": 64, "depth": 1, "dim": 32, "denoise": 0.5}).eval()
    x = torch.randn(4, 3, 64, 64)
    cached = model.eval().cache_frozen(x)
    idx = torch.tensor([0, 2])
    noisy = x[idx] + 0.5 * torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = model.batch_loss(x, cached, idx, corrupted=noisy)
        want = model.training_loss(noisy, teacher=model.teacher_features(x[idx]), student_input=noisy)
        torch.testing.assert_close(got, want)
        assert not torch.isclose(got, model.batch_loss(x, cached, idx))
