"""The sweep's bank builder: the one the decisions in docs/accuracy.md were measured with."""

from __future__ import annotations

import torch

from training.knn_sweep import _bank, bank_spec


def test_bank_specs_name_rows_and_components() -> None:
    assert bank_spec("8192x96") == (8192, 96)
    assert bank_spec("1024") == (1024, 0)
    assert bank_spec("0") == (0, 0)


def test_a_projected_sweep_bank_searches_like_the_plain_one_on_low_rank_features() -> None:
    """Features of rank 4 in 32-d: a 4-component bank of every patch finds the same distances."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]
    f = (torch.randn(6, 5, 5, 4, generator=g) @ basis.t()).permute(0, 3, 1, 2).contiguous()  # (6, 32, 5, 5)
    plain, projected = _bank(f[:4], 0, "euclidean"), _bank(f[:4], 0, "euclidean", pca=4)
    assert projected.bank.shape == (100, 4) and plain.bank.shape == (100, 32)
    torch.testing.assert_close(projected(f[4:]), plain(f[4:]), atol=1e-3, rtol=1e-3)
    small = _bank(f[:4], 10, "euclidean", pca=2)
    assert small.bank.shape == (10, 2)
    assert (small(f[4:]) < plain(f[4:]) - 1e-3).any()  # 2 of 4 components: distances shrink (it projects)


def test_the_rule_ranks_the_candidate_whose_map_finds_the_defects_first(tmp_path) -> None:
    """Two defect sets; the ViT's maps mark the defects, the EfficientNet's are hot on good images only:
    the ViT alone (weight 1) falls short of a yardstick of 0.9 by less than the even mix does."""
    import json

    import numpy as np

    from training.knn_sweep import RULE_METRICS, decide

    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    masks = np.zeros((20, 224, 224), bool)
    masks[10:, 56:112, 56:112] = True  # patch (1, 1) of a 4 x 4 grid at 224 px
    yard = {m: 0.9 for m in RULE_METRICS}
    runs = []
    for d in ("cutpaste", "small"):
        vit = np.repeat(rng.random(20).astype(np.float32), 16).reshape(20, 1, 4, 4)  # a level per image
        vit[10:, :, 1, 1] += 1.5  # the defect's patch
        effnet = np.zeros((20, 1, 4, 4), np.float32)  # hot on good images only, at random places
        for i in range(10):
            effnet[i, 0, rng.integers(4), rng.integers(4)] = rng.uniform(1.0, 5.0)
        np.savez(
            tmp_path / f"ks-x-raw-{d}.npz",
            labels=labels,
            masks=masks,
            types=np.array(["good"] * 10 + ["d"] * 10),
            effnet_4=effnet,
            vit_4=vit,
            vit_0=vit,
        )
        runs += [{"defects": d, "teacher": t, "bank": 0, "score": "max", **yard} for t in ("effnet", "vit")]
    (tmp_path / "ks-x.json").write_text(
        json.dumps({"data": "x", "defects": ["cutpaste", "small"], "runs": runs})
    )
    ranked = decide([tmp_path / "ks-x.json"], [0.5, 1.0], [("max", 0.01)])
    assert [r["vit_weight"] for r in ranked] == [1.0, 0.5]
    assert ranked[0]["sum"] < ranked[1]["sum"]
    assert ranked[1]["x/small"]["image_auroc"] < 0.9 <= ranked[0]["x/small"]["image_auroc"]
    assert {"x/cutpaste", "x/small"} <= set(ranked[0])  # every set scored, the full banks not candidates
    assert ranked[0]["vit"] == "vit_4"
