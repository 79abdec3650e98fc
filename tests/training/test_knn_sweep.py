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
