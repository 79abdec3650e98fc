"""Changeover: several verified bundles ("recipes", one per product) on one device, switched per camera
between two frames, without a restart.

    <model.store>/A/manifest.json ...     recipe "A"  (edge-run install-bundle PATH --name A puts it there)
    <model.store>/B/manifest.json ...     recipe "B"
    model.bundle                          the recipe named after its folder, for cameras without a recipe

Who asks for a switch: ``<prefix>/<camera>/model/set`` (a recipe name, a bundle id, or a rollback), SIGHUP
(``systemctl reload``: the config and the store are read again; a camera whose configured recipe changed,
or whose active recipe now holds another bundle version, is switched), and nothing else.

How a switch happens (:class:`Changeover`, its own thread): the recipe is resolved, verified exactly as a
start verifies (hashes, signature, numbers), loaded and warmed (one inference, which builds or loads a
TensorRT engine) while the old model keeps scoring. Only then is it staged in the :class:`ModelBook`; the
inference thread applies staged models at the top of its next gather, so the switch falls between two
batches: every frame is scored exactly once, by the old model or the new one, and each scored frame
carries the model that scored it (its result names that model). A recipe that fails any step is refused,
the old model stays, and ``model/state`` (retained) and the log say why.

Memory: one request is worked at a time, so at most one model more than the cameras use is resident; an
old model no camera uses any more is closed at the switch.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edge.capture.preprocess import Preprocess
from edge.config import CameraConfig, EdgeConfig
from edge.faces.mqtt_json.api import (
    ActiveModelDoc,
    DeviceApi,
    LoadingDoc,
    ModelErrorDoc,
    ModelRef,
    ModelStatePayload,
    iso_utc,
)
from edge.results.postprocess import Postprocessor
from edge.results.thresholds import ThresholdBook
from edge.scoring.backends import Backend
from edge.trust.manifest import MANIFEST_NAME, BundleError, Manifest, read_manifest
from edge.util.atomic import write_json_atomically

log = logging.getLogger("edge.changeover")

SET_PAYLOAD_MAX = 256
QUEUE_MAX = 8  # switch requests waiting; more are refused ("busy"), never dropped silently
APPLY_WAIT_S = 0.2  # how often the loader checks, while a staged model waits for the next gather


class RecipeError(ValueError):
    """A recipe or bundle id names nothing in the store; the message lists what there is."""


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
    close = getattr(backend, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # releasing anyway; say so
        log.exception("closing a backend failed")


def parse_model_set(payload: bytes) -> Tuple[Optional[str], bool]:
    """(recipe or bundle id, rollback) from a model/set payload; ValueError says what is accepted."""
    if len(payload) > SET_PAYLOAD_MAX:
        raise ValueError(f"model/set payload is {len(payload)} bytes; at most {SET_PAYLOAD_MAX}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("model/set payload is not UTF-8 text") from None
    doc: object = text
    if text.startswith(("{", '"')):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model/set payload looks like JSON but does not parse: {exc}") from None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"recipe", "rollback"})
        if unknown:
            raise ValueError(f"model/set: unknown key(s) {unknown}; use 'recipe' or 'rollback'")
        if doc.get("rollback") is True and doc.get("recipe") is None:
            return None, True
        doc = doc.get("recipe")
    if not isinstance(doc, str) or not doc or any(ch in doc for ch in "/\\\0") or doc.startswith("."):
        raise ValueError(
            'model/set expects a recipe name or bundle id (plain text or {"recipe": "B"}) or {"rollback": true}'
        )
    return doc, False


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

    def replace_backend(self, old: Backend, new: Backend) -> None:
        """Benchmarks and fault tests wrap a model's backend after build()."""
        for model in self.resident_models():
            if model.backend is old:
                model.backend = new


