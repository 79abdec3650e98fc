"""Bare-backend throughput and latency by precision and batch, plus the torch-eager reference and memory.

Every cell (engine x precision x batch) is warmed up first (not counted), then measured in ``rounds``
slices that are interleaved: round 1 runs a slice of every cell, round 2 again (in a rotated order), and so
on. A machine that slows down half-way (thermal throttling, a neighbour's job) slows every cell alike, so
the ratios between cells stay meaningful even when the absolute numbers drift.

Throughput is images per second of backend time (sum of the timed ``run`` calls); latency is per call, i.e.
per batch. Statistics use every timed call; the JSON keeps at most ``MAX_SAMPLES`` of them for plotting.

Peak memory is measured per precision in a fresh child process (spawned, not forked), because resident
memory in a process that already holds the other precisions' sessions says nothing about one of them.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.trust.manifest import Manifest

MAX_SAMPLES = 2000
DEFAULT_BATCHES = (1, 2, 4, 8)
MEMORY_PROBE_TIMEOUT_S = 300.0


@dataclass
class Engine:
    """Something that runs uint8 NHWC batches: a backend of the bundle or the torch-eager reference."""

    engine: str  # "onnxruntime", "tensorrt", "torch-eager"
    precision: str
    input_hw: tuple[int, int]
    color_order: str
    run: Callable[[np.ndarray], Any]
    close: Callable[[], None]
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.engine}/{self.precision}"


@dataclass
class BenchSettings:
    duration_s: float = 10.0  # measured seconds per cell, summed over rounds
    warmup_s: float = 1.0  # per cell, before the first round; never counted
    rounds: int = 5
    min_calls: int = 3  # per slice and per warm-up, however short the durations

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.warmup_s < 0 or self.rounds < 1 or self.min_calls < 1:
            raise ValueError(
                f"benchmark settings out of range: duration {self.duration_s} s (> 0), warm-up "
                f"{self.warmup_s} s "
                f"(>= 0), rounds {self.rounds} (>= 1), min calls {self.min_calls} (>= 1)"
            )


@dataclass
class Cell:
    engine: Engine
    batch: int
    inputs: np.ndarray
    samples_ms: list[float] = field(default_factory=list)
    per_round_ips: list[float] = field(default_factory=list)
    warmup_calls: int = 0


# --- statistics -------------------------------------------------------------------------------------------


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, min, p50, p90, p99, max of a latency sample, in milliseconds (None for an empty sample)."""
    if len(samples_ms) == 0:
        return {"n": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(a.max()),
    }


def subsample(values: Sequence[float], limit: int = MAX_SAMPLES) -> list[float]:
    """At most ``limit`` evenly spaced values (for plots); statistics are computed on the full sample."""
    if len(values) <= limit:
        return [float(v) for v in values]
    idx = np.linspace(0, len(values) - 1, limit).round().astype(int)
    return [float(values[i]) for i in idx]


# --- inputs -----------------------------------------------------------------------------------------------


def generated_inputs(n: int, input_hw: tuple[int, int], color_order: str, seed: int = 7) -> np.ndarray:
    """``n`` generated good parts at the model's size and colour order: realistic pixels, no dataset
    needed."""
    from training.synthetic import good_part

    rng = np.random.default_rng(seed)
    h, w = input_hw
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frame = cv2.resize(good_part(rng, max(h, w)), (w, h), interpolation=cv2.INTER_AREA)
        out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if color_order == "RGB" else frame
    return out


