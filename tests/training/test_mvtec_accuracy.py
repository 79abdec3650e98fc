"""Accuracy on the real MVTec AD bottle category (slow: full training; run with `bash scripts/test.sh -m
slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluate import evaluate
from training.train import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.mvtec]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mvtec-runs")


def test_gtrans_reaches_the_issue_targets(mvtec_bottle: Path, runs: Path) -> None:
    ckpt = train(TrainConfig(model="gtrans", data=mvtec_bottle, out=runs / "gtrans", progress=False))
    result = evaluate(ckpt, mvtec_bottle)
    assert result["image_auroc"] >= 0.995
    assert result["pixel_auroc"] >= 0.975
    assert result["aupro"] >= 0.90


@pytest.mark.xfail(
    strict=True,  # the day it passes, the marker fails the run, so the README and this line get updated
    reason="open target (issue 3): on bottle seed 0 AnoViT trails conv-ae on image AUROC (0.909 vs 0.917); "
    "over four seeds it leads on image AUROC and trails on pixel AUROC (README, Measured)",
)
def test_anovit_beats_the_conv_baseline(mvtec_bottle: Path, runs: Path) -> None:
    vit = evaluate(
        train(TrainConfig(model="anovit", data=mvtec_bottle, out=runs / "anovit", progress=False)),
        mvtec_bottle,
    )
    conv = evaluate(
        train(TrainConfig(model="conv-ae", data=mvtec_bottle, out=runs / "conv", progress=False)),
        mvtec_bottle,
    )
    assert vit["image_auroc"] > conv["image_auroc"]
    assert vit["pixel_auroc"] > conv["pixel_auroc"]
