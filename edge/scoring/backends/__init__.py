"""Inference backends behind one small protocol, picked by name from one table.

Adding a backend touches one file plus one row in ``BACKENDS``. A backend loads one precision of a bundle
and turns uint8 NHWC images into raw scores and anomaly maps; normalisation and the threshold are the
caller's (they live in the manifest, not in the engine). Backends verify nothing themselves: the caller
has already run ``edge.trust.manifest.verify_bundle``.

Batches larger than ``max_batch`` are run in chunks of ``max_batch`` and concatenated, so benchmarks and
calibration can hand over any number of images; the daemon never exceeds ``max_batch``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edge.trust.manifest import Manifest

BACKENDS: dict[str, str] = {
    "onnxruntime": "edge.scoring.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "edge.scoring.backends.tensorrt_backend:TensorRTBackend",
}


class BackendError(RuntimeError):
    """A backend cannot load its model or run a batch; the message says what to do about it."""


class Backend(Protocol):
    name: str
    precision: str
    max_batch: int
    input_hw: tuple[int, int]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N,H,W,3) in the manifest's colour order and size -> (scores (N,), maps (N,H,W)), float32,
        raw."""
        ...

    def close(self) -> None: ...


def backend_class(name: str) -> Any:
    """The class of backend ``name`` from the table; ValueError naming the known backends."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def cache_option(name: str) -> str:
    """The option through which backend ``name`` takes its engine cache folder (its ``CACHE_OPTION``)."""
    return str(backend_class(name).CACHE_OPTION)


def load_backend(
    name: str, bundle_dir: Path, manifest: Manifest, precision: str = "fp32", **options: object
) -> Backend:
    """Instantiate backend ``name`` for ``precision`` of the bundle; ``options`` are backend-specific.

    Unknown names and unknown options raise ValueError naming what is accepted.
    """
    cls = backend_class(name)
    accepted = getattr(cls, "OPTIONS", ())
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"backend {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(Path(bundle_dir), manifest, precision, **options)


def check_batch(images: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The batch as a C-contiguous uint8 (N,H,W,3) array, or ValueError saying what was wrong."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"expected a numpy array of images, got {type(images).__name__}")
    h, w = input_hw
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}; pass frames through Preprocess first")
    if images.ndim != 4 or images.shape[1:] != (h, w, 3):
        raise ValueError(
            f"expected images of shape (N, {h}, {w}, 3) (the manifest's input size, NHWC), got "
            f"{images.shape}; "
            "resize with the manifest's Preprocess"
        )
    return np.ascontiguousarray(images)


def run_in_chunks(
    run_chunk: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    images: np.ndarray,
    max_batch: int,
    input_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``run_chunk`` on pieces of at most ``max_batch`` images and join the results."""
    h, w = input_hw
    if len(images) == 0:
        return np.zeros((0,), np.float32), np.zeros((0, h, w), np.float32)
    parts = [run_chunk(images[i : i + max_batch]) for i in range(0, len(images), max_batch)]
    if len(parts) == 1:
        return parts[0]
    return _concat(p[0] for p in parts), _concat(p[1] for p in parts)


def check_outputs(
    scores: np.ndarray, maps: np.ndarray, n: int, input_hw: tuple[int, int], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 scores (n,) and maps (n,H,W) from a model's raw outputs, or BackendError naming the
    mismatch."""
    h, w = input_hw
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    maps = np.asarray(maps, dtype=np.float32)
    if scores.shape != (n,) or maps.size != n * h * w:
        raise BackendError(
            f"{source} returned score shape {scores.shape} and map shape {maps.shape} for {n} image(s); "
            f"expected ({n},) and ({n}, {h}, {w}). The model does not match its manifest; re-export the "
            f"bundle."
        )
    return scores, maps.reshape(n, h, w)


def _concat(arrays: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(arrays), axis=0)
