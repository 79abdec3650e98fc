"""Tiled training, export and evaluation end to end: edge-train --tile, edge-export, edge-eval (native)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.tiling import Tiling
from edge.trust.manifest import verify_bundle
from export.cli import main as export_main
from training.checkpoint import load_checkpoint
from training.cli import eval_main, train_main
from training.data import load_samples, load_tiles
from training.synthetic import write_mvtec_dataset

SIZE = 112  # images; tiles of 48 with 8 overlap: starts 0, 40, 64 -> 3 x 3 tiles per image


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiled")
    return write_mvtec_dataset(root / "parts", n_train=10, n_test_good=3, n_test_defect=3, size=SIZE, seed=5)


def test_tiles_are_the_training_samples(parts: Path) -> None:
    from training.train import make_preprocess

    config: dict = {"backbone": "effnet"}
    pre = make_preprocess("patchcore", config, tiling=Tiling(48, 8, 1.0))
    assert config["image_size"] == 48 and (pre.height, pre.width) == (48, 48)
    paths = sorted((parts / "train" / "good").iterdir())[:2]
    samples = load_samples(paths, pre)
    assert samples.shape == (18, 48, 48, 3)
    tiled, masks = load_tiles(paths, pre, masks=[None, None])
    assert list(tiled.owner) == [0] * 9 + [1] * 9
    assert [m.shape for m in masks] == [(SIZE, SIZE)] * 2
    assert np.array_equal(tiled.stitched(tiled.tiles[..., 0].astype(np.float32))[1].shape, (SIZE, SIZE))
    with pytest.raises(ValueError, match="--tile 48 is the model input"):
        make_preprocess("patchcore", {"image_size": 64}, tiling=Tiling(48))


def test_train_export_and_evaluate_a_tiled_knn(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    args = ["--model", "patchcore", "--set", 'backbone="effnet"', "--data", str(parts), "--out", str(run)]
    assert train_main([*args, "--tile", "48", "--tile-overlap", "8", "--quiet"]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt.preprocess.tiling == Tiling(48, 8, 1.0)
    assert ckpt.train_state["memory"]["patches"] == 9 * 9 * 6 * 6  # 9 images x 9 tiles x a 6x6 grid each
    assert ckpt.model.config.bank_size == 4096 * 4  # the rows grow with the 9 tiles a frame, at most 4x
    assert ckpt.data["banks"]["tiles_per_frame"] == 4 and ckpt.data["banks"]["bank_size"] == 4096 * 4

    bundle = tmp_path / "bundle"
    assert export_main([str(run / "checkpoint.pt"), "--out", str(bundle)]) == 0
    manifest = verify_bundle(bundle)
    assert manifest.input.tiling is not None
    assert manifest.input.tiling.model_dump() == {"tile": 48, "overlap": 8, "scale": 1.0}
    assert json.loads((bundle / "manifest.json").read_text())["input"]["tiling"]["tile"] == 48

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert (
        eval_main([str(run / "checkpoint.pt"), "--data", str(parts), "--json", str(out_json), "--quiet"]) == 0
    )
    assert "native resolution, tiles 48 px" in capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["resolution"] == "native" and result["tiling"]["tile"] == 48
    assert result["image_auroc"] > 0.5 and result["pixel_auroc"] > 0.5  # the generated defects are obvious


def test_tiling_options_need_tile(parts: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        train_main(["--data", str(parts), "--out", str(tmp_path / "x"), "--scale", "0.5"])
    bad = ["--data", str(parts), "--out", str(tmp_path / "y"), "--tile", "48", "--tile-overlap", "30"]
    assert train_main(bad) == 2  # overlap over half the tile: one clear error, exit 2


def test_crops_of_several_sizes_are_evaluated_in_tiles(parts: Path, tmp_path: Path) -> None:
    """A locator's crops differ in size: a tiled checkpoint trained on them is scored on its test split and
    on both pasted sets, each map at its crop's size, the pixel metrics in one frame."""
    from training.framing import make_varied_framing

    framed = tmp_path / "framed"
    make_varied_framing(parts, framed, seed=2, log=lambda _m: None)
    assert len({cv2.imread(str(p)).shape for p in (framed / "train" / "good").iterdir()}) > 1
    run = tmp_path / "run"
    args = ["--model", "patchcore", "--set", 'backbone="effnet"', "--data", str(framed), "--out", str(run)]
    assert train_main([*args, "--tile", "48", "--tile-overlap", "8", "--val-fraction", "0.3", "--quiet"]) == 0
    out = tmp_path / "test.json"
    assert eval_main([str(run / "checkpoint.pt"), "--data", str(framed), "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["resolution"] == "native" and result["pixel_auroc"] > 0.5 and 0 <= result["aupro"] <= 1
    for defects in ("cutpaste", "small"):
        out = tmp_path / f"{defects}.json"
        argv = [str(run / "checkpoint.pt"), "--pasted", "--defects", defects, "--json", str(out), "--quiet"]
        assert eval_main(argv) == 0
        pasted = json.loads(out.read_text())
        assert pasted["n_pasted"] == 3 * pasted["n_good"] and 0 <= pasted["pixel_auroc"] <= 1
