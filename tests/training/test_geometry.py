"""The varied-framing set (crops as a part locator cuts them) and the per-bundle geometry choice."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.tiling import Tiling
from training import geometry
from training.checkpoint import load_checkpoint
from training.framing import crop_box, make_varied_framing
from training.synthetic import good_part
from training.train import TrainConfig, train


def test_crop_box_sides_vary_within_bounds_and_keep_the_defect() -> None:
    rng = np.random.default_rng(0)
    keep = np.zeros((100, 200), bool)
    keep[40:50, 150:170] = True
    boxes = [crop_box((100, 200), rng, 0.6, keep) for _ in range(200)]
    for x, y, w, h in boxes:
        assert 120 <= w <= 200 and 60 <= h <= 100
        assert 0 <= x <= 200 - w and 0 <= y <= 100 - h
        assert x <= 150 and x + w >= 170 and y <= 40 and y + h >= 50, (x, y, w, h)
    assert len({w / h for _, _, w, h in boxes}) > 50  # the aspect ratio varies from crop to crop


def test_crop_box_centres_on_a_defect_longer_than_the_crop() -> None:
    keep = np.zeros((50, 400), bool)
    keep[10:20, 20:380] = True  # 360 px long; crops are at most 400 * 0.7 = 280
    x, _, w, _ = crop_box((50, 400), np.random.default_rng(1), 0.5, keep)
    if w < 360:
        assert abs((x + w / 2) - 200) <= 1


def _category(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(4):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), good_part(rng, 96))
    (root / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(root / "test" / "good" / "000.png"), good_part(rng, 96))
    (root / "test" / "dent").mkdir(parents=True)
    (root / "ground_truth" / "dent").mkdir(parents=True)
    image = good_part(rng, 96)
    image[70:78, 10:20] = 255
    mask = np.zeros((96, 96), np.uint8)
    mask[70:78, 10:20] = 255
    cv2.imwrite(str(root / "test" / "dent" / "000.png"), image)
    cv2.imwrite(str(root / "ground_truth" / "dent" / "000_mask.png"), mask)
    return root


def test_varied_framing_cuts_image_and_mask_alike(tmp_path: Path) -> None:
    data = _category(tmp_path / "part")
    out = tmp_path / "framed"
    counts = make_varied_framing(data, out, seed=3, log=lambda _m: None)
    assert counts == {"train": 4, "test": 2}
    shapes = {cv2.imread(str(p)).shape[:2] for p in (out / "train" / "good").iterdir()}
    assert len(shapes) > 1 and all(h <= 96 and w <= 96 for h, w in shapes)
    image = cv2.imread(str(out / "test" / "dent" / "000.png"))
    mask = cv2.imread(str(out / "ground_truth" / "dent" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert image.shape[:2] == mask.shape
    assert (mask > 0).sum() == 8 * 10  # the whole defect kept
    assert (image[mask > 0] == 255).all()  # and the mask still sits on it


def test_square_images_need_no_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    paths = _images(tmp_path, [(64, 64)] * 4)

    def fail(*_a, **_k):
        raise AssertionError("the probe must not run when every image is square")

    monkeypatch.setattr(geometry, "score_geometry", fail)
    choice = geometry.choose_geometry(paths[:3], paths[3:], 64)
    assert choice["resize"] == "letterbox" and "square" in choice["reason"]


@pytest.mark.parametrize(("lead", "chosen"), [(0.05, "stretch"), (0.01, "letterbox"), (-0.2, "letterbox")])
def test_stretch_only_when_it_wins_by_the_margin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lead: float, chosen: str
) -> None:
    paths = _images(tmp_path, [(40, 80)] * 6)
    base = {"image_auroc": 0.8, "pixel_auroc": 0.9, "aupro": 0.7, "recall_1": 0.3}

    def probe(resize: str, *_a, **_k) -> dict[str, float]:
        return {**base, "recall_1": base["recall_1"] + (lead if resize == "stretch" else 0.0)}

    monkeypatch.setattr(geometry, "score_geometry", probe)
    choice = geometry.choose_geometry(paths[:4], paths[4:], 64)
    assert choice["resize"] == chosen
    assert set(choice["probe"]) == {"letterbox", "stretch"}


def test_edge_train_measures_the_geometry_and_the_bundle_follows_it(tmp_path: Path) -> None:
    """A real probe on oblong parts: both geometries measured, the choice recorded, the input made with it."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(12):
        part = good_part(rng, 96)
        w = int(rng.integers(100, 160))
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.resize(part, (w, 64)))
    cfg = TrainConfig(
        model="patchcore",
        data=folder,
        out=tmp_path / "run",
        val_fraction=0.25,
        model_config={"image_size": 64, "bank_size": 64, "backbone": "effnet"},
        progress=False,
    )
    ckpt = load_checkpoint(train(cfg))
    chosen = ckpt.data["geometry"]
    assert chosen["resize"] in ("letterbox", "stretch")
    assert ckpt.preprocess.resize == chosen["resize"]
    for g in ("letterbox", "stretch"):
        m = chosen["probe"][g]
        assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["recall_1"] <= 1.0 and m["pixel_auroc"] is not None
    # 64 x 100-160 px parts at a 64 px input: 3 tiles at scale 1 see them 2.5x finer, so tiles were probed
    for name in ("whole", "tiles"):
        for d in ("cutpaste", "small"):
            assert 0.0 <= chosen["tiles_probe"][name][d]["aupro"] <= 1.0
    expected = None if chosen["tiling"] is None else Tiling.from_dict(chosen["tiling"])
    assert ckpt.preprocess.tiling == expected


