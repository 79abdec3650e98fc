"""Bundles -> verified, loaded models: what the composition root (:mod:`edge.service.daemon`) loads at the
start (each camera's recipe, once per bundle) and what a changeover loads later (:func:`load_model`, the
``Loader`` that :mod:`edge.service.changeover` is given). Both verify as ``--check-config`` does and raise
:class:`StartupError` with a message that says what to fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from edge.config import EdgeConfig
from edge.config.regions import REGION_SEP
from edge.results.payloads import ModelRef, iso_utc
from edge.results.postprocess import Postprocessor
from edge.scoring.backends import Backend, cache_option, load_backend
from edge.scoring.models import LoadedModel, close_backend
from edge.service.checks import verified_manifest
from edge.stores.recipes import RecipeChoices, RecipeError, RecipeStore
from edge.trust.manifest import BundleError, Manifest

log = logging.getLogger("edge.daemon")  # start-up lines, under the logger they have always had


class StartupError(RuntimeError):
    """The daemon cannot start (bundle, backend or camera set-up); the message says what to fix."""


def boot_models(
    config: EdgeConfig, store: RecipeStore, choices: RecipeChoices, faults: Optional[Dict[str, str]] = None
) -> Dict[str, LoadedModel]:
    """Each enabled camera's recipe (the one chosen over MQTT before a restart, else the configured one),
    verified and loaded (once per bundle).

    ``faults``: a region (``<camera>/<region>``) whose recipe cannot be loaded is recorded there (unit ->
    reason) and left out, so it faults alone; a camera's own recipe, or no loadable unit at all, still stops
    the start."""
    loaded: Dict[Path, LoadedModel] = {}

    def load(recipe: str) -> LoadedModel:
        path = store.path_of(recipe)
        if path not in loaded:
            where = "model.bundle" if path == config.model.bundle else f"recipe {recipe} ({path})"
            try:
                manifest = verified_manifest(_model_at(config, path))  # the same checks as --check-config
            except BundleError as exc:
                raise StartupError(f"{where}: {exc}") from exc
            loaded[path] = _loaded(config, path, recipe, manifest, _load_backend(config, manifest, path))
        return loaded[path]

    models: Dict[str, LoadedModel] = {}
    for cam in config.enabled_cameras():
        configured = store.configured(cam)
        choice = choices.for_camera(cam.name, configured)
        if choice is not None and choice.recipe != configured:
            try:
                models[cam.name] = load(choice.recipe)
                log.info(
                    "camera %s starts on recipe %s, chosen over MQTT at %s (the config names %s)",
                    cam.name, choice.recipe, iso_utc(choice.set_at), configured,
                )  # fmt: skip
                continue
            except (RecipeError, StartupError) as exc:  # the configured recipe is verified below, or fails
                log.error(
                    "camera %s: recipe %s, chosen over MQTT before the restart, cannot be used (%s); "
                    "starting "
                    "on the configured recipe %s", cam.name, choice.recipe, exc, configured,
                )  # fmt: skip
                choices.forget(cam.name)
        try:
            models[cam.name] = load(configured)
        except (RecipeError, StartupError) as exc:
            if (faults is None or REGION_SEP not in cam.name) and isinstance(exc, StartupError):
                raise
            if faults is None or REGION_SEP not in cam.name:
                raise StartupError(f"cameras {cam.name}: {exc}") from exc
            faults[cam.name] = f"recipe {configured} cannot be loaded: {exc}"
            log.error("region %s: %s; it is in fault, the other cameras and regions go on", cam.name, exc)
    if not models:
        raise StartupError(
            "no camera or region can be inspected: "
            + "; ".join(f"{u}: {r}" for u, r in (faults or {}).items())
        )
    return models


def _model_at(config: EdgeConfig, bundle: Path) -> Any:
    return config.model.model_copy(update={"bundle": bundle})


def _loaded(
    config: EdgeConfig, bundle: Path, recipe: str, manifest: Manifest, backend: Backend
) -> LoadedModel:
    ref = ModelRef(
        id=manifest.model_id(),
        precision=backend.precision,  # what the backend loaded
        backend=backend.name,
        signer=manifest.signer,  # set by bundle signing
    )
    post = Postprocessor(
        manifest.normalization,
        config.postprocess.min_region_area,
        config.postprocess.max_regions,
        pre=manifest.input.preprocess(),
    )
    return LoadedModel(recipe, bundle, manifest, backend, manifest.input.preprocess(), post, ref)


def load_model(config: EdgeConfig, bundle: Path, recipe: str) -> LoadedModel:
    """A changeover's load: verified as a start verifies, then loaded; raises with a message that says why."""
    manifest = verified_manifest(_model_at(config, bundle))
    backend = _load_backend(config, manifest, bundle)
    try:
        return _loaded(config, bundle, recipe, manifest, backend)
    except BaseException:
        close_backend(backend)
        raise


def _load_backend(config: EdgeConfig, manifest: Manifest, bundle: Optional[Path] = None) -> Backend:
    # Only options the user set are passed, so a backend that does not take one is not bothered by it.
    options: Dict[str, object] = {}
    if config.model.providers is not None:
        options["providers"] = list(config.model.providers)
    if config.model.intra_op_threads is not None:
        options["intra_op_threads"] = config.model.intra_op_threads
    if config.model.max_batch is not None:
        options["max_batch"] = config.model.max_batch
    if config.model.engine_cache_dir is not None:  # outside the root-owned bundle (deploy/install.sh)
        options[cache_option(config.model.backend)] = config.model.engine_cache_dir
    try:
        return load_backend(
            config.model.backend, bundle or config.model.bundle, manifest, config.model.precision, **options
        )
    except StartupError:
        raise
    except Exception as exc:  # missing runtime, unsupported provider, engine build failure...
        raise StartupError(
            f"model.backend {config.model.backend!r} could not load the bundle: {exc}"
        ) from exc
