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

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edge.commands import parse_model_set
from edge.config import EdgeConfig
from edge.faces.mqtt_json.api import DeviceApi
from edge.results.payloads import ActiveModelDoc, LoadingDoc, ModelErrorDoc, ModelStatePayload, iso_utc
from edge.results.thresholds import ThresholdBook
from edge.scoring.models import LoadedModel, Loader, ModelBook, close_backend, warm
from edge.stores.recipes import Choice, RecipeChoices, RecipeError, RecipeStore
from edge.trust.manifest import BundleError, read_manifest
from edge.util.ratelog import RateLimitedLog

log = logging.getLogger("edge.changeover")
rate_log = RateLimitedLog(log)

QUEUE_MAX = 8  # switch requests waiting; more are refused ("busy"), never dropped silently
APPLY_WAIT_S = 0.2  # how often the loader checks, while a staged model waits for the next gather


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
        cams = [c for c in config.enabled_cameras() if book.runs(c.name)]  # not a region that failed to load
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
        if camera not in self._configured:
            return f"{camera}: its recipe failed to load at the start; fix it and restart"
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
                self._refuse(cam, spec, message, quiet=True)
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

    def _refuse(self, camera: str, recipe: str, message: str, quiet: bool = False) -> None:
        """``quiet``: a storm's refusal (busy), logged at most once per interval (counted in any case)."""
        text = "camera %s: recipe %s refused, the active model stays: %s"
        if quiet:
            rate_log.error(f"busy-{camera}", text, camera, recipe, message)
        else:
            log.error(text, camera, recipe, message)
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
        self.thresholds.set_fixed({cam.name: cam.threshold for cam in new.units()})
        by_name = {cam.name: cam for cam in new.units()}
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

    def loading_recipe(self, camera: str) -> Optional[str]:
        """The recipe being loaded for ``camera`` now, or None (a part's no_result reason says so)."""
        with self._lock:
            loading = self._loading.get(camera)
        return None if loading is None else loading.recipe

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


def restart_only_changes(old: EdgeConfig, new: EdgeConfig) -> List[str]:
    """Top-level config keys that changed in ways a reload does not apply (everything but recipes, the
    bundle, the store and fixed thresholds)."""

    def reloadable_removed(cfg: EdgeConfig) -> Dict[str, object]:
        doc = cfg.model_dump(mode="json")
        for key in ("bundle", "store"):
            doc["model"].pop(key, None)
        for cam in doc["cameras"]:
            for entry in [cam, *cam.get("regions", [])]:  # a region's recipe and threshold reload too
                entry.pop("recipe", None)
                entry.pop("threshold", None)
        return doc

    a, b = reloadable_removed(old), reloadable_removed(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
