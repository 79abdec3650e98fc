"""Checkpoints are data (weights_only) and refuse anything that is not theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge.capture.preprocess import Preprocess
from training.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint


def small_model():
    return build_model(
        "conv-ae",
        {"image_size": 64, "widths": (8, 16, 16, 16), "latent_dim": 16, "decoder_widths": (8, 8, 8, 8)},
    )


def test_round_trip(tmp_path: Path) -> None:
    model = small_model()
    path = save_checkpoint(tmp_path / "c.pt", "conv-ae", model, Preprocess(64, 64), data={"root": "/x"})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "conv-ae" and ckpt.preprocess == Preprocess(64, 64) and ckpt.data == {"root": "/x"}
    assert not ckpt.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)
    assert len(ckpt.sha256) == 64


def test_wrong_kind_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", "conv-ae", small_model(), Preprocess(64, 64))
    with pytest.raises(CheckpointError, match="holds a 'conv-ae' model, expected 'gtrans'"):
        load_checkpoint(path, expect_kind="gtrans")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, "conv-ae", small_model(), Preprocess(64, 64))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit the conv-ae architecture"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", "conv-ae", small_model(), Preprocess(64, 64))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_pickled_object_is_never_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "edge-anomaly-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # the project's words, never torch's advice to load unsafely
    assert "never runs code from a file" in str(err.value)
    assert "weights_only" not in str(err.value) and "trust" not in str(err.value)


def test_unreadable_messages_are_whole_sentences(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", "conv-ae", small_model(), Preprocess(64, 64))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "truncated or damaged" in text and text.endswith(".")
    assert "miniz" not in text and "weights_only" not in text


def test_foreign_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not an edge-anomaly checkpoint"):
        load_checkpoint(path)
