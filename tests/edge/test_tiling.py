"""The tile grid, cutting and stitching (edge/capture/tiling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import Tiling, axis_starts, window


@pytest.mark.parametrize(
    ("n", "tile", "overlap", "expected"),
    [
        (256, 256, 32, (0,)),
        (100, 256, 32, (0,)),
        (480, 256, 32, (0, 224)),
        (481, 256, 32, (0, 224, 225)),
        (1000, 256, 0, (0, 256, 512, 744)),
    ],
)
def test_axis_starts_end_on_the_edge(n: int, tile: int, overlap: int, expected: tuple) -> None:
    starts = axis_starts(n, tile, overlap)
    assert starts == expected
    assert starts[0] == 0
    assert min(n, starts[-1] + tile) == n  # the last tile ends on the edge, never past it (unless n < tile)


@pytest.mark.parametrize(("h", "w"), [(257, 513), (640, 640), (1130, 460), (37, 300), (31, 17)])
@pytest.mark.parametrize(("tile", "overlap", "scale"), [(64, 0, 1.0), (64, 16, 1.0), (48, 7, 0.5)])
def test_grid_covers_every_pixel(h: int, w: int, tile: int, overlap: int, scale: float) -> None:
    grid = Tiling(tile, overlap, scale).grid(h, w)
    sh, sw = grid.scaled_hw
    seen = np.zeros((sh, sw), np.int32)
    for x, y, bw, bh in grid.boxes():
        assert x >= 0 and y >= 0 and x + bw <= sw and y + bh <= sh
        seen[y : y + bh, x : x + bw] += 1
    assert seen.min() >= 1
    cam = np.zeros((h, w), np.int32)
    for x, y, bw, bh in grid.camera_boxes():
        assert x + bw <= w and y + bh <= h
        cam[y : y + bh, x : x + bw] += 1
    assert cam.min() >= 1


@pytest.mark.parametrize(("h", "w"), [(200, 333), (64, 64), (129, 65), (40, 100)])
@pytest.mark.parametrize("overlap", [0, 5, 32])
def test_split_and_stitch_gives_the_map_back(h: int, w: int, overlap: int) -> None:
    rng = np.random.default_rng(h * w + overlap)
    truth = rng.normal(size=(h, w)).astype(np.float32)
    grid = Tiling(64, overlap, 1.0).grid(h, w)
    tiles = grid.cut(truth)
    assert tiles.shape == (len(grid), 64, 64)
    stitched = grid.stitch(tiles.astype(np.float32))
    assert stitched.shape == (h, w)
    np.testing.assert_allclose(stitched, truth, rtol=1e-5, atol=1e-5)


def test_overlaps_blend_towards_the_tile_centre() -> None:
    """Where two tiles disagree, the stitched value lies between them, nearer the tile whose centre is
    closer: a border artefact of one tile is damped by its neighbour."""
    grid = Tiling(64, 32, 1.0).grid(64, 96)  # two tiles across, 32 px shared
    assert len(grid) == 2
    maps = np.stack([np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)])
    row = grid.stitch(maps)[32]
    shared = row[32:64]
    assert np.all(np.diff(shared) >= 0)  # from the left tile's value towards the right tile's
    assert shared[0] < 0.1 and shared[-1] > 0.9
    assert np.all(row[:32] == 0) and np.all(row[64:] == 1)


def test_window_is_positive_and_flat_without_overlap() -> None:
    assert np.all(window(32, 0) == 1)
    w = window(32, 8)
    assert w.min() > 0 and w.max() == 1
    assert w[16, 16] == 1 and w[0, 0] < w[4, 4] < w[16, 16]


def test_scale_halves_the_grid_and_maps_back_to_camera_pixels() -> None:
    grid = Tiling(32, 0, 0.5).grid(128, 256)
    assert grid.scaled_hw == (64, 128)
    assert (grid.rows, grid.cols) == (2, 4)
    assert grid.camera_boxes(offset=(10, 20))[-1] == (10 + 192, 20 + 64, 64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"tile": 8}, {"tile": 64, "overlap": 33}, {"tile": 64, "overlap": -1}, {"tile": 64, "scale": 0.0}],
)
def test_bad_tilings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Tiling(**kwargs)


def test_preprocess_cuts_tiles_in_colour_order_and_round_trips_through_its_dict() -> None:
    pre = Preprocess(height=32, width=32, resize="letterbox", tiling=Tiling(32, 8, 1.0))
    frame = np.zeros((40, 70, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    grid, tiles = pre.tiles_of(frame, (40, 70))
    assert tiles.shape == (len(grid), 32, 32, 3) and tiles.dtype == np.uint8
    assert np.all(tiles[..., 2] == 255) and np.all(tiles[..., 0] == 0)  # RGB: blue is last
    assert Preprocess.from_dict(pre.to_dict()) == pre
    whole = Preprocess()
    assert "tiling" not in whole.to_dict()
    assert Preprocess.from_dict(whole.to_dict()) == whole
    with pytest.raises(ValueError, match="tile size"):
        Preprocess(height=64, width=64, tiling=Tiling(32))
