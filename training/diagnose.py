"""Why a GTrans checkpoint falls short on a category, from its own good images (no test split needed).

    python -m training.diagnose runs/gtrans-pcb/checkpoint.pt

Two questions, each answered on data the evaluation of record does not use:

- **Does the student overfit?** The training loss on a slice of the training images against the same
  loss on the held-out good images. A ratio near 1 says the student fits unseen normal images as well as
  seen ones, so more regularisation will not help; a large one says it memorises.
- **Which scale finds the defects?** Image and pixel AUROC of each scale's map alone and of the
  combinations, on defects pasted onto half of the held-out images (the other half sets each scale's
  normal level), so a change to how scales are combined can be judged without a labelled test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.anomaly_map import MapHead
from training.checkpoint import load_checkpoint
from training.data import load_images
from training.graph import Normalize
from training.metrics import image_auroc, pixel_auroc
from training.pasted_defects import pasted_set
from training.train import held_out_loss, images_to_tensor


@torch.no_grad()
def scale_maps(model: Any, images: np.ndarray, norm: Normalize, batch: int = 8) -> list[torch.Tensor]:
    """Per scale (N, 1, h, w) at the finest scale's resolution, before smoothing."""
    parts = []
    for i in range(0, len(images), batch):
        student_input, teacher = model.agn(norm(torch.from_numpy(images[i : i + batch])))
        maps = model.scale_maps(model.student(student_input), teacher)
        size = maps[0].shape[-2:]
        parts.append([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps])
    return [torch.cat(p) for p in zip(*parts, strict=True)]


def diagnose(checkpoint: Path, train_stride: int = 6) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint, expect_kind="gtrans")
    model, pre = ckpt.model.eval(), ckpt.preprocess
    train = [Path(p) for p in ckpt.data["train_files"]][::train_stride]
    val = [Path(p) for p in ckpt.data.get("val_files", [])]
    if len(val) < 4:
        raise ValueError(f"{checkpoint} holds out {len(val)} good images; diagnosis needs at least 4")
    good = load_images(val, pre)
    x_train, x_val = images_to_tensor(load_images(train, pre), pre), images_to_tensor(good, pre)
    train_loss, val_loss = held_out_loss(model, x_train), held_out_loss(model, x_val)
    fit, probe = good[: len(good) // 2], good[len(good) // 2 :]
    images, masks, labels, _ = pasted_set(probe, 3, 0)
    norm = Normalize(pre)
    normal = [(float(m.mean()), float(m.std())) for m in scale_maps(model, fit, norm)]
    maps = scale_maps(model, images, norm)
    head = MapHead(pre.height, pre.width, sigma=model.config.sigma)

    def score(raw: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            s, amap = head(raw)
        return {
            "image_auroc": image_auroc(labels, s.numpy()),
            "pixel_auroc": pixel_auroc(masks, amap.numpy()),
        }

    names = [f"scale {i}" for i in range(len(model.config.teacher_blocks))] + (["ViT"] if model.vit else [])
    variants = {f"{name} alone": score(m) for name, m in zip(names, maps, strict=True)}
    variants["mean of scales (the model's own map)"] = score(torch.stack(maps).mean(0))
    variants["mean of z-scored scales"] = score(
        torch.stack([(m - mu) / sd for m, (mu, sd) in zip(maps, normal, strict=True)]).mean(0)
    )
    return {
        "train_loss": train_loss,
        "held_out_loss": val_loss,
        "overfit_ratio": val_loss / train_loss,
        "scale_normal_mean_std": normal,
        "pasted": variants,
        "n_pasted_images": int(len(images)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    args = p.parse_args(argv)
    r = diagnose(args.checkpoint)
    print(
        f"loss on training images {r['train_loss']:.4f}, on held-out good images {r['held_out_loss']:.4f} "
        f"(ratio {r['overfit_ratio']:.2f})"
    )
    print(f"pasted defects on held-out images ({r['n_pasted_images']} images):")
    for name, m in r["pasted"].items():
        print(f"  {name:<40} image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
