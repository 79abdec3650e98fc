"""The training loop: good images in, a checkpoint out, resumable, deterministic for a given seed.

Frozen backbones are run once over the training images and their outputs cached in memory (teacher
features for GTrans, encoder tokens for a frozen AnoViT, or the tokens entering its first fine-tuned
block): on a 2-core CPU that is most of the speed-up.
There is no augmentation, and each epoch's order comes from ``seed + epoch``, so a resumed run takes the
same steps as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import Tiling
from training import fusion_weight
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_model,
    load_checkpoint,
    model_class,
    save_checkpoint,
    settings_changed,
)
from training.corruption import corrupt_batch
from training.data import fingerprint, good_images, load_samples, split_train_val
from training.geometry import CHOICES, MAX_TILES, choose_geometry, preprocess, tiled_banks
from training.graph import Normalize
from training.progress import Progress, format_seconds

CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_MODEL = "patchcore"  # what edge-train trains without --model (its config defaults: docs/models.md)

# Per-model defaults chosen on generated data and CPU time, not tuned on any MVTec category.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gtrans": {"epochs": 10, "lr": 1e-3, "batch_size": 8},
    "anovit": {"epochs": 30, "lr": 2e-3, "batch_size": 8},
    "conv-ae": {"epochs": 30, "lr": 2e-3, "batch_size": 8},
    "patchcore": {"epochs": 0, "lr": 0.0, "batch_size": 16},  # nothing to train: the bank is filled once
}
# gtrans-knn: its GTrans part trains as gtrans does; the kNN part is filled after the last epoch
DEFAULTS["gtrans-knn"] = dict(DEFAULTS["gtrans"])


@dataclass
class TrainConfig:
    model: str
    data: Path
    out: Path
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    val_fraction: float = 0.1
    model_config: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    threads: int | None = None
    stop_after: int | None = None  # stop (resumably) after this many epochs, e.g. to time-box a session
    geometry: str = "auto"  # "auto" (measured, training.geometry), "letterbox" or "stretch"
    tiling: Tiling | None = None  # edge-train --tile: tiles of the good images at a scale are the samples
    max_tiles: int = MAX_TILES  # geometry auto, training-free kinds: tiles a frame may cost (1: never tile)

    def resolved(self, key: str) -> Any:
        value = getattr(self, key)
        return DEFAULTS[self.model][key] if value is None else value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def images_to_tensor(images: np.ndarray, pre: Preprocess) -> torch.Tensor:
    return Normalize(pre)(torch.from_numpy(images))


def input_size(kind: str, model_config: dict[str, Any]) -> int:
    if "image_size" in model_config:
        return int(model_config["image_size"])
    return int(build_model(kind, model_config).config.image_size)


def make_preprocess(
    kind: str, model_config: dict[str, Any], resize: str = "letterbox", tiling: Tiling | None = None
) -> Preprocess:
    """The model's input geometry; with ``tiling`` the input is one tile (``image_size`` is the tile)."""
    if tiling is not None:
        if int(model_config.get("image_size", tiling.tile)) != tiling.tile:
            raise ValueError(
                f"--tile {tiling.tile} is the model input; drop --set image_size={model_config['image_size']}"
            )
        model_config["image_size"] = tiling.tile
    return preprocess(input_size(kind, model_config), resize, tiling)


def resolve_geometry(cfg: TrainConfig, train_paths: list[Path], val_paths: list[Path]) -> dict[str, Any]:
    """The input geometry of a new run: as asked, or measured on its good images (``training.geometry``)."""
    if cfg.geometry not in CHOICES:
        raise ValueError(f"geometry must be one of {', '.join(CHOICES)}, got {cfg.geometry!r}")
    if cfg.geometry != "auto":
        return {"resize": cfg.geometry, "reason": "asked for (--geometry)"}
    if cfg.tiling is not None:
        return {"resize": "letterbox", "reason": "tiled: every tile is cut square at the bundle's scale"}
    size = input_size(cfg.model, cfg.model_config)
    # tiles multiply the samples: minutes for a training-free kind, every epoch for a trained one
    max_tiles = cfg.max_tiles if getattr(model_class(cfg.model), "training_free", False) else 1
    return choose_geometry(
        train_paths, val_paths, size, cfg.seed, log=lambda m: log(m, cfg.progress), max_tiles=max_tiles
    )


