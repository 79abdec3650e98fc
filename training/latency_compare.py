"""CPU latency and size of exported graphs, measured side by side in one run (ONNX Runtime, batch 1).

A tiled bundle runs a frame's tiles as one batch: ``FRAMES`` times the default's graph at the batch of a
frame's tiles, so a frame's cost compares with GTrans's one pass in the same run.

    python -m training.latency_compare --out runs/latency.json

Latency does not depend on the weights or the bank's contents, only on the architecture and the bank's
shape, so each model is built with its config's shapes (random weights, a bank of the configured size)
and exported exactly as ``edge-export`` traces it (``export.onnx_export.onnx_from_module``). The models
are timed in interleaved rounds, so a load change on the machine hits them all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from export.onnx_export import onnx_from_module
from training.checkpoint import build_model
from training.geometry import tiled_banks
from training.graph import InferenceModel

# The reference every ratio is taken against: GTrans with its CNN teacher alone, the GTrans issue 24's
# latency target ("<= 3x GTrans's p50") was written against; GTrans's default now adds a ViT teacher, and a
# slower reference must not make the others look cheaper.
REFERENCE = "gtrans, CNN teacher (the reference)"
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    REFERENCE: ("gtrans", {"vit_layers": []}),
    "patchcore effnet 256 px, 16384 rows (the old default)": (
        "patchcore",
        {"backbone": "effnet", "image_size": 256, "bank_size": 16384},
    ),
    "patchcore effnet 224 px, 4096 rows": (
        "patchcore",
        {"backbone": "effnet", "image_size": 224, "bank_size": 4096},
    ),
    "patchcore vit 224 px, 1024 rows": (
        "patchcore",
        {"backbone": "vit", "image_size": 224, "vit_bank_size": 1024, "vit_pca_dim": 0},
    ),
    "patchcore both 224 px, 16384 + 4096 rows": (
        "patchcore",
        {"backbone": "both", "image_size": 224, "bank_size": 16384, "vit_bank_size": 4096, "vit_pca_dim": 0},
    ),
    "patchcore both 224 px, 4096 + 1024 rows": (
        "patchcore",
        {"backbone": "both", "image_size": 224, "bank_size": 4096, "vit_bank_size": 1024, "vit_pca_dim": 0},
    ),
    "patchcore vit 224 px, 8192 rows of 96 components": (
        "patchcore",
        {"backbone": "vit", "image_size": 224, "vit_bank_size": 8192, "vit_pca_dim": 96},
    ),
    "patchcore both 224 px, 4096 + 8192 rows of 96 components": (
        "patchcore",
        {"backbone": "both", "image_size": 224, "bank_size": 4096, "vit_bank_size": 8192, "vit_pca_dim": 96},
    ),
    "patchcore both 224 px, 4096 + 16384 rows of 48 components": (
        "patchcore",
        {"backbone": "both", "image_size": 224, "bank_size": 4096, "vit_bank_size": 16384, "vit_pca_dim": 48},
    ),
    "gtrans-knn (gtrans + patchcore defaults, one graph)": ("gtrans-knn", {}),
    "gtrans default (ViT-S/14 blocks 5 + 8 as a second teacher)": ("gtrans", {}),
    "patchcore vit 168 px, 1024 rows": (
        "patchcore",
        {"backbone": "vit", "image_size": 168, "vit_bank_size": 1024, "vit_pca_dim": 0},
    ),
    "patchcore both 168 px, 4096 + 1024 rows": (
        "patchcore",
        {"backbone": "both", "image_size": 168, "bank_size": 4096, "vit_bank_size": 1024, "vit_pca_dim": 0},
    ),
}


def tiled_default(tiles: int) -> tuple[str, tuple[str, dict[str, Any]]]:
    """The default kNN with the banks a bundle of ``tiles`` tiles a frame gets (``geometry.tiled_banks``)."""
    config, _ = tiled_banks("patchcore", {"image_size": 224}, tiles)
    name = (
        f"patchcore both 224 px, {config['bank_size']} + {config['vit_bank_size']} rows of 96 components "
        f"({tiles}x banks)"
    )
    return name, ("patchcore", config)


TILED = dict(tiled_default(n) for n in (2, 3, 4))  # 2 tiles a frame, 3 (ball_screw), 4 (DeepPCB, bottle)
CANDIDATES.update(TILED)
DEFAULT_KNN = "patchcore both 224 px, 4096 + 8192 rows of 96 components"
TILED_KNN, TILED_KNN_3 = tiled_default(4)[0], tiled_default(3)[0]
# a frame of N tiles: the candidate's graph at batch N (edge-train --geometry auto, --max-tiles)
FRAMES: dict[str, tuple[str, int]] = {
    "patchcore default, a frame of 3 tiles (batch 3)": (DEFAULT_KNN, 3),
    "patchcore default, a frame of 4 tiles (batch 4)": (DEFAULT_KNN, 4),
    "patchcore default tiled, 4x banks, a frame of 4 tiles (batch 4)": (TILED_KNN, 4),
    "patchcore default tiled, 3x banks, a frame of 3 tiles (batch 3)": (TILED_KNN_3, 3),
}


def export_one(kind: str, config: dict[str, Any], path: Path) -> Path:
    model = build_model(kind, config).eval()
    for _, search in getattr(model, "parts", list)():
        search.set_bank(torch.randn_like(search.bank))
    size = int(model.config.image_size)
    pre = Preprocess(height=size, width=size, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    onnx_from_module(InferenceModel(model, pre).eval(), pre, path)
    return path


def measure(
    paths: dict[str, Path], rounds: int, per_round: int, threads: int, batches: dict[str, int] | None = None
) -> dict[str, dict[str, float]]:
    """p50 / p90 per call; ``batches``: a graph's batch where it is not 1 (a frame of tiles)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {
        n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for n, p in paths.items()
    }
    inputs = {}
    for name, s in sessions.items():
        shape = [
            (batches or {}).get(name, 1) if not isinstance(d, int) else d for d in s.get_inputs()[0].shape
        ]
        inputs[name] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        s.run(None, {s.get_inputs()[0].name: inputs[name]})  # warm-up
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(per_round):
                t = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: inputs[name]})
                times[name].append(time.perf_counter() - t)
    return {
        n: {
            "p50_ms": 1e3 * float(np.median(t)),
            "p90_ms": 1e3 * float(np.quantile(t, 0.9)),
            "onnx_mib": paths[n].stat().st_size / 2**20,
        }
        for n, t in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated substrings: time GTrans and the candidates naming one")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    wanted = {
        n: c
        for n, c in CANDIDATES.items()
        if n == REFERENCE or not args.only or any(w in n for w in args.only.split(","))
    }
    frames = {n: f for n, f in FRAMES.items() if not args.only or any(w in n for w in args.only.split(","))}
    for graph, _ in frames.values():
        wanted.setdefault(graph, CANDIDATES[graph])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: export_one(k, c, Path(tmp) / f"{i}.onnx") for i, (n, (k, c)) in enumerate(wanted.items())}
        paths.update({n: paths[graph] for n, (graph, _) in frames.items()})
        batches = {n: batch for n, (_, batch) in frames.items()}
        result = measure(paths, args.rounds, args.per_round, args.threads, batches)
    base = result[REFERENCE]["p50_ms"]
    for name, r in result.items():
        r["x_gtrans"] = r["p50_ms"] / base
        print(
            f"{name:<55} p50 {r['p50_ms']:7.1f} ms  x{r['x_gtrans']:.2f}  {r['onnx_mib']:.1f} MiB",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "results": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
