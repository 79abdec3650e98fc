"""The recipes of a device: verified bundles in the store, one per product, the operator's choice per
camera (kept across restarts), and installing or rolling back a bundle in the store (``edge-run
install-bundle``).

    <model.store>/A/manifest.json ...     recipe "A"  (edge-run install-bundle PATH --name A puts it there)
    <model.store>/B/manifest.json ...     recipe "B"
    model.bundle                          the recipe named after its folder, for cameras without a recipe
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edge.config import CameraConfig, EdgeConfig
from edge.trust.manifest import MANIFEST_NAME, BundleError, Manifest, read_manifest
from edge.util.atomic import write_json_atomically

log = logging.getLogger("edge.changeover")


class RecipeError(ValueError):
    """A recipe or bundle id names nothing in the store; the message lists what there is."""


class RecipeStore:
    """The recipes of this device: folders of ``store`` holding a manifest, plus ``model.bundle``."""

    def __init__(self, store: Optional[Path], default_bundle: Path) -> None:
        self.store = None if store is None else Path(store)
        self.default_bundle = Path(default_bundle)

    @property
    def default_recipe(self) -> str:
        return self.default_bundle.name

    def names(self) -> List[str]:
        found = {self.default_recipe}
        if self.store is not None and self.store.is_dir():
            found |= {
                p.name
                for p in self.store.iterdir()
                if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()
            }
        return sorted(found)

    def configured(self, cam: CameraConfig) -> str:
        return cam.recipe or self.default_recipe

    def path_of(self, recipe: str) -> Path:
        if recipe == self.default_recipe:
            return self.default_bundle
        if self.store is not None and not recipe.startswith("."):
            path = self.store / recipe
            if (path / MANIFEST_NAME).is_file():
                return path
        raise RecipeError(f"no recipe {recipe!r} in the bundle store; recipes: {', '.join(self.names())}")

    def resolve(self, spec: str) -> Tuple[str, Path]:
        """A recipe name, or a bundle id (``name@sha12``) found among the recipes' manifests."""
        try:
            return spec, self.path_of(spec)
        except RecipeError:
            if "@" not in spec:
                raise
        for name in self.names():
            path = self.path_of(name)
            try:
                if read_manifest(path).model_id() == spec:
                    return name, path
            except BundleError:
                continue
        raise RecipeError(f"no recipe holds bundle {spec!r}; recipes: {', '.join(self.names())}")


@dataclass(frozen=True)
class Choice:
    """A recipe chosen over MQTT for one camera, and what it was chosen against."""

    recipe: str
    configured: str  # the config's recipe for the camera when the choice was made
    previous: Optional[str]  # what a rollback returns to
    set_at: float
    origin: str  # 'mqtt' or 'rollback'


class RecipeChoices:
    """Recipes chosen over ``model/set``, kept in the daemon's state so that a restart comes back on them.

    The last instruction wins: a choice made over MQTT outlives a restart as long as the config still names
    the recipe it was made against; once the config names another one (an edit, then a restart or SIGHUP),
    the config is the newer instruction and the choice is forgotten. Written atomically at each switch.
    """

    FORMAT = 1

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._choices: Dict[str, Choice] = self._load() if path is not None else {}
        self._lock = threading.Lock()

    def for_camera(self, camera: str, configured: str) -> Optional[Choice]:
        """The choice to start ``camera`` on, or None when the config is newer (the stale choice is
        dropped)."""
        with self._lock:
            choice = self._choices.get(camera)
        if choice is None or choice.configured == configured:
            return choice
        log.info(
            "camera %s: the config now names recipe %s (recipe %s was chosen over MQTT against %s); the "
            "config "
            "wins", camera, configured, choice.recipe, choice.configured,
        )  # fmt: skip
        self.forget(camera)
        return None

    def record(self, camera: str, choice: Choice) -> None:
        with self._lock:
            self._choices[camera] = choice
        self._save()

    def forget(self, camera: str) -> None:
        with self._lock:
            if self._choices.pop(camera, None) is None:
                return
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            doc = {"format": self.FORMAT, "cameras": {cam: asdict(c) for cam, c in self._choices.items()}}
        try:
            write_json_atomically(self.path, doc)
        except OSError as exc:  # in force for this run; say that a restart will not come back on it
            log.error(
                "cannot record the recipe choice in %s (%s); a restart starts on the config's", self.path, exc
            )

    def _load(self) -> Dict[str, Choice]:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("ignoring the recipe choices in %s: %s", self.path, exc)
            return {}
        if not isinstance(doc, dict) or doc.get("format") != self.FORMAT:
            log.error("ignoring the recipe choices in %s: not format %d", self.path, self.FORMAT)
            return {}
        out: Dict[str, Choice] = {}
        for cam, entry in (doc.get("cameras") or {}).items():
            try:
                out[str(cam)] = Choice(
                    recipe=str(entry["recipe"]),
                    configured=str(entry["configured"]),
                    previous=None if entry.get("previous") is None else str(entry["previous"]),
                    set_at=float(entry["set_at"]),
                    origin=str(entry.get("origin", "mqtt")),
                )
            except (KeyError, TypeError, ValueError):
                log.error("ignoring the recorded recipe choice of %s in %s: malformed", cam, self.path)
        return out


# --- installing a bundle into the store (edge-run install-bundle) ------------------------------------------


def install_bundle(
    source: Path, config: EdgeConfig, name: Optional[str], verify: Callable[[Path], Manifest]
) -> Path:
    """Verify ``source``, copy it into the store as recipe ``name`` (default: its folder name), verify the
    copy, and swap it in with a rename; a version it replaces is kept as ``.previous-<name>``.

    The running daemon switches to it on SIGHUP (``systemctl reload edge-anomaly``) when a camera runs the
    recipe, or on ``model/set``.
    """
    store = config.model.store
    if store is None:
        raise RecipeError("model.store is not set in the config: there is no bundle store to install into")
    name = name or Path(source).resolve().name
    if not name or name.startswith(".") or "/" in name:
        raise RecipeError(f"recipe name {name!r} must be a plain folder name")
    manifest = verify(Path(source))
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    incoming = store / f".incoming-{name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, incoming, symlinks=False)
    try:
        copied = verify(incoming)
        if copied.model_id() != manifest.model_id():
            raise BundleError(f"the copy in {incoming} is not the bundle that was verified; disk problem?")
        target, previous = store / name, store / f".previous-{name}"
        if target.exists():
            if previous.exists():
                shutil.rmtree(previous)
            target.rename(previous)
        incoming.rename(target)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return target


def rollback_bundle(config: EdgeConfig, name: str, verify: Callable[[Path], Manifest]) -> Path:
    """Put back ``.previous-<name>``, the version the last install of recipe ``name`` replaced.

    The kept version is verified first (exactly as an install verifies), then the two folders swap places
    with renames, so the version rolled back from becomes ``.previous-<name>`` and a second rollback undoes
    the first. Nothing changes when verification fails.
    """
    store = config.model.store
    if store is None:
        raise RecipeError("model.store is not set in the config: there is no bundle store to roll back in")
    if not name or name.startswith(".") or "/" in name:
        raise RecipeError(f"recipe name {name!r} must be a plain folder name")
    store = Path(store)
    target, previous = store / name, store / f".previous-{name}"
    if not previous.is_dir():
        raise RecipeError(f"recipe {name} has no replaced version to go back to ({previous} does not exist)")
    verify(previous)
    swap = store / f".rollback-{name}-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(swap)
    try:
        previous.rename(target)
    except BaseException:
        if swap.exists():
            swap.rename(target)
        raise
    if swap.exists():
        swap.rename(previous)
    return target