def resume_state(path: Path, kind: str, data_fp: str) -> Checkpoint | None:
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, expect_kind=kind)
    if ckpt.data.get("fingerprint") != data_fp:
        raise CheckpointError(
            f"{path} was trained on other images (data fingerprint differs); use a new --out directory"
        )
    return ckpt


class NormalizedView:
    """uint8 samples that slice as normalised float tensors: thousands of tiles held as bytes, not floats
    (a training-free model only ever reads them in batches)."""

    def __init__(self, images: np.ndarray, pre: Preprocess) -> None:
        self.images = images
        self.pre = pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> torch.Tensor:
        return images_to_tensor(np.ascontiguousarray(self.images[index]), self.pre)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the checkpoint path."""
    _clock["started"] = time.perf_counter()
    if cfg.model not in DEFAULTS:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(DEFAULTS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    paths = good_images(Path(cfg.data))
    train_paths, val_paths = split_train_val(paths, cfg.val_fraction, cfg.seed)
    data_fp = fingerprint(paths)
    data_info = {
        "root": str(Path(cfg.data).resolve()),
        "train_files": [str(p.resolve()) for p in train_paths],
        "val_files": [str(p.resolve()) for p in val_paths],
        "fingerprint": data_fp,
    }

    previous = resume_state(ckpt_path, cfg.model, data_fp)
    if previous is not None:  # a run continues (or stands) only with the settings it was started with
        tile_sized = previous.preprocess.tiling is not None and "image_size" not in cfg.model_config
        changed = settings_changed(
            cfg.model, previous.model.config, cfg.model_config, skip=("image_size",) if tile_sized else ()
        )
        if changed:
            raise CheckpointError(
                f"{ckpt_path} was trained with other settings ({'; '.join(changed)}); use a new --out "
                f"directory, or --set the settings it has"
            )
    if previous is not None and previous.train_state.get("completed"):
        log(f"{ckpt_path} is already complete; nothing to do (use a new --out to train again)", cfg.progress)
        return ckpt_path
    # geometry auto without --tile takes the tiling the run chose; anything asked for must match it
    asked = cfg.tiling is not None or cfg.geometry != "auto"
    if previous is not None and asked and previous.preprocess.tiling != cfg.tiling:
        raise CheckpointError(f"{ckpt_path} was trained with another tiling; use a new --out directory")
    if previous is not None:
        pre = previous.preprocess
        data_info["geometry"] = previous.data.get("geometry", {"resize": pre.resize})
    else:
        data_info["geometry"] = resolve_geometry(cfg, train_paths, val_paths)
        tiling = cfg.tiling or Tiling.from_dict(data_info["geometry"].get("tiling"))
        # make_preprocess before the model: with a tiling it sets the model's image_size to the tile
        pre = make_preprocess(cfg.model, cfg.model_config, data_info["geometry"]["resize"], tiling)
    log(
        f"loading {len(train_paths)} training images ({len(val_paths)} held out for validation)", cfg.progress
    )
    u8_train = load_samples(train_paths, pre)
    model_config = cfg.model_config
    if pre.tiling is not None:
        log(
            f"{len(u8_train)} training tiles of {pre.tiling.tile} px at scale {pre.tiling.scale:g}",
            cfg.progress,
        )
        if previous is None:  # a tiled kNN's banks grow with the tiles a frame (geometry.tiled_banks)
            model_config, data_info["banks"] = tiled_banks(
                cfg.model, cfg.model_config, len(u8_train) / max(1, len(train_paths))
            )
            if data_info["banks"]:
                log(data_info["banks"]["reason"], cfg.progress)
    model = previous.model if previous is not None else build_model(cfg.model, model_config)
    if previous is None:
        model.load_pretrained()
    if getattr(model, "training_free", False) and pre.tiling is not None:  # many tiles: normalise per batch
        x_val_lazy = NormalizedView(load_samples(val_paths, pre), pre) if val_paths else None
        return fit_memory(cfg, model, pre, NormalizedView(u8_train, pre), x_val_lazy, data_info, ckpt_path)
    x_train = images_to_tensor(u8_train, pre)
    x_val = images_to_tensor(load_samples(val_paths, pre), pre) if val_paths else None
    if getattr(model, "training_free", False):
        return fit_memory(cfg, model, pre, x_train, x_val, data_info, ckpt_path)
    if getattr(model, "needs_held_out", False) and (x_val is None or len(x_val) < 2):
        raise ValueError(
            f"{cfg.model} fits its score normalisation on held-out good images; train with "
            "--val-fraction > 0 and at least 2 held-out images"
        )
    model.eval()
    cached = model.cache_frozen(x_train)

    epochs, batch_size, lr = cfg.resolved("epochs"), cfg.resolved("batch_size"), cfg.resolved("lr")
    optimizer = model.configure_optimizer(lr)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=epochs * steps_per_epoch,
        pct_start=0.1,
    )
    state: dict[str, Any] = {"epoch": 0, "history": [], "train_seconds": 0.0, "completed": False}
    if previous is not None:
        optimizer.load_state_dict(previous.train_state["optimizer"])
        schedule.load_state_dict(previous.train_state["scheduler"])
        state.update({k: previous.train_state[k] for k in ("epoch", "history", "train_seconds")})
        log(f"resuming {ckpt_path} at epoch {state['epoch']}/{epochs}", cfg.progress)

    progress = Progress(
        total=epochs * steps_per_epoch, done=state["epoch"] * steps_per_epoch, enabled=cfg.progress
    )
    last = epochs if cfg.stop_after is None else min(epochs, cfg.stop_after)
    for epoch in range(state["epoch"], last):
        started = time.perf_counter()
        train_loss = run_epoch(
            cfg, model, (x_train, u8_train, pre), cached, optimizer, schedule, epoch, batch_size, progress
        )
        if epoch + 1 == epochs and hasattr(model, "fit_after_training"):  # e.g. gtrans-knn's kNN part
            state["memory"] = model.fit_after_training(
                x_train, x_val, batch=batch_size, seed=cfg.seed, log=lambda m: log(m, cfg.progress)
            )
        val_loss = validation_loss(model, x_val)
        val_fit = held_out_loss(model, x_val)
        state["train_seconds"] += time.perf_counter() - started
        state["epoch"] = epoch + 1
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "held_out_loss": val_fit}
        )
        state["completed"] = epoch + 1 == epochs
        progress.note(
            f"epoch {epoch + 1}/{epochs} loss: train {train_loss:.4f} held-out {val_fit:.4f} "
            f"(x{val_fit / train_loss:.2f}); held-out mean score {val_loss:.4f}"
        )
        save_checkpoint(
            ckpt_path,
            cfg.model,
            model,
            pre,
            data=data_info,
            train_state={
                **state,
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "seed": cfg.seed,
            },
        )
    progress.close()
    log(f"wrote {ckpt_path} ({state['train_seconds']:.0f} s of training)", cfg.progress)
    return ckpt_path


def fit_memory(cfg, model, pre, x_train, x_val, data_info, ckpt_path: Path) -> Path:
    """A training-free model (PatchCore): fill its memory from the training images in one pass."""
    started = time.perf_counter()
    batch = cfg.resolved("batch_size")
    measure_cue = (  # x_val holds at least one input per held-out file
        fusion_weight.applies(model)
        and "image_cue" not in cfg.model_config
        and len(data_info["val_files"]) >= 2
    )
    if measure_cue:
        model.prepare_cue()  # its Gaussians come from the banks' pass; its weight is measured below
    info = model.fit(x_train, batch=batch, seed=cfg.seed, log=lambda m: log(m, cfg.progress), x_val=x_val)
    if fusion_weight.applies(model):
        data_info.update(resolve_fusion(cfg, model, pre, data_info["val_files"], x_val, measure_cue))
        if measure_cue:  # the measurement calibrated a cue it kept at the final ViT weight
            info["image_cue"] = data_info["image_cue"]["calibration"]
        elif getattr(model, "cue", None) is not None:  # an asked cue is scaled to the fused map: again
            info["image_cue"] = model.calibrate_image_cue(x_val, batch=batch)
    seconds = time.perf_counter() - started
    val_loss = validation_loss(model, x_val)
    state = {
        "epoch": 0,
        "history": [{"epoch": 0, "train_loss": float("nan"), "val_loss": val_loss}],
        "train_seconds": seconds,
        "completed": True,
        "seed": cfg.seed,
        "memory": info,
    }
    save_checkpoint(ckpt_path, cfg.model, model, pre, data=data_info, train_state=state)
    log(
        f"wrote {ckpt_path} ({seconds:.0f} s to fill the memory bank; held-out mean score {val_loss:.4f})",
        cfg.progress,
    )
    return ckpt_path


def resolve_fusion(
    cfg: TrainConfig, model: Any, pre: Preprocess, val_files: list[str], x_val: Any, measure_cue: bool
) -> dict[str, Any]:
    """The fused kNN's ViT weight (``fusion``) and, with ``measure_cue``, its image cue's weight
    (``image_cue``): as asked (``--set``), or measured on the held-out images (``training.fusion_weight``,
    one probe for both)."""
    paths = [Path(p) for p in val_files]
    say = lambda m: log(m, cfg.progress)  # noqa: E731
    asked = "vit_weight" in cfg.model_config
    needed = len(paths) >= 2 and (measure_cue or not asked)  # fewer: nothing to measure on
    probe = fusion_weight.probe_maps(model, pre, paths, cfg.seed, say) if needed else None
    if asked:
        out = {"fusion": {"vit_weight": model.config.vit_weight, "reason": "asked for (--set vit_weight)"}}
    else:
        out = {"fusion": fusion_weight.choose_vit_weight(model, pre, paths, cfg.seed, say, probe)}
    if measure_cue:
        batch = cfg.resolved("batch_size")
        out["image_cue"] = fusion_weight.choose_image_cue(model, pre, probe, x_val, batch, say)
    elif "image_cue" in cfg.model_config:
        out["image_cue"] = {"image_cue": model.config.image_cue, "reason": "asked for (--set image_cue)"}
    return out


def run_epoch(cfg, model, train_set, cached, optimizer, schedule, epoch, batch_size, progress) -> float:
    """One pass in a seeded order; a denoising GTrans gets its corruptions from the same seed, so a
    resumed run replays them."""
    x_train, u8_train, pre = train_set
    model.train()
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    share = model.corruption_share()  # a denoising student's share of corrupted images
    rng = np.random.default_rng([cfg.seed, epoch, 17])
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        corrupted = None
        if share > 0:
            corrupted = images_to_tensor(corrupt_batch(u8_train[idx.numpy()], share, rng), pre)
        loss = model.batch_loss(x_train, cached, idx, corrupted)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        progress.step(len(idx), loss=float(loss.detach()))
    return total / max(count, 1)


@torch.no_grad()
def validation_loss(model: nn.Module, x_val: torch.Tensor | None) -> float:
    """Mean raw score on held-out good images: it should fall as the model learns normality."""
    if x_val is None or len(x_val) == 0:
        return float("nan")
    model.eval()
    scores = torch.cat([model(x_val[i : i + 16])[0] for i in range(0, len(x_val), 16)])
    return float(scores.mean())


@torch.no_grad()
def held_out_loss(model: nn.Module, x_val: torch.Tensor | None) -> float:
    """The training loss's own quantity on held-out good images (NaN without them or for a model that
    has no loss): its ratio to the training loss is the overfitting a user would otherwise not see."""
    if x_val is None or len(x_val) == 0 or not hasattr(model, "training_loss"):
        return float("nan")
    model.eval()
    losses = [
        float(model.training_loss(x_val[i : i + 16])) * len(x_val[i : i + 16])
        for i in range(0, len(x_val), 16)
    ]
    return sum(losses) / len(x_val)


_clock = {"started": time.perf_counter()}  # train() resets it: the log's lines carry the run's elapsed time


def log(message: str, enabled: bool = True) -> None:
    """A line of the training log, stamped with the time since the run began (m:ss): a probe or a coreset
    that takes minutes shows where the run's time goes without a profiler."""
    if enabled:
        elapsed = format_seconds(time.perf_counter() - _clock["started"])
        print(f"[{elapsed}] {message}", file=sys.stderr, flush=True)
