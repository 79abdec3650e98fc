"""Model behaviour on generated parts: learning lowers the loss, defects score higher and are located."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from export.onnx_export import int8_float_patterns
from tests.training.checks import assert_finds_blobs
from training.checkpoint import build_model, load_checkpoint, save_checkpoint
from training.cli import eval_main, train_main
from training.data import load_images
from training.models.gtrans import GTransConfig

SMALL = {
    "gtrans": ["image_size=128", "depth=1", "dim=64"],
    "conv-ae": ["image_size=64", "widths=[8,16,32,32]", "latent_dim=32", "decoder_widths=[16,16,8,8]"],
}


@pytest.fixture(scope="module")
def gtrans_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gtrans-run")
    args = [
        "--model",
        "gtrans",
        "--data",
        str(synthetic_dataset),
        "--out",
        str(out),
        "--epochs",
        "6",
        "--quiet",
    ]
    for s in SMALL["gtrans"]:
        args += ["--set", s]
    assert train_main(args) == 0
    return out / "checkpoint.pt"


def test_a_finished_run_is_not_reused_for_other_settings(
    gtrans_run: Path, synthetic_dataset: Path, capsys
) -> None:
    """Asking a finished run's folder for another model (a --set, or a default changed since) is refused,
    not answered with the old model; the same settings get the finished checkpoint back, unchanged."""
    digest = load_checkpoint(gtrans_run).sha256
    args = ["--model", "gtrans", "--data", str(synthetic_dataset), "--out", str(gtrans_run.parent), "--quiet"]
    for s in SMALL["gtrans"]:
        args += ["--set", s]
    capsys.readouterr()
    assert train_main([*args, "--set", "dim=32"]) == 2
    assert "other settings (dim: 64 -> 32)" in capsys.readouterr().err
    assert train_main([*args, "--set", "vit_layers=[]"]) == 2  # the run has the ViT teacher
    assert "vit_layers: [5, 8] -> []" in capsys.readouterr().err
    assert train_main(args) == 0 and load_checkpoint(gtrans_run).sha256 == digest


def test_settings_a_run_measured_itself_are_not_a_change() -> None:
    from training.checkpoint import settings_changed
    from training.models.patchcore import PatchCoreConfig

    measured = PatchCoreConfig(vit_weight=0.5)  # the fusion weight training chose for its bundle
    assert settings_changed("patchcore", measured, {}) == []
    assert settings_changed("patchcore", measured, {"bank_size": 2048}) == ["bank_size: 4096 -> 2048"]
    old = GTransConfig(vit_layers=())  # a checkpoint from before the ViT teacher was GTrans's default
    assert settings_changed("gtrans", old, {}) == ["vit_layers: [] -> [5, 8]"]


def test_training_lowers_loss(gtrans_run: Path) -> None:
    history = load_checkpoint(gtrans_run).train_state["history"]
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]


def test_defect_scores_higher_and_map_peaks_inside(gtrans_run: Path) -> None:
    assert_finds_blobs(gtrans_run, seed=123, max_peak_distance=4)


@pytest.mark.parametrize("kind", ["gtrans", "conv-ae", "anovit"])
def test_score_independent_of_batch(kind: str) -> None:
    torch.manual_seed(0)
    config = {
        "gtrans": {"image_size": 64, "depth": 1, "dim": 32},
        "conv-ae": {"image_size": 64},
        "anovit": {"image_size": 56},
    }[kind]
    model = build_model(kind, config).eval()
    x = torch.randn(4, 3, config["image_size"], config["image_size"])
    with torch.no_grad():
        batch_scores, batch_maps = model(x)
        for i in range(4):
            s, m = model(x[i : i + 1])
            torch.testing.assert_close(s, batch_scores[i : i + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m, batch_maps[i : i + 1], atol=1e-5, rtol=1e-5)


def test_resume_continues_to_the_same_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    base = ["--model", "conv-ae", "--data", str(synthetic_dataset), "--quiet", "--seed", "3"]
    for s in SMALL["conv-ae"]:
        base += ["--set", s]
    assert train_main([*base, "--out", str(tmp_path / "straight"), "--epochs", "3"]) == 0
    # "interrupted" after epoch 2: same schedule length, stopped early by running 2 epochs then resuming to 3
    assert train_main([*base, "--out", str(tmp_path / "resumed"), "--epochs", "3", "--stop-after", "2"]) == 0
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt").train_state["epoch"] == 2
    assert train_main([*base, "--out", str(tmp_path / "resumed"), "--epochs", "3"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert b.train_state["epoch"] == 3 and b.train_state["completed"]
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_eval_cli_writes_metrics(gtrans_run: Path, synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    assert eval_main([str(gtrans_run), "--data", str(synthetic_dataset), "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "per_type", "throughput_img_s"):
        assert key in result
    assert result["image_auroc"] > 0.9
    assert set(result["per_type"]) == {"blob", "scratch"}
    assert "image AUROC" in capsys.readouterr().out


def test_eval_cli_pasted_needs_no_defect_samples(gtrans_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pasted.json"
    assert eval_main([str(gtrans_run), "--pasted", "--per-image", "2", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert set(result["per_type"]) == {"patch", "scar", "blob"} and result["n_pasted"] == 2 * result["n_good"]
    assert result["image_auroc"] > 0.6  # the parts model sees pasted defects on its own held-out parts
    assert "pasted defects on" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # one source of defects, not both
        eval_main([str(gtrans_run), "--pasted", "--data", str(tmp_path)])


def test_eval_cli_small_defects_are_drawn_at_the_images_own_size(
    gtrans_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "small.json"
    args = [
        str(gtrans_run),
        "--pasted",
        "--defects",
        "small",
        "--per-image",
        "3",
        "--json",
        str(out),
        "--quiet",
    ]
    assert eval_main(args) == 0
    import json

    result = json.loads(out.read_text())
    assert (
        set(result["per_type"]) == {"nick", "bridge", "speck"} and result["n_pasted"] == 3 * result["n_good"]
    )
    assert result["defects"] == "small" and 0.0 <= result["image_auroc"] <= 1.0
    assert "small defects drawn on" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a defect set that does not exist is the parser's error
        eval_main([str(gtrans_run), "--pasted", "--defects", "dents"])


def test_eval_cli_native_defects_are_scored_at_the_images_own_size(gtrans_run: Path, tmp_path: Path) -> None:
    """--native --pasted: the defects stay at the file's size and the whole-image map is brought back to it,
    so a whole-image checkpoint compares with a tiled one (which is always scored so)."""
    import json

    for defects in ("small", "cutpaste"):
        out = tmp_path / f"{defects}.json"
        args = [str(gtrans_run), "--pasted", "--native", "--defects", defects, "--json", str(out), "--quiet"]
        assert eval_main(args) == 0
        result = json.loads(out.read_text())
        assert result["resolution"] == "native" and result["n_pasted"] == 3 * result["n_good"]
        assert 0.0 <= result["image_auroc"] <= 1.0 and 0.0 <= result["aupro"] <= 1.0


def test_bad_data_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    rc = train_main(
        ["--model", "conv-ae", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert rc == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_images_load_in_model_colour_order(synthetic_dataset: Path) -> None:
    ckpt_pre = build_model("conv-ae", {"image_size": 64}).config
    assert ckpt_pre.image_size == 64
    from edge.capture.preprocess import Preprocess

    imgs = load_images(sorted((synthetic_dataset / "train" / "good").glob("*.png"))[:2], Preprocess(64, 64))
    assert imgs.shape == (2, 64, 64, 3) and imgs.dtype == np.uint8


@pytest.mark.parametrize(("stem", "vit"), [("scratch", ()), ("teacher", ()), ("scratch", (5, 8))])
def test_gtrans_cached_loss_equals_the_one_graph_loss(stem: str, vit: tuple[int, ...]) -> None:
    """Training reads the teachers' outputs from a cache; the loss must be what the model computes itself."""

    torch.manual_seed(0)
    config = {"image_size": 64, "depth": 1, "dim": 32, "student_stem": stem, "vit_layers": vit}
    model = build_model("gtrans", config)
    x = torch.randn(6, 3, 64, 64)
    cached = model.eval().cache_frozen(x)
    assert len(cached) == len(model.config.teacher_blocks) + (stem == "teacher") + bool(vit)
    model.eval()
    idx = torch.tensor([4, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.batch_loss(x, cached, idx), model.training_loss(x[idx]))


def test_gtrans_vit_teacher_is_a_fourth_frozen_target_on_the_stride_16_grid() -> None:
    torch.manual_seed(0)
    model = build_model("gtrans", {"image_size": 64, "depth": 1, "dim": 32, "vit_layers": (5, 8)}).eval()
    x = torch.randn(3, 3, 64, 64)
    student_input, targets = model.agn(x)
    assert [tuple(t.shape[1:]) for t in targets][-1] == (768, 4, 4)  # 2 blocks x 384, 64 px / 16
    outs = model.student(student_input)
    assert [o.shape for o in outs] == [t.shape for t in targets]
    model.training_loss(x).backward()
    assert all(p.grad is None for p in model.vit.parameters())
    trained = {id(p) for g in model.configure_optimizer(1e-3).param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in model.vit.parameters())
    with torch.no_grad():
        scores, _ = model(x)
        for i in range(3):
            torch.testing.assert_close(model(x[i : i + 1])[0], scores[i : i + 1], atol=1e-5, rtol=1e-5)
        # the ViT's map is part of the score: a student that misses only the ViT tokens scores higher
        model.student.vit_head[-1].bias.add_(5.0)
        assert (model(x)[0] > scores).all()
    # export keeps both teachers float, and a GTrans without the ViT names only the CNN
    assert int8_float_patterns(model) and model.int8_keep_float == ("teacher", "vit")
    cnn_only = build_model("gtrans", {"image_size": 64, "depth": 1, "dim": 32, "vit_layers": []})
    assert int8_float_patterns(cnn_only) and cnn_only.int8_keep_float == ("teacher",)


def test_gtrans_checkpoints_from_before_the_vit_teacher_load_with_the_cnn_alone(tmp_path: Path) -> None:
    model = build_model("gtrans", {"image_size": 64, "depth": 1, "dim": 32, "vit_layers": []}).eval()
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = save_checkpoint(tmp_path / "old.pt", "gtrans", model, pre)
    payload = torch.load(path, weights_only=True)
    payload["config"].pop("vit_layers")
    torch.save(payload, path)
    back = load_checkpoint(path).model
    assert back.vit is None and tuple(back.config.vit_layers) == ()
    assert GTransConfig().vit_layers == (5, 8)  # a new run gets the ViT teacher


def test_gtrans_teacher_stem_is_frozen_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = build_model("gtrans", {"image_size": 64, "depth": 1, "dim": 32, "student_stem": "teacher"}).eval()
    x = torch.randn(3, 3, 64, 64)
    loss = model.training_loss(x)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    with torch.no_grad():
        scores, _ = model(x)
        for i in range(3):
            torch.testing.assert_close(model(x[i : i + 1])[0], scores[i : i + 1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="student_stem"):
        build_model("gtrans", {"image_size": 64, "student_stem": "imagenet"})


def test_diagnose_reports_overfitting_and_each_scale(gtrans_run: Path, capsys) -> None:
    from training.diagnose import diagnose, main

    r = diagnose(gtrans_run, train_stride=4)
    assert r["train_loss"] > 0 and r["held_out_loss"] > 0
    assert r["overfit_ratio"] == pytest.approx(r["held_out_loss"] / r["train_loss"])
    assert set(r["pasted"]) == {
        "scale 0 alone",
        "scale 1 alone",
        "scale 2 alone",
        "ViT alone",  # the second teacher's target, GTrans's default
        "mean of scales (the model's own map)",
        "mean of z-scored scales",
    }
    for m in r["pasted"].values():
        assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["pixel_auroc"] <= 1.0
    assert main([str(gtrans_run)]) == 0
    assert "ratio" in capsys.readouterr().out
