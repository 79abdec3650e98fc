"""Shared data for the export tests: one tiny ConvAE trained on generated parts, once per process.

``tests/export/conftest.py`` exposes ``shared_tiny_model`` as the session fixture ``tiny_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from edge.capture.preprocess import Preprocess
from training.checkpoint import save_checkpoint
from training.data import fingerprint, good_images, load_images, split_train_val
from training.graph import Normalize
from training.models.conv_ae import ConvAE, ConvAEConfig
from training.synthetic import write_mvtec_dataset

SIZE = 64
TRAIN_STEPS = 120
BATCH = 8
TINY_CONFIG = ConvAEConfig(
    image_size=SIZE, widths=(8, 16, 32, 32), latent_dim=32, decoder_widths=(16, 16, 8, 8)
)


@dataclass(frozen=True)
class TinyModel:
    checkpoint: Path
    data: Path  # MVTec-layout folder: train/good (training + held-out slice), test/{good,blob,scratch}
    size: int = SIZE  # input height = width


def train_tiny_checkpoint(root: Path) -> TinyModel:
    """Generate parts, train the tiny ConvAE for a few steps, save a checkpoint like edge-train's."""
    data = write_mvtec_dataset(root / "parts", n_train=48, n_test_good=8, n_test_defect=8, size=SIZE, seed=3)
    pre = Preprocess(height=SIZE, width=SIZE)
    paths = good_images(data)
    train, val = split_train_val(paths, val_fraction=0.25, seed=0)
    model = _train(ConvAE(TINY_CONFIG), Normalize(pre)(torch.from_numpy(load_images(train, pre))))
    ckpt = save_checkpoint(
        root / "checkpoint.pt",
        "conv-ae",
        model,
        pre,
        data={
            "root": str(data.resolve()),
            "train_files": [str(p.resolve()) for p in train],
            "val_files": [str(p.resolve()) for p in val],
            "fingerprint": fingerprint(paths),
        },
    )
    return TinyModel(checkpoint=ckpt, data=data)


def _train(model: ConvAE, x: torch.Tensor) -> ConvAE:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, one thread trains this tiny model ~7x faster than two
    try:
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(TRAIN_STEPS):
            loss = model.training_loss(x[torch.randint(0, len(x), (BATCH,), generator=gen)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


_CACHE: dict[str, TinyModel] = {}


def shared_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The trained tiny model of this pytest session (trained on first use)."""
    if "model" not in _CACHE:
        _CACHE["model"] = train_tiny_checkpoint(tmp_path_factory.mktemp("tiny-conv-ae"))
    return _CACHE["model"]
