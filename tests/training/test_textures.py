"""Generated textures: each kind is a stable category (same seed, same images) with real variation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import good_images
from training.textures import TEXTURES, texture_image, write_texture_folder


@pytest.mark.parametrize("kind", sorted(TEXTURES))
def test_images_vary_within_a_kind_but_replay_from_the_seed(kind: str) -> None:
    a = [texture_image(kind, np.random.default_rng(1), 64) for _ in range(1)][0]
    b = texture_image(kind, np.random.default_rng(1), 64)
    c = texture_image(kind, np.random.default_rng(2), 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 3.0  # another image of the kind differs
    assert a.std() > 8.0  # a texture, not a flat field


def test_kinds_are_distinguishable() -> None:
    """Each kind's mean spectrum is nearer to its own images than to another kind's."""
    rng = np.random.default_rng(0)

    def spectrum(img: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))))

    kinds = sorted(TEXTURES)
    refs = {k: np.mean([spectrum(texture_image(k, rng, 64)) for _ in range(4)], axis=0) for k in kinds}
    for k in kinds:
        probe = spectrum(texture_image(k, rng, 64))
        nearest = min(kinds, key=lambda other: float(np.abs(probe - refs[other]).mean()))
        assert nearest == k


def test_folder_is_a_training_set(tmp_path: Path) -> None:
    folder = write_texture_folder(tmp_path / "weave", "weave", 5, size=48)
    assert [p.name for p in good_images(folder)] == [f"{i:03d}.png" for i in range(5)]
    with pytest.raises(ValueError, match="unknown texture"):
        texture_image("marble", np.random.default_rng(0))
