"""The fused kind ``gtrans-knn``: the fusion's arithmetic, its normalisation, and every tool it goes through.

Model-level tests use random teacher weights at tiny sizes (the shapes, the fusion and the export do not
depend on them); the CLI run trains the real thing for one epoch on small generated parts.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from export.cli import EXIT_INPUT, EXIT_OK
from export.cli import main as export_main
from export.onnx_export import onnx_from_module, tail_nodes
from training.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from training.cli import eval_main, train_main
from training.graph import InferenceModel
from training.models.gtrans_knn import GTransKNN

SIZE, KNN_SIZE = 64, 56  # the input (GTrans's size) and the kNN's (4 x 4 ViT patches)
SMALL = {
    "image_size": SIZE,
    "gtrans.image_size": SIZE,
    "gtrans.depth": 1,
    "gtrans.dim": 32,
    "patchcore.image_size": KNN_SIZE,
    "patchcore.bank_size": 40,
    "patchcore.vit_bank_size": 24,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """On 2 shared cores one thread runs these tiny models several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def fitted() -> GTransKNN:
    """Both kNN teachers, fitted on 4 images with 3 held out (tests only read it)."""
    torch.manual_seed(0)
    model = build_model("gtrans-knn", SMALL).eval()
    x = torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model.fit_after_training(x[:4], x[4:], batch=2)
    return model


def test_dotted_settings_reach_the_parts_and_unknown_ones_are_refused() -> None:
    cfg = fitted().config
    assert (cfg.gtrans.dim, cfg.gtrans.depth, cfg.patchcore.image_size) == (32, 1, KNN_SIZE)
    assert cfg.patchcore.backbone == "both" and cfg.gtrans.teacher_blocks == (
        4,
        10,
        14,
    )  # the parts' defaults
    with pytest.raises(ValueError, match="gtrans config has unknown keys"):
        build_model("gtrans-knn", {"gtrans.dimm": 8})
    with pytest.raises(CheckpointError, match="unknown keys"):
        build_model("gtrans-knn", {"bank_size": 8})


