"""The kNN's image-level cue: a Gaussian on pooled features, in the score's units, in the exported graph.

Teachers run with random weights (as test_patchcore_teachers.py): what is checked is the arithmetic, the
invariant the daemon relies on (the score is the map's maximum) and that the graph carries the cue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.covariance import LedoitWolf

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from export.onnx_export import onnx_from_module
from training.checkpoint import load_checkpoint, save_checkpoint
from training.graph import InferenceModel
from training.models.image_cue import ImageCue
from training.models.map_scores import peak_to_score
from training.models.patchcore import PatchCore, PatchCoreConfig

SIZE = 56


def _features(n: int, c: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(n, c, 2, 2) features whose image means are correlated Gaussian draws (moved by ``shift``)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=torch.Generator().manual_seed(99)) / c**0.5  # one covariance for all
    means = torch.randn(n, c, generator=g, dtype=torch.float64) @ mix.double() + shift
    return means[:, :, None, None].expand(n, c, 2, 2).float()


def test_the_distance_is_sklearns_mahalanobis_and_calibration_puts_good_images_at_zero() -> None:
    train, held_out = _features(200, 6), _features(40, 6, seed=1)
    cue = ImageCue([6])
    cue.fit_gaussians([train.mean(dim=(2, 3))])
    want = (
        LedoitWolf()
        .fit(train.mean(dim=(2, 3)).double().numpy())
        .mahalanobis(held_out.mean(dim=(2, 3)).double().numpy())
    )
    np.testing.assert_allclose(cue.distances([held_out])[:, 0].numpy(), want, rtol=1e-3)
    local = torch.rand(40) * 2.0 + 5.0  # the local score on the same held-out images
    info = cue.calibrate(local, cue.distances([held_out]), weight=0.5)
    added = cue([held_out])
    assert abs(float(np.median(added.numpy()))) < 1e-4  # the median good image gains nothing
    assert info["gain"] > 0 and info["weight"] == 0.5
    far = cue([_features(5, 6, shift=3.0, seed=2)])  # images whose statistics moved
    assert (far > added.max()).all()


def test_no_cue_until_calibrated_and_too_few_images_is_a_clear_error() -> None:
    cue = ImageCue([4])
    assert (cue([_features(3, 4)]) == 0).all()
    with pytest.raises(ValueError, match="at least 2 training images"):
        cue.fit_gaussians([torch.zeros(1, 4)])


def _model(image_cue: float) -> PatchCore:
    torch.manual_seed(0)
    cfg = PatchCoreConfig(
        image_size=SIZE, backbone="effnet", bank_size=40, score="topk", topk_fraction=0.1, image_cue=image_cue
    )
    model = PatchCore(cfg).eval()
    x = torch.randn(9, 3, SIZE, SIZE)
    model.fit(x[:6], batch=2, x_val=x[6:])
    return model


def test_the_cue_moves_the_score_and_the_whole_map_and_survives_save_and_export(tmp_path: Path) -> None:
    plain, cued = _model(0.0), _model(0.5)  # the same seed: the same bank
    assert plain.cue is None and not any(k.startswith("cue.") for k in plain.state_dict())
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        s0, m0 = plain(x)
        s1, m1 = cued(x)
        added = cued.cue(cued.features(x))
    torch.testing.assert_close(s1, s0 + added)
    torch.testing.assert_close(s1, m1.flatten(1).amax(dim=1))  # the daemon's score is the map's max
    moved = (m1 - m0).abs() > 1e-6
    assert moved.any() and moved.flatten(1).sum(dim=1).max() <= cued.k + 1  # only the peak follows the cue

    pre = Preprocess(height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    back = load_checkpoint(save_checkpoint(tmp_path / "c.pt", "patchcore", cued, pre)).model
    module = InferenceModel(back, pre).eval()
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        want = InferenceModel(cued, pre).eval()(torch.from_numpy(images))
    onnx_from_module(module, pre, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-3, atol=1e-3)


def test_the_peak_follows_the_score_up_and_down_and_nothing_else_moves() -> None:
    amap = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    up = peak_to_score(amap, torch.tensor([120.0]), k=4)
    assert float(up.max()) == 120.0 and (up[amap <= 95] == amap[amap <= 95]).all()
    assert (up[amap > 95] > amap[amap > 95]).all() and float(up[amap == 98]) < 120.0  # in proportion
    down = peak_to_score(amap, torch.tensor([90.5]), k=4)
    assert float(down.max()) == 90.5 and (down[amap <= 90] == amap[amap <= 90]).all()


def test_settings_the_cue_cannot_work_with_are_refused() -> None:
    with pytest.raises(ValueError, match="image_cue must be >= 0"):
        PatchCore(PatchCoreConfig(image_size=SIZE, backbone="effnet", image_cue=-1.0))
    model = PatchCore(PatchCoreConfig(image_size=SIZE, backbone="effnet", bank_size=8, image_cue=0.5))
    with pytest.raises(ValueError, match="held-out good images"):
        model.fit(torch.randn(3, 3, SIZE, SIZE), batch=2)
