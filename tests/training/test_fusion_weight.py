"""The default kNN's fusion weight, chosen per bundle on its held-out good images with pasted defects.

Teachers run with random weights (the choice's mechanics do not depend on them)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.capture.tiling import Tiling
from training import fusion_weight
from training.checkpoint import load_checkpoint
from training.geometry import preprocess
from training.graph import InferenceModel
from training.models.patchcore import PatchCore, PatchCoreConfig
from training.native_eval import native_map
from training.synthetic import good_part
from training.train import TrainConfig, train

SIZE = 56  # the smallest input both teachers take


@pytest.mark.parametrize(
    ("lead", "chosen"), [(0.07, 0.25), (0.059, 0.75), (0.01, 0.75), (0.0, 0.75), (-0.3, 0.75)]
)
def test_a_weight_replaces_the_default_only_by_more_than_the_margin(lead: float, chosen: float) -> None:
    total = {0.0: 2.0, 0.25: 3.1 + lead, 0.5: 3.05, 0.75: 3.1, 1.0: 2.9}
    weight, reason = fusion_weight.pick(total, 0.75)
    assert weight == chosen
    assert reason.startswith("0.25 beat the default 0.75" if chosen != 0.75 else "no weight beat")


@pytest.mark.parametrize(("halves", "chosen"), [((1.6, 1.6), 0.25), ((2.0, 1.2), 0.75), ((1.5, 1.5), 0.75)])
def test_a_lead_must_hold_on_both_halves_of_the_held_out_images(halves: tuple, chosen: float) -> None:
    total = {0.25: 3.2, 0.75: 3.0}
    weight, reason = fusion_weight.pick(total, 0.75, {0.25: list(halves), 0.75: [1.5, 1.5]})
    assert weight == chosen
    assert ("not on both halves" in reason) == (chosen == 0.75)


def test_a_half_is_every_other_good_image_with_its_defects() -> None:
    assert fusion_weight.half(4, 0) == [0, 2, 4, 5, 6, 10, 11, 12]  # 4 good, then 3 copies of each in turn
    assert fusion_weight.half(4, 1) == [1, 3, 7, 8, 9, 13, 14, 15]


def _fitted(tmp: Path, image_cue: float = 0.0) -> PatchCore:
    torch.manual_seed(0)
    config = PatchCoreConfig(
        image_size=SIZE,
        backbone="both",
        bank_size=40,
        vit_bank_size=24,
        topk_fraction=0.05,
        image_cue=image_cue,
    )
    model = PatchCore(config).eval()
    x = torch.randn(7, 3, SIZE, SIZE)
    model.fit(x[:4], batch=2, x_val=x[4:])
    model.x_val = x[4:]
    return model


@pytest.mark.parametrize("tiled", [False, True])
def test_the_probe_measures_the_map_the_bundle_gives(tiled: bool, tmp_path: Path) -> None:
    """Re-fusing the cached teacher maps at the model's own weight gives the model's own native map
    (stitched tiles and top-k shift included); weight 0 is the EfficientNet map alone."""
    model = _fitted(tmp_path)
    pre = preprocess(SIZE, "letterbox", Tiling(SIZE, 8, 1.0) if tiled else None)
    image = cv2.resize(good_part(np.random.default_rng(1), 96), (90, 60))  # 2 tiles, or letterboxed
    cached = fusion_weight.teacher_maps(model, pre, image)
    assert (cached[0] is not None, cached[1][0].shape[0] > 1) == (tiled, tiled)  # tiles: several inputs
    with torch.no_grad():
        want = native_map(InferenceModel(model, pre), pre, image)
    got = fusion_weight.fused_native(model, pre, cached, model.config.vit_weight)
    assert got.shape == image.shape[:2] == want.shape
    np.testing.assert_allclose(got, want, atol=2e-2 * float(np.abs(want).max()))  # maps held as float16
    effnet_only = fusion_weight.fused_native(model, pre, cached, 0.0)
    assert not np.allclose(effnet_only, got, atol=1e-3)


def test_the_probe_scores_a_cue_weight_as_the_bundle_with_that_cue_would(tmp_path: Path) -> None:
    """The cue's addition is linear in its weight: calibrated once at weight 1, the probe's map at weight
    0.5 is the map of the same model calibrated and run at 0.5."""
    model = _fitted(tmp_path, image_cue=0.5)
    pre = preprocess(SIZE, "letterbox", Tiling(SIZE, 8, 1.0))
    image = cv2.resize(good_part(np.random.default_rng(2), 96), (90, 60))
    image[10:40, 20:70] = 255 - image[10:40, 20:70]  # something for the cue to see
    with torch.no_grad():
        want = native_map(InferenceModel(model, pre), pre, image)
    cached = fusion_weight.teacher_maps(model, pre, image)
    assert cached[3] is not None and cached[3].shape == (len(cached[1][0]), 2) == (4, 2)  # tiles x teachers
    model.calibrate_image_cue(model.x_val, batch=2, weight=1.0)
    got = fusion_weight.fused_native(model, pre, cached, model.config.vit_weight, cue_weight=0.5)
    np.testing.assert_allclose(got.max(), want.max(), rtol=1e-2)
    np.testing.assert_allclose(got, want, atol=2e-2 * float(np.abs(want).max()))
    without = fusion_weight.fused_native(model, pre, cached, model.config.vit_weight)
    assert not np.isclose(without.max(), want.max(), rtol=1e-3)  # the cue moved the score


def _good_folder(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(4)
    root.mkdir()
    for i in range(n):
        cv2.imwrite(str(root / f"{i:02d}.png"), good_part(rng, 64))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default kind trained on a dozen small good parts (random teachers: no wheel needed)."""
    root = tmp_path_factory.mktemp("fusion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PatchCore, "load_pretrained", lambda self: None)
        cfg = TrainConfig(
            model="patchcore",
            data=_good_folder(root / "good"),
            out=root / "run",
            val_fraction=0.25,
            model_config={"image_size": SIZE, "bank_size": 64, "vit_bank_size": 32, "vit_pca_dim": 0},
            progress=False,
        )
        return train(cfg)


def test_training_measures_every_weight_and_the_checkpoint_keeps_the_choice(trained: Path) -> None:
    ckpt = load_checkpoint(trained)
    fusion = ckpt.data["fusion"]
    assert set(fusion["probe"]) == {"0", "0.25", "0.5", "0.75", "1"}
    for measured in fusion["probe"].values():
        sets = measured["sets"]
        assert set(sets) == {"cutpaste", "small", "uneven"}
        assert all(0.0 <= sets[d]["image_auroc"] <= 1.0 for d in sets)
        assert len(measured["halves"]) == 2 and all(0.0 <= h <= 12.0 for h in measured["halves"])
    assert ckpt.config["vit_weight"] == fusion["vit_weight"] in fusion_weight.WEIGHTS
    changed = fusion["vit_weight"] != 0.75
    kept = fusion["reason"].startswith("no weight beat") or "not on both halves" in fusion["reason"]
    assert kept != changed


def test_training_measures_the_image_cue_after_the_weight(trained: Path) -> None:
    """Every cue weight is scored at the chosen ViT weight; the checkpoint keeps a cue only when one won."""
    ckpt = load_checkpoint(trained)
    cue = ckpt.data["image_cue"]
    assert set(cue["probe"]) == {f"{c:g}" for c in fusion_weight.CUE_WEIGHTS}
    assert all(set(m["sets"]) == {"cutpaste", "small", "uneven"} for m in cue["probe"].values())
    assert ckpt.config["image_cue"] == cue["image_cue"] in fusion_weight.CUE_WEIGHTS
    kept_none = cue["image_cue"] == 0.0
    assert kept_none == (cue["reason"].startswith("no weight beat") or "not on both halves" in cue["reason"])
    assert (ckpt.model.cue is None) == kept_none
    calibrated = ckpt.train_state["memory"].get("image_cue")  # calibrated once, at the weight kept
    assert (calibrated is None) if kept_none else calibrated["weight"] == cue["image_cue"]
    assert any(k.startswith("cue.") for k in ckpt.model.state_dict()) != kept_none


def test_a_cue_asked_for_is_kept_and_not_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(PatchCore, "load_pretrained", lambda self: None)

    def fail(*_a, **_k):
        raise AssertionError("a cue asked for must not be measured")

    monkeypatch.setattr(fusion_weight, "choose_image_cue", fail)
    config = {"image_size": SIZE, "bank_size": 32, "vit_bank_size": 16, "vit_pca_dim": 0, "image_cue": 0.25}
    cfg = TrainConfig(
        model="patchcore",
        data=_good_folder(tmp_path / "good", 8),
        out=tmp_path / "run",
        val_fraction=0.25,
        model_config=config,
        progress=False,
    )
    path = train(cfg)
    ckpt = load_checkpoint(path)
    assert ckpt.config["image_cue"] == 0.25 and ckpt.model.cue is not None
    assert "asked for" in ckpt.data["image_cue"]["reason"]
    assert float(ckpt.model.cue.affine[0]) != 0.0  # calibrated at the weight asked for
    # re-weighed later: the cue is put in the new map's units (its gain is the weight times the local
    # score's spread over the cue's, both on the held-out images)
    ckpt.model.cue.affine.zero_()
    monkeypatch.setattr(fusion_weight, "choose_vit_weight", lambda model, *_a: {"vit_weight": 0.5})
    from training.checkpoint import save_checkpoint

    stale = save_checkpoint(tmp_path / "stale.pt", ckpt.kind, ckpt.model, ckpt.preprocess, ckpt.data)
    assert fusion_weight.main([str(stale), "--out", str(tmp_path / "again")]) == 0
    again = load_checkpoint(tmp_path / "again" / "checkpoint.pt")
    assert again.config["image_cue"] == 0.25 and float(again.model.cue.affine[0]) > 0.0


def test_a_trained_checkpoint_can_be_measured_again(trained: Path, tmp_path: Path) -> None:
    """``python -m training.fusion_weight``: the same measurement on an already trained checkpoint."""
    before = load_checkpoint(trained)
    assert fusion_weight.main([str(trained), "--out", str(tmp_path / "again")]) == 0
    again = load_checkpoint(tmp_path / "again" / "checkpoint.pt")
    assert again.data["fusion"]["probe"] == before.data["fusion"]["probe"]  # the same draws, the same maps
    assert again.config["vit_weight"] == before.config["vit_weight"]
    assert again.train_state["train_seconds"] > before.train_state["train_seconds"]


def test_a_weight_asked_for_is_kept_and_nothing_is_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(PatchCore, "load_pretrained", lambda self: None)

    def fail(*_a, **_k):
        raise AssertionError("a weight asked for must not be measured")

    monkeypatch.setattr(fusion_weight, "choose_vit_weight", fail)
    cfg = TrainConfig(
        model="patchcore",
        data=_good_folder(tmp_path / "good", 8),
        out=tmp_path / "run",
        val_fraction=0.25,
        model_config={
            "image_size": SIZE,
            "bank_size": 32,
            "vit_bank_size": 16,
            "vit_pca_dim": 0,
            "vit_weight": 0.5,
        },
        progress=False,
    )
    ckpt = load_checkpoint(train(cfg))
    assert ckpt.config["vit_weight"] == 0.5 and "asked for" in ckpt.data["fusion"]["reason"]


def test_the_probe_keeps_to_its_pass_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((60, 90, 3), np.uint8))  # 4 tiles of 56 px with 8 px overlap
    monkeypatch.setattr(fusion_weight, "PROBE_PASSES", 130)  # 10 images x 4 tiles x 10 copies = 400 passes
    kept, sizes = fusion_weight.within_budget(preprocess(SIZE, "letterbox", Tiling(SIZE, 8, 1.0)), paths)
    assert kept == paths[::2] and sizes == [(60, 90)] * 5  # 3 would fit; at least 2 good images per half
    whole, _ = fusion_weight.within_budget(preprocess(SIZE, "letterbox"), paths)  # 100 passes: all kept
    assert whole == paths


def test_a_checkpoint_without_two_teachers_is_refused(tmp_path: Path, capsys) -> None:
    from training.checkpoint import save_checkpoint

    model = PatchCore(PatchCoreConfig(image_size=SIZE, backbone="effnet", bank_size=8)).eval()
    model.fit(torch.randn(2, 3, SIZE, SIZE), batch=2)
    path = save_checkpoint(tmp_path / "c.pt", "patchcore", model, preprocess(SIZE, "letterbox"))
    assert fusion_weight.main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no weight to measure" in capsys.readouterr().err and not (tmp_path / "out").exists()