@pytest.mark.parametrize(
    ("hw", "max_tiles", "scale"),
    [
        ((640, 640), 4, 0.65),  # 2 x 2 tiles of 224 with 32 px overlap cover 416 px
        ((460, 1130), 4, 0.48),  # one row of 3
        ((900, 900), 4, 0.46),
        ((256, 256), 4, None),  # the whole-image resize already sees it at 0.875
        ((640, 640), 1, None),  # never tile
        ((2048, 2448), 16, 0.32),  # a 5 MP frame in a 4 x 4 grid
    ],
)
def test_tiles_take_the_largest_scale_that_fits_the_budget(
    hw: tuple[int, int], max_tiles: int, scale: float | None
) -> None:
    tiling = geometry.auto_tiling([hw], 224, max_tiles)
    if scale is None:
        assert tiling is None
        return
    assert tiling is not None and tiling.scale == pytest.approx(scale) and tiling.overlap == 32
    assert len(tiling.grid(*hw)) <= max_tiles
    assert len(Tiling(224, 32, scale + 0.01).grid(*hw)) > max_tiles


@pytest.mark.parametrize(("lead", "tiled"), [(0.07, True), (0.05, False), (-0.3, False)])
def test_tiles_only_when_they_win_by_the_margin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lead: float, tiled: bool
) -> None:
    paths = _images(tmp_path, [(200, 200)] * 6)  # square: no letterbox/stretch probe
    base = {"image_auroc": 0.8, "pixel_auroc": 0.9, "aupro": 0.7, "recall_1": 0.3}
    monkeypatch.setattr(geometry, "fit_probe", lambda pre, *_a, **_k: pre)

    def score(pre, *_a, **_k) -> dict[str, float]:  # the lead split over the three defect sets
        return {**base, "aupro": base["aupro"] + (lead / 3 if pre.tiling is not None else 0.0)}

    monkeypatch.setattr(geometry, "score_native", score)
    choice = geometry.choose_geometry(paths[:4], paths[4:], 64, max_tiles=4)
    assert choice["resize"] == "letterbox"
    assert (choice["tiling"] is not None) == tiled
    if tiled:
        assert Tiling.from_dict(choice["tiling"]) == Tiling(64, 9, 0.59)  # 118 px: 2 x 2 tiles of 64
    assert set(choice["tiles_probe"]) == {"whole", "tiles"}
    assert set(choice["tiles_probe"]["tiles"]) == {"cutpaste", "small", "uneven"}