# Loads, verifies and warms one recipe; the daemon's composition root provides it (edge.service.daemon.load_model).
Loader = Callable[[EdgeConfig, Path, str], LoadedModel]


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
        """The choice to start ``camera`` on, or None when the config is newer (the stale choice is dropped)."""
        with self._lock:
            choice = self._choices.get(camera)
        if choice is None or choice.configured == configured:
            return choice
        log.info(
            "camera %s: the config now names recipe %s (recipe %s was chosen over MQTT against %s); the config "
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
            log.error("cannot record the recipe choice in %s (%s); a restart starts on the config's", self.path, exc)

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


class Changeover:
    """The switch requests of one device, worked one at a time by a thread of its own."""

    def __init__(
        self,
        config: EdgeConfig,
        book: ModelBook,
        store: RecipeStore,
        thresholds: ThresholdBook,
        api: DeviceApi,
        load: Loader,
        choices: Optional[RecipeChoices] = None,
    ) -> None:
        self.config = config
        self.choices = choices if choices is not None else RecipeChoices(None)
        self.book = book
        self.store = store
        self.thresholds = thresholds
        self.api = api
        self._load = load
        self.reloader: Optional[Callable[[], EdgeConfig]] = None  # set by edge-run: re-reads the config
        self._requests: queue.Queue[Optional[Tuple[List[str], str, str]]] = queue.Queue(QUEUE_MAX)
        self._reload = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        cams = [c for c in config.enabled_cameras()]
        now = time.time()
        self._configured: Dict[str, str] = {c.name: store.configured(c) for c in cams}
        self._since: Dict[str, float] = dict.fromkeys(self._configured, now)
        self._previous: Dict[str, Optional[str]] = dict.fromkeys(self._configured)
        for cam, configured in self._configured.items():  # a rollback after a restart still knows where to
            choice = self.choices.for_camera(cam, configured)
            if choice is not None and book.active(cam).recipe == choice.recipe:
                self._previous[cam] = choice.previous
                self._since[cam] = choice.set_at
        self._loading: Dict[str, LoadingDoc] = {}
        self._errors: Dict[str, ModelErrorDoc] = {}
        api.on_model_set = self.on_model_set

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-changeover", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- requests (any thread) -----------------------------------------------------------------------------

    def on_model_set(self, camera: str, payload: bytes) -> Optional[str]:
        """The MQTT command (network thread): queue the switch; an error string when refused at once."""
        try:
            spec, rollback = parse_model_set(payload)
        except ValueError as exc:
            self._refuse(camera, "?", str(exc))
            return str(exc)
        origin = "mqtt"
        if rollback:
            with self._lock:
                spec = self._previous.get(camera)
            if spec is None:
                message = "rollback: this camera has not switched since the start; nothing to go back to"
                self._refuse(camera, "?", message)
                return message
            origin = "rollback"
        if spec is None:  # parse_model_set gives a spec whenever it is not a rollback
            return "model/set named no recipe"
        return self.request([camera], spec, origin)

    def request(self, cameras: List[str], spec: str, origin: str) -> Optional[str]:
        try:
            self._requests.put_nowait((cameras, spec, origin))
        except queue.Full:
            message = f"busy: {QUEUE_MAX} switches are already waiting; try again"
            for cam in cameras:
                self._refuse(cam, spec, message)
            return message
        return None

    def request_reload(self) -> None:
        """SIGHUP: safe from a signal handler (sets a flag the changeover thread polls)."""
        self._reload.set()

    # --- the changeover thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._guarded(self._do_reload)
            try:
                req = self._requests.get(timeout=APPLY_WAIT_S)
            except queue.Empty:
                continue
            if req is None:
                return
            self._guarded(lambda r=req: self._switch(*r))  # type: ignore[misc]

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # a bug here must not end the thread: log, back off once
            log.exception("changeover failed unexpectedly")
            self._stopping.wait(1.0)

    def _switch(self, cameras: List[str], spec: str, origin: str) -> None:
        try:
            recipe, path = self.store.resolve(spec)
        except RecipeError as exc:
            for cam in cameras:
                self._refuse(cam, spec, str(exc))
            return
        todo = [cam for cam in cameras if not self._already(cam, recipe, path)]
        for cam in set(cameras) - set(todo):
            log.info("camera %s already runs recipe %s; nothing to switch", cam, recipe)
            self.publish_state(cam)
        if not todo:
            return
        model = self._resident(recipe, path)
        if model is None:
            model = self._load_and_warm(todo, recipe, path, origin)
            if model is None:
                return
        self._apply(todo, model, origin)

    def _already(self, camera: str, recipe: str, path: Path) -> bool:
        active = self.book.active(camera)
        if active.recipe != recipe:
            return False
        try:
            return read_manifest(path).model_id() == active.id
        except BundleError:
            return False  # the load will say what is wrong with it

    def _resident(self, recipe: str, path: Path) -> Optional[LoadedModel]:
        """A model another camera already runs from the same recipe and version (no second copy)."""
        try:
            wanted = read_manifest(path).model_id()
        except BundleError:
            return None
        for model in self.book.resident_models():
            if model.recipe == recipe and model.id == wanted:
                return model
        return None

    def _load_and_warm(
        self, cameras: List[str], recipe: str, path: Path, origin: str
    ) -> Optional[LoadedModel]:
        since = iso_utc(time.time())
        with self._lock:
            for cam in cameras:
                self._loading[cam] = LoadingDoc(recipe=recipe, origin=origin, since=since)
        for cam in cameras:
            self.publish_state(cam)
        log.info("loading recipe %s (%s) for %s, asked by %s", recipe, path, ", ".join(cameras), origin)
        t0 = time.monotonic()
        model: Optional[LoadedModel] = None
        try:
            model = self._load(self.config, path, recipe)
            self.book.note_loading(model)
            warm(model)
        except Exception as exc:  # verify, load or warm: refused, the old model stays
            if model is not None:
                self.book.note_loading(None)
                close_backend(model.backend)
            with self._lock:
                for cam in cameras:
                    self._loading.pop(cam, None)
            for cam in cameras:
                self._refuse(cam, recipe, str(exc))
            return None
        log.info(
            "recipe %s (%s) verified, loaded and warmed in %.2f s", recipe, model.id, time.monotonic() - t0
        )
        return model

    def _apply(self, cameras: List[str], model: LoadedModel, origin: str = "mqtt") -> None:
        old = {cam: self.book.active(cam) for cam in cameras}
        done = self.book.stage(cameras, model)
        while not done.wait(APPLY_WAIT_S):
            if self._stopping.is_set():
                if self.book.unstage(model) and not self.book.cameras_on(model):
                    close_backend(model.backend)
                return
        now = time.time()
        with self._lock:
            for cam in cameras:
                self._loading.pop(cam, None)
                self._previous[cam] = old[cam].recipe
                self._since[cam] = now
        for cam in cameras:
            if origin in ("mqtt", "rollback"):  # the operator's choice outlives a restart
                self.choices.record(
                    cam, Choice(model.recipe, self._configured[cam], old[cam].recipe, now, origin)
                )
            else:  # the config (reload) decided: it is the newer instruction
                self.choices.forget(cam)
            log.info(
                "camera %s: recipe %s (%s) -> %s (%s) between two frames; %d model(s) resident",
                cam, old[cam].recipe, old[cam].id, model.recipe, model.id, self.book.resident(),
            )  # fmt: skip
            self.publish_state(cam)
        refs = {self.book.active(cam).id: self.book.active(cam).ref for cam in self._configured}
        if len(refs) == 1:
            self.api.set_model(next(iter(refs.values())))

    def _refuse(self, camera: str, recipe: str, message: str) -> None:
        log.error("camera %s: recipe %s refused, the active model stays: %s", camera, recipe, message)
        with self._lock:
            self._errors[camera] = ModelErrorDoc(recipe=recipe, message=message, at=iso_utc(time.time()))
        self.publish_state(camera)

    # --- SIGHUP ----------------------------------------------------------------------------------------

    def _do_reload(self) -> None:
        if self.reloader is None:
            log.warning("SIGHUP: this daemon was not started from a config file; nothing to reload")
            return
        try:
            new = self.reloader()
        except Exception as exc:  # ConfigError and friends: keep running on the old config
            log.error("SIGHUP: the config cannot be used, nothing changed: %s", exc)
            for cam in self._configured:
                self._refuse(cam, self._configured[cam], f"config reload failed: {exc}")
            return
        ignored = restart_only_changes(self.config, new)
        if ignored:
            log.warning("SIGHUP: changes to %s take effect at the next restart", ", ".join(ignored))
        self.config = new
        self.store = RecipeStore(new.model.store, new.model.bundle)
        self.thresholds.set_fixed({cam.name: cam.threshold for cam in new.cameras})
        by_name = {cam.name: cam for cam in new.cameras}
        log.info("SIGHUP: config and bundle store read again")
        for camera, before in list(self._configured.items()):
            cfg = by_name.get(camera)
            if cfg is None:
                continue
            wanted = self.store.configured(cfg)
            if wanted != before:
                self._configured[camera] = wanted
                self._switch([camera], wanted, "reload")
                continue
            self._reload_version(camera)
            self.publish_state(camera)

    def _reload_version(self, camera: str) -> None:
        """The active recipe now holds another bundle version (edge-run install-bundle): switch to it."""
        active = self.book.active(camera)
        try:
            path = self.store.path_of(active.recipe)
            changed = read_manifest(path).model_id() != active.id
        except (RecipeError, BundleError) as exc:
            log.warning(
                "SIGHUP: recipe %s of camera %s: %s; the active model stays", active.recipe, camera, exc
            )
            return
        if changed:
            self._switch([camera], active.recipe, "reload")

    # --- model/state ---------------------------------------------------------------------------------------

    def state(self, camera: str) -> ModelStatePayload:
        active = self.book.active(camera)
        with self._lock:
            loading = self._loading.get(camera)
            previous = self._previous.get(camera)
            error = self._errors.get(camera)
            since = self._since.get(camera, time.time())
        return ModelStatePayload(
            camera=camera,
            active=ActiveModelDoc(recipe=active.recipe, model=active.ref, since=iso_utc(since)),
            loading=loading,
            previous=previous,
            last_error=error,
            recipes=self.store.names(),
            resident=self.book.resident(),
        )

    def publish_state(self, camera: str) -> None:
        self.api.publish_model_state(self.state(camera))

    def publish_all(self) -> None:
        for camera in self._configured:
            self.publish_state(camera)


def warm(model: LoadedModel) -> None:
    """One inference on a blank image: builds or loads an engine, allocates, proves the outputs are sane."""
    h, w = model.pre.height, model.pre.width
    scores, maps = model.backend.run(np.zeros((1, h, w, 3), np.uint8))
    if np.shape(scores) != (1,) or np.shape(maps) != (1, h, w) or not np.all(np.isfinite(scores)):
        raise BundleError(
            f"warm-up inference of {model.bundle} gave scores {np.shape(scores)} and maps {np.shape(maps)} "
            f"(expected (1,) and (1, {h}, {w}), finite); the bundle does not work on this device"
        )


def restart_only_changes(old: EdgeConfig, new: EdgeConfig) -> List[str]:
    """Top-level config keys that changed in ways a reload does not apply (everything but recipes, the
    bundle, the store and fixed thresholds)."""

    def reloadable_removed(cfg: EdgeConfig) -> Dict[str, object]:
        doc = cfg.model_dump(mode="json")
        for key in ("bundle", "store"):
            doc["model"].pop(key, None)
        for cam in doc["cameras"]:
            cam.pop("recipe", None)
            cam.pop("threshold", None)
        return doc

    a, b = reloadable_removed(old), reloadable_removed(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


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