def batch_of(pool: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images from ``pool`` (repeated when the pool is smaller), C-contiguous."""
    idx = np.arange(batch) % len(pool)
    return np.ascontiguousarray(pool[idx])


# --- engines ----------------------------------------------------------------------------------------------


def open_backend(
    backend: str, bundle: Path, manifest: Manifest, precision: str, options: dict[str, object]
) -> Engine:
    """One precision of the bundle through ``edge.scoring.backends.load_backend`` (what the daemon runs)."""
    from edge.scoring.backends import load_backend

    b = load_backend(backend, bundle, manifest, precision, **options)
    device = ",".join(getattr(b, "providers", [])) or ("cuda" if backend == "tensorrt" else "cpu")
    return Engine(
        engine=backend,
        precision=precision,
        input_hw=tuple(b.input_hw),
        color_order=manifest.input.color_order,
        run=b.run,
        close=b.close,
        device=device,
    )


def torch_device(wanted: str) -> str:
    """'auto' -> cuda where torch sees a GPU, else cpu; an explicit 'cuda' without a GPU is an error."""
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "--torch-device cuda was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --torch-device cpu or install a CUDA build of torch"
        )
    return wanted


def open_torch(checkpoint: Path, device: str) -> Engine:
    """The torch-eager reference: ``InferenceModel`` from the checkpoint, fp32, on ``device``.

    The timed call has the same contract as a backend's ``run``: numpy uint8 in, numpy float32 out, so host
    <-> device copies are inside the measurement on a GPU exactly as they are for TensorRT.
    """
    import torch

    from training.checkpoint import load_checkpoint
    from training.graph import InferenceModel

    ckpt = load_checkpoint(checkpoint)
    dev = torch.device(torch_device(device))
    model = InferenceModel(ckpt.model, ckpt.preprocess).to(dev).eval()

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            scores, maps = model(torch.from_numpy(images).to(dev))
            return scores.float().cpu().numpy(), maps.float().cpu().numpy()

    def close() -> None:
        model.to("cpu")

    pre = ckpt.preprocess
    return Engine(
        engine="torch-eager",
        precision="fp32",
        input_hw=(pre.height, pre.width),
        color_order=pre.color_order,
        run=run,
        close=close,
        device=str(dev),
    )


# --- measurement ------------------------------------------------------------------------------------------


def _timed_call(engine: Engine, images: np.ndarray) -> float:
    t0 = time.perf_counter()
    engine.run(images)
    return (time.perf_counter() - t0) * 1000.0


def run_for(engine: Engine, images: np.ndarray, seconds: float, min_calls: int) -> list[float]:
    """Timed calls until ``seconds`` of backend time and at least ``min_calls`` calls."""
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_calls or spent < seconds * 1000.0:
        ms = _timed_call(engine, images)
        samples.append(ms)
        spent += ms
    return samples


def warm_up(cell: Cell, settings: BenchSettings) -> None:
    """Runs the cell (first call loads kernels, allocates arenas, may build engines); nothing is kept."""
    cell.warmup_calls = len(run_for(cell.engine, cell.inputs, settings.warmup_s, settings.min_calls))


def measure(cells: list[Cell], settings: BenchSettings, log: Callable[[str], None] = lambda s: None) -> None:
    """Warm every cell, then run ``settings.rounds`` interleaved rounds; samples land in the cells."""
    for cell in cells:
        warm_up(cell, settings)
    slice_s = settings.duration_s / settings.rounds
    for r in range(settings.rounds):
        shift = r % len(cells) if cells else 0
        for cell in cells[shift:] + cells[:shift]:  # rotate so no cell is always first after a pause
            samples = run_for(cell.engine, cell.inputs, slice_s, settings.min_calls)
            cell.samples_ms.extend(samples)
            cell.per_round_ips.append(cell.batch * len(samples) / (sum(samples) / 1000.0))
        log(f"  round {r + 1}/{settings.rounds} done")


def cell_result(cell: Cell) -> dict[str, Any]:
    """The JSON of one cell; throughput = images / backend seconds over every timed call."""
    seconds = sum(cell.samples_ms) / 1000.0
    images = cell.batch * len(cell.samples_ms)
    return {
        "engine": cell.engine.engine,
        "precision": cell.engine.precision,
        "device": cell.engine.device,
        "batch": cell.batch,
        "calls": len(cell.samples_ms),
        "warmup_calls": cell.warmup_calls,
        "images": images,
        "seconds": seconds,
        "throughput_ips": images / seconds,
        "throughput_per_round_ips": cell.per_round_ips,
        "latency_ms": latency_summary(cell.samples_ms),
        "latency_per_image_ms": (sum(cell.samples_ms) / images) if images else None,
        "samples_ms": subsample(cell.samples_ms),
    }


def make_cells(
    engines: Sequence[Engine], batches: Sequence[int], data_pool: np.ndarray | None = None
) -> list[Cell]:
    """One cell per engine and batch; inputs are dataset images when given (and the size fits), else
    generated."""
    cells = []
    biggest = max(batches)
    for engine in engines:
        if data_pool is not None and data_pool.shape[1:3] == engine.input_hw:
            pool = data_pool
        else:
            pool = generated_inputs(min(biggest, 16), engine.input_hw, engine.color_order)
        for batch in batches:
            cells.append(Cell(engine=engine, batch=batch, inputs=batch_of(pool, batch)))
    return cells


def run_model_bench(
    engines: Sequence[Engine],
    batches: Sequence[int],
    settings: BenchSettings,
    data_pool: np.ndarray | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Measure every engine at every batch, interleaved; returns the ``model`` section of the report."""
    cells = make_cells(engines, batches, data_pool)
    log(f"model: {len(cells)} cells, warm-up {settings.warmup_s} s each, {settings.rounds} rounds")
    measure(cells, settings, log)
    return {
        "method": "interleaved rounds",
        "duration_s_per_cell": settings.duration_s,
        "warmup_s_per_cell": settings.warmup_s,
        "rounds": settings.rounds,
        "cells": [cell_result(c) for c in cells],
    }


def find_cell(model: dict[str, Any], engine: str, precision: str, batch: int) -> dict[str, Any] | None:
    for cell in model.get("cells", []):
        if cell["engine"] == engine and cell["precision"] == precision and cell["batch"] == batch:
            return cell
    return None


def best_cell(model: dict[str, Any], engine: str, precision: str) -> dict[str, Any] | None:
    """The batch with the highest throughput for one engine and precision."""
    cells = [c for c in model.get("cells", []) if c["engine"] == engine and c["precision"] == precision]
    return max(cells, key=lambda c: c["throughput_ips"]) if cells else None


# --- peak memory, one fresh process per precision ----------------------------------------------------------


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    """This process's own high-water RSS.

    Linux: VmHWM from /proc/self/status, which starts afresh at exec. ``ru_maxrss`` is no use here: Linux
    carries the forking parent's peak over into it, so every child would report the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _memory_child(conn: Any, spec: dict[str, Any]) -> None:
    """Child process: baseline RSS, load one engine, run a few batches, report current and peak RSS."""
    try:
        from edge.trust.manifest import read_manifest

        baseline = _rss_bytes()
        if spec["kind"] == "torch":
            engine = open_torch(Path(spec["checkpoint"]), spec["torch_device"])
        else:
            manifest = read_manifest(Path(spec["bundle"]))
            engine = open_backend(
                spec["backend"], Path(spec["bundle"]), manifest, spec["precision"], spec["options"]
            )
        loaded = _rss_bytes()
        images = batch_of(
            generated_inputs(min(spec["batch"], 8), engine.input_hw, engine.color_order), spec["batch"]
        )
        for _ in range(spec["calls"]):
            engine.run(images)
        result = {
            "batch": spec["batch"],
            "calls": spec["calls"],
            "baseline_rss_mb": baseline / 2**20,
            "loaded_rss_mb": loaded / 2**20,
            "after_run_rss_mb": _rss_bytes() / 2**20,
            "peak_rss_mb": _peak_rss_bytes() / 2**20,
        }
        result["engine_rss_mb"] = (
            result["peak_rss_mb"] - result["baseline_rss_mb"]
        )  # runtime library + model + arenas
        engine.close()
        conn.send({"ok": True, "result": result})
    except Exception as exc:  # reported to the parent, which records the error in the report
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def memory_probe(spec: dict[str, Any], timeout_s: float = MEMORY_PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Peak RSS of one engine in a fresh spawned process; ``{"error": ...}`` when the child fails."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_memory_child, args=(child, spec), name=f"edge-bench-memory-{spec.get('precision')}"
    )
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            return {"error": f"memory probe did not answer within {timeout_s:.0f} s"}
        reply = parent.recv()
    except EOFError:
        return {"error": "memory probe exited without an answer (crashed or killed; out of memory?)"}
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    return reply["result"] if reply.get("ok") else {"error": reply.get("error", "unknown")}


def run_memory_probes(
    bundle: Path,
    backend: str,
    precisions: Sequence[str],
    options: dict[str, object],
    batch: int,
    checkpoint: Path | None = None,
    torch_device_name: str = "auto",
    calls: int = 5,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """``{"<engine>/<precision>": {baseline, peak, model RSS ...}}``, one fresh process each."""
    out: dict[str, Any] = {}
    for precision in precisions:
        log(f"memory: {backend}/{precision}")
        out[f"{backend}/{precision}"] = memory_probe(
            {
                "kind": "backend",
                "bundle": str(bundle),
                "backend": backend,
                "precision": precision,
                "options": options,
                "batch": batch,
                "calls": calls,
            }
        )
    if checkpoint is not None:
        log("memory: torch-eager/fp32")
        out["torch-eager/fp32"] = memory_probe(
            {
                "kind": "torch",
                "checkpoint": str(checkpoint),
                "torch_device": torch_device_name,
                "precision": "fp32",
                "batch": batch,
                "calls": calls,
            }
        )
    return out
