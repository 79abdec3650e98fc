"""PatchCore-style kNN: coreset choice, the exported search, training-free fit, and the deployed bundle."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.cli import EXIT_INPUT, EXIT_OK
from export.cli import main as export_main
from tests.training.checks import assert_finds_blobs
from training.checkpoint import build_model, load_checkpoint
from training.cli import eval_main, train_main
from training.graph import InferenceModel
from training.models.memory_bank import NearestBank, greedy_coreset
from training.synthetic import good_part

SMALL = ["image_size=128", "bank_size=512", 'backbone="effnet"']


def test_coreset_keeps_a_rare_cluster_that_a_uniform_sample_drops() -> None:
    g = torch.Generator().manual_seed(0)
    common = torch.randn(3000, 16, generator=g)
    rare = torch.randn(3, 16, generator=g) * 0.01 + 20.0  # 0.1 % of the patches, far from the rest
    rows = torch.cat([common, rare])
    picked = greedy_coreset(rows, 20, projection_dim=8, seed=1)
    assert len(set(picked.tolist())) == 20
    assert any(i >= 3000 for i in picked.tolist()), "greedy k-center must reach the far cluster"
    uniform = torch.randperm(len(rows), generator=g)[:20]
    # the greedy coreset covers every row at least as tightly as a uniform sample of the same size
    radius = torch.cdist(rows, rows[picked]).amin(dim=1).max()
    radius_uniform = torch.cdist(rows, rows[uniform]).amin(dim=1).max()
    assert radius < radius_uniform


def test_coreset_of_everything_is_everything() -> None:
    assert greedy_coreset(torch.randn(5, 4), 10, 4).tolist() == [0, 1, 2, 3, 4]


def test_bank_search_is_the_nearest_neighbour_distance() -> None:
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(300, 24, generator=g)
    search = NearestBank(300, 24)
    search.set_bank(bank)
    f = torch.randn(2, 24, 5, 7, generator=g)
    got = search(f)  # (2, 1, 5, 7)
    q = f.flatten(2).transpose(1, 2)  # (2, 35, 24)
    want = torch.cdist(q, bank.expand(2, -1, -1)).amin(dim=-1).view(2, 1, 5, 7)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="bank must be"):
        search.set_bank(torch.zeros(10, 24))


def test_score_independent_of_batch() -> None:
    model = build_model("patchcore", {"image_size": 64, "bank_size": 64, "backbone": "effnet"}).eval()
    model.search.set_bank(torch.randn(64, model.dim))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        scores, maps = model(x)
        for i in range(3):
            s, m = model(x[i : i + 1])
            torch.testing.assert_close(s, scores[i : i + 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(m, maps[i : i + 1], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def patchcore_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("patchcore-run")
    args = ["--model", "patchcore", "--data", str(synthetic_dataset), "--out", str(out), "--quiet"]
    for s in SMALL:
        args += ["--set", s]
    assert train_main(args) == 0
    return out / "checkpoint.pt"


def test_fit_fills_the_bank_from_training_patches_only(patchcore_run: Path) -> None:
    ckpt = load_checkpoint(patchcore_run)
    state = ckpt.train_state
    assert state["completed"] and state["epoch"] == 0
    n_train = len(ckpt.data["train_files"])
    assert state["memory"]["patches"] == n_train * (128 // 8) ** 2
    bank = ckpt.model.search.bank
    assert bank.shape == (512, ckpt.model.dim)
    assert torch.isfinite(bank).all() and bank.abs().sum() > 0
    torch.testing.assert_close(ckpt.model.search.bank_sqnorm, bank.pow(2).sum(dim=1))


def test_defects_score_higher_and_peak_inside(patchcore_run: Path) -> None:
    assert_finds_blobs(patchcore_run, seed=7, max_peak_distance=6)


def test_eval_reports_operating_points(
    patchcore_run: Path, synthetic_dataset: Path, tmp_path: Path, capsys
) -> None:
    import json

    out = tmp_path / "eval.json"
    assert eval_main([str(patchcore_run), "--data", str(synthetic_dataset), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "patchcore"
    assert set(result["recall_at_fpr"]) == {"0.01", "0.001"}
    assert 0.0 <= result["recall_at_fpr"]["0.001"] <= result["recall_at_fpr"]["0.01"] <= 1.0
    assert "recall at 1.0% false alarms" in capsys.readouterr().out


def test_bundle_runs_the_search_in_onnxruntime(
    patchcore_run: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        refused = export_main(
            [str(patchcore_run), "--out", str(bundle), "--int8", "--data", str(synthetic_dataset)]
        )
        assert refused == EXIT_INPUT and not bundle.exists()
        assert "--int8 is not offered for a patchcore model" in err.getvalue()
        rc = export_main(
            [str(patchcore_run), "--out", str(bundle), "--fp16", "--data", str(synthetic_dataset)]
        )
    assert rc == EXIT_OK, err.getvalue()
    from edge.trust.manifest import verify_bundle

    assert verify_bundle(bundle, ["fp32", "fp16"]).model.kind == "patchcore"  # the daemon would load it
    ckpt = load_checkpoint(patchcore_run)
    model = InferenceModel(ckpt.model, ckpt.preprocess).eval()
    rng = np.random.default_rng(3)
    images = np.stack([ckpt.preprocess.frame_to_input(good_part(rng, 128)) for _ in range(2)])
    session = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: images})
    with torch.no_grad():
        want = model(torch.from_numpy(images))
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-3, atol=1e-3)
    # the bank travels as a constant: the graph has a MatMul against it and a ReduceMin over it
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundle / "model.fp32.onnx")).graph.node}
    assert {"MatMul", "ReduceMin"} <= ops
