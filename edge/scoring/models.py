"""What a loaded model is: one verified bundle with its backend, preprocessing and postprocessing, and the
book of which model each camera runs (the resident set). Loading is the composition root's
(:func:`edge.service.loader.load_model`); switching is the changeover's (:mod:`edge.service.changeover`).

Memory: the loader stages one model at a time, so at most one model more than the cameras use is resident; an
old model no camera uses any more is closed at the switch (:meth:`ModelBook.apply_pending`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edge.capture.preprocess import Preprocess
from edge.config import EdgeConfig
from edge.results.payloads import ModelRef
from edge.results.postprocess import Postprocessor
from edge.scoring.backends import Backend
from edge.trust.manifest import BundleError, Manifest

log = logging.getLogger("edge.changeover")


@dataclass(eq=False)
class LoadedModel:
    """One verified, loaded bundle: what scoring (backend, pre) and postprocess (post, ref) need of it."""

    recipe: str
    bundle: Path
    manifest: Manifest
    backend: Backend
    pre: Preprocess
    post: Postprocessor
    ref: ModelRef

    @property
    def id(self) -> str:
        return self.ref.id


def close_backend(backend: Backend) -> None:
    """Release a backend's session and memory; a failure is logged (the model is dropped anyway)."""
    try:
        backend.close()
    except Exception:  # releasing anyway; say so
        log.exception("closing a backend failed")


class ModelBook:
    """Which model each camera runs. Read per batch and changed only by the inference thread, between two
    batches (:meth:`apply_pending`); the loader thread stages models here and waits until they are applied."""

    def __init__(self, active: Dict[str, LoadedModel]) -> None:
        self._active = dict(active)
        self._pending: Dict[str, Tuple[LoadedModel, threading.Event]] = {}
        self._loading: Optional[LoadedModel] = None
        self._lock = threading.Lock()
        self.peak_resident = self.resident()

    def active(self, camera: str) -> LoadedModel:
        return self._active[camera]

    def runs(self, camera: str) -> bool:
        """Whether ``camera`` has a model (a region whose recipe failed to load at the start has none)."""
        return camera in self._active

    def cameras_on(self, model: LoadedModel) -> List[str]:
        return [cam for cam, m in self._active.items() if m is model]

    def resident_models(self) -> List[LoadedModel]:
        with self._lock:
            models = list(self._active.values()) + [m for m, _ in self._pending.values()]
            if self._loading is not None:
                models.append(self._loading)
        unique: Dict[int, LoadedModel] = {}
        for m in models:
            unique.setdefault(id(m), m)
        return list(unique.values())

    def resident(self) -> int:
        return len(self.resident_models())

    def note_loading(self, model: Optional[LoadedModel]) -> None:
        """The loader holds ``model`` (loaded, not yet staged); it counts as resident."""
        with self._lock:
            self._loading = model
        self.peak_resident = max(self.peak_resident, self.resident())

    def stage(self, cameras: List[str], model: LoadedModel) -> threading.Event:
        done = threading.Event()
        with self._lock:
            for cam in cameras:
                self._pending[cam] = (model, done)
            self._loading = None
        return done

    def unstage(self, model: LoadedModel) -> bool:
        """Take back a staged model that was not applied (shutdown); True when it was still staged."""
        with self._lock:
            cams = [cam for cam, (m, _) in self._pending.items() if m is model]
            for cam in cams:
                del self._pending[cam]
        return bool(cams)

    def apply_pending(self) -> List[Tuple[str, LoadedModel, LoadedModel]]:
        """Inference thread, between batches: switch staged cameras; close models no camera uses any more.

        Returns (camera, old, new) per switch."""
        if not self._pending:  # the hot path: nothing staged
            return []
        with self._lock:
            pending, self._pending = self._pending, {}
            switches = []
            for cam, (model, _) in pending.items():
                switches.append((cam, self._active[cam], model))
                self._active[cam] = model
            in_use = {id(m) for m in self._active.values()}
        released: Dict[int, LoadedModel] = {}
        for _, old, _ in switches:
            if id(old) not in in_use:
                released[id(old)] = old
        for old in released.values():
            close_backend(old.backend)  # the session and its memory go now; in-flight frames need only post
        for done in {id(e): e for _, e in pending.values()}.values():
            done.set()
        return switches


# Loads, verifies and warms one recipe; the daemon's composition root provides it
# (edge.service.loader.load_model).
Loader = Callable[[EdgeConfig, Path, str], LoadedModel]


def warm(model: LoadedModel) -> None:
    """One inference on a blank image: builds or loads an engine, allocates, proves the outputs are sane."""
    h, w = model.pre.height, model.pre.width
    scores, maps = model.backend.run(np.zeros((1, h, w, 3), np.uint8))
    if np.shape(scores) != (1,) or np.shape(maps) != (1, h, w) or not np.all(np.isfinite(scores)):
        raise BundleError(
            f"warm-up inference of {model.bundle} gave scores {np.shape(scores)} and maps {np.shape(maps)} "
            f"(expected (1,) and (1, {h}, {w}), finite); the bundle does not work on this device"
        )