def test_fused_map_is_the_mean_of_the_normalised_part_maps() -> None:
    model = fitted()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        g = model.gtrans(x)[1]
        small = F.interpolate(x, size=(KNN_SIZE, KNN_SIZE), mode="bilinear", align_corners=False)
        p = model.patchcore(small)[1]
        p = F.interpolate(p[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
        score, amap = model(x)
    off, scale = model.norm_offset, model.norm_scale
    want = ((g - off[0]) / scale[0] + (p - off[1]) / scale[1]) / 2
    k = round(0.01 * SIZE * SIZE)
    want_score = want.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(dim=1)
    torch.testing.assert_close(score, want_score)
    torch.testing.assert_close(amap, want + (want_score - want.flatten(1).amax(dim=1))[:, None, None])
    torch.testing.assert_close(score, amap.flatten(1).amax(dim=1))  # the daemon's score is the map's max


def test_normalisation_comes_from_the_held_out_images() -> None:
    model = fitted()
    x = torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    k = model.k
    with torch.no_grad():
        part_scores = [m.flatten(1).topk(k, dim=1).values.mean(dim=1).numpy() for m in model.part_maps(x[4:])]
    for i, s in enumerate(part_scores):  # median 0, 99th percentile 1 (calibration.scores)
        assert model.norm_offset[i].item() == pytest.approx(float(np.median(s)), rel=1e-5)
        spread = float(np.quantile(s, 0.99)) - float(np.median(s))
        assert model.norm_scale[i].item() == pytest.approx(spread, rel=1e-4)
    other = copy.deepcopy(model)
    info = other.fit_after_training(x[:4], torch.randn(3, 3, SIZE, SIZE) * 2.0, batch=2)
    assert info["fusion_normalization"]["parts"] == ["gtrans", "patchcore"]
    torch.testing.assert_close(other.gtrans.student.ln.weight, model.gtrans.student.ln.weight)
    assert not torch.allclose(other.norm_offset, model.norm_offset)
    assert not torch.allclose(other.norm_scale, model.norm_scale)


def test_checkpoint_round_trip_and_onnx_match_torch(tmp_path: Path) -> None:
    model = fitted()
    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    back = load_checkpoint(save_checkpoint(tmp_path / "c.pt", "gtrans-knn", model, pre)).model
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8))
    module = InferenceModel(model, pre).eval()
    with torch.no_grad():
        want = module(images)
        got = InferenceModel(back, pre).eval()(images)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    onnx_model = onnx_from_module(module, pre, tmp_path / "m.onnx")
    assert [n.op_type for n in onnx_model.graph.node].count("ReduceMin") == 2  # the kNN's two searches
    # each part's own distance maths stays in the fp32 tail, as it does when the part is exported alone
    assert any(
        n.startswith("/model/gtrans/") and "/" not in n[len("/model/gtrans/") :]
        for n in tail_nodes(onnx_model)
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    np.testing.assert_allclose(out[0], want[0].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out[1], want[1].numpy(), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def fused_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of two, stopped, then resumed: the kNN part is filled only when GTrans is done."""
    out = tmp_path_factory.mktemp("fused-run")
    args = ["--model", "gtrans-knn", "--data", str(synthetic_dataset), "--out", str(out), "--quiet"]
    args += ["--epochs", "2"]
    for key, value in {**SMALL, "patchcore.backbone": "effnet"}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert train_main([*args, "--stop-after", "1"]) == 0
    half = load_checkpoint(out / "checkpoint.pt").train_state
    assert half["epoch"] == 1 and "memory" not in half
    assert train_main(args) == 0
    return out / "checkpoint.pt"


def test_training_fills_the_knn_and_records_the_normalisation(fused_run: Path) -> None:
    ckpt = load_checkpoint(fused_run)
    state = ckpt.train_state
    assert state["completed"] and state["epoch"] == 2 and len(state["history"]) == 2
    bank = ckpt.model.patchcore.search.bank
    assert bank.shape[0] == 40 and bank.abs().sum() > 0
    norm = state["memory"]["fusion_normalization"]
    assert ckpt.model.norm_offset.tolist() == pytest.approx(norm["offset"])
    assert ckpt.model.norm_scale.tolist() == pytest.approx(norm["scale"])
    assert "coverage" in state["memory"]["teachers"]["effnet"]  # edge-eval prints the kNN's coverage


def test_eval_with_worst_and_pasted(fused_run: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    out, worst = tmp_path / "eval.json", tmp_path / "worst"
    argv = [str(fused_run), "--data", str(synthetic_dataset), "--worst", "1", "--worst-dir", str(worst)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert eval_main([*argv, "--json", str(out), "--quiet"]) == 0
        assert eval_main([str(fused_run), "--pasted", "--per-image", "1", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "gtrans-knn" and set(result["line"]) == {"0.01", "0.001"}
    assert len(json.loads((worst / "index.json").read_text())["images"]) == 2


def test_export_refuses_int8_and_the_bundle_matches_torch(
    fused_run: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert export_main([str(fused_run), "--out", str(bundle), "--int8"]) == EXIT_INPUT
        assert not bundle.exists()
        assert "--int8 is not offered for a gtrans-knn model: int8 noise in the teacher" in err.getvalue()
        rc = export_main([str(fused_run), "--out", str(bundle), "--fp16", "--data", str(synthetic_dataset)])
    assert rc == EXIT_OK, err.getvalue()
    from edge.trust.manifest import verify_bundle

    manifest = verify_bundle(bundle, ["fp32", "fp16"])
    assert manifest.model.kind == "gtrans-knn" and manifest.model.config["patchcore"]["backbone"] == "effnet"
    ckpt = load_checkpoint(fused_run)
    images = np.random.default_rng(4).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})
    with torch.no_grad():
        want = InferenceModel(ckpt.model, ckpt.preprocess).eval()(torch.from_numpy(images))
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-3, atol=1e-3)


def test_the_daemon_knows_every_kind_that_export_refuses_as_int8() -> None:
    """edge's hints must not tell a user to export --int8 for a kind whose model refuses it."""
    from edge.trust.precision_hints import NO_INT8_KINDS
    from training.checkpoint import MODEL_KINDS, _model_classes

    refusing = {k for k in MODEL_KINDS if getattr(_model_classes(k)[1], "int8_refusal", None)}
    assert refusing == set(NO_INT8_KINDS) and "gtrans-knn" in refusing