def test_a_trained_kind_is_never_offered_tiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(geometry, "choose_tiles", lambda *_a, **_k: pytest.fail("tiles probed"))
    paths = _images(tmp_path, [(200, 200)] * 6)
    cfg = TrainConfig(
        model="conv-ae",
        data=paths[0].parent,
        out=tmp_path / "run",
        epochs=1,
        model_config={"image_size": 32},
        progress=False,
    )
    ckpt = load_checkpoint(train(cfg))
    assert ckpt.preprocess.tiling is None and "tiling" not in ckpt.data["geometry"]


def test_a_fixed_geometry_is_not_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(geometry, "score_geometry", lambda *_a, **_k: pytest.fail("measured"))
    paths = _images(tmp_path, [(40, 80)] * 6)
    cfg = TrainConfig(
        model="patchcore",
        data=paths[0].parent,
        out=tmp_path / "run",
        model_config={"image_size": 64, "bank_size": 32, "backbone": "effnet"},
        progress=False,
        geometry="stretch",
    )
    ckpt = load_checkpoint(train(cfg))
    assert ckpt.preprocess.resize == "stretch" and ckpt.data["geometry"]["resize"] == "stretch"


def _images(root: Path, shapes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(shapes):
        path = root / f"{i:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_the_tiles_probe_sets_keep_to_a_pixel_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    paths = _images(tmp_path, [(100, 100)] * 6)
    sets = geometry.native_defect_sets(paths)
    assert set(sets) == {"cutpaste", "small", "uneven"}  # every kind of visible defect weighs in the choice
    assert all(len(s[0]) == 6 * (1 + geometry.PER_IMAGE) for s in sets.values())
    assert sets["uneven"][0][-1].shape == (100, 100, 3)  # at the images' own size
    assert sets["uneven"][1][-1].any() and not sets["uneven"][1][0].any()  # the last copy has a defect
    monkeypatch.setattr(geometry, "TILES_PROBE_PIXELS", 3 * 100 * 100 * (1 + 3 * geometry.PER_IMAGE))
    sets = geometry.native_defect_sets(paths)  # every other image: 3 of 6
    assert len(sets["cutpaste"][0]) == 3 * (1 + geometry.PER_IMAGE)


def test_a_tiled_knn_grows_its_banks_with_the_tiles_a_frame() -> None:
    config, done = geometry.tiled_banks("patchcore", {"backbone": "both"}, 3.9)  # 4 tiles, on average
    assert (config["bank_size"], config["vit_bank_size"]) == (4096 * 4, 8192 * 4)
    assert done["tiles_per_frame"] == 4 and "4x for 3.9 tiles a frame" in done["reason"]
    config, done = geometry.tiled_banks("patchcore", {}, 104)  # a 20 MP frame: the growth stops at 4x
    assert config["bank_size"] == 4096 * geometry.MAX_BANK_GROWTH == done["bank_size"]
    # asked sizes and full banks stay; one tile, or a kind without banks, changes nothing
    config, done = geometry.tiled_banks("patchcore", {"bank_size": 1000, "vit_bank_size": 0}, 4)
    assert config == {"bank_size": 1000, "vit_bank_size": 0} and done == {}
    config, done = geometry.tiled_banks("patchcore", {"bank_size": 1000}, 2)
    assert config == {"bank_size": 1000, "vit_bank_size": 8192 * 2} and done["vit_bank_size"] == 16384
    assert geometry.tiled_banks("patchcore", {}, 1.2) == ({}, {})
    assert geometry.tiled_banks("gtrans", {}, 4) == ({}, {})
