"""What a start needs, checked without starting: the bundle, its signature, files and camera sources.

``edge-run --check-config`` runs every check here and exits non-zero when any fails, so ``install.sh`` (and
an engineer) can trust it before restarting the service: it verifies the bundle, and every camera's recipe,
exactly as a start does (``RecipeStore.path_of`` and :func:`verified_manifest` are the daemon's own path),
reads the password and TLS files, and parses every camera source. Warnings (a world-readable secret, an
unsigned bundle) do not fail the check.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set
from urllib.parse import urlsplit

from edge.config import CameraConfig, EdgeConfig, ModelConfig
from edge.config.regions import units_of
from edge.stores.evidence_names import index_problem
from edge.stores.recipes import RecipeError, RecipeStore
from edge.trust.manifest import BundleError, Manifest, verify_bundle
from edge.trust.signing import SIGNATURE_NAME, SignatureError, TrustedKeys
from edge.util.redact import redact

log = logging.getLogger("edge.checks")

CAMERA_OPEN_TIMEOUT_S = 6.0  # a network camera's FFmpeg open timeout (edge.capture.sources, 5 s) and a frame
BACKEND_RUNTIMES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}
UNSIGNED_WARNING = (
    "model.trusted_keys is empty: the bundle's signature is not checked, so anyone who can write the bundle "
    "can change the model or its threshold. Name the exporting key's .pub file in [model] trusted_keys."
)


def verified_manifest(model: ModelConfig) -> Manifest:
    """The bundle verified as a start needs it: signature (when keys are trusted), numbers, file hashes.

    Raises BundleError with one line naming the problem. With no trusted keys the bundle is accepted and a
    WARNING says that its origin was not checked.
    """
    try:
        keys = TrustedKeys.load(model.trusted_keys)
    except SignatureError as exc:
        raise BundleError(f"model.trusted_keys: {exc}") from None
    if not keys:
        _note_unchecked_signature(model.bundle)
    return verify_bundle(model.bundle, [model.precision], keys)


_noted_unchecked: Set[Path] = set()


def _note_unchecked_signature(bundle: Path) -> None:
    """No trusted keys: a WARNING when the bundle is signed (a signature nobody checks is a mistake), else
    INFO, once per bundle and process (an unsigned set-up is a choice, not a fault at every start)."""
    if bundle in _noted_unchecked:
        return
    _noted_unchecked.add(bundle)
    if (bundle / SIGNATURE_NAME).is_file():
        log.warning("%s is signed, but %s", bundle, UNSIGNED_WARNING)
    else:
        log.info(UNSIGNED_WARNING)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # passes (a start copes with it), but worth a look

    def line(self) -> str:
        state = "FAILED" if not self.ok else "WARN  " if self.warn else "ok    "
        return f"{state}  {self.name}: {redact(self.detail)}"


def world_readable(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _readable(name: str, path: Path) -> Check:
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
    except OSError as exc:
        return Check(name, False, f"cannot read {path}: {exc.strerror or exc}")
    if not data.strip():
        return Check(name, False, f"{path} is empty")
    return Check(name, True, str(path))


def check_bundle(config: EdgeConfig) -> Check:
    model = config.model
    try:
        manifest = verified_manifest(model)
    except BundleError as exc:
        return Check("model.bundle", False, str(exc))
    signed = f"signed by {manifest.signer}" if manifest.signer else "signature not checked (no trusted keys)"
    detail = f"{model.bundle}: {manifest.model_id()} {model.precision}, {signed}"
    return Check("model.bundle", True, detail)


def check_recipes(config: EdgeConfig) -> List[Check]:
    """Each camera's recipe other than model.bundle (checked above), resolved and verified as a start does:
    an unknown recipe, or one whose bundle is unsigned or signed by an untrusted key, fails here as there."""
    checks: List[Check] = []
    verified: Dict[Path, Check] = {}
    units = [
        (f"cameras[{index}]" + (f".regions[{sub}]" if section.regions else ""), cam)
        for index, section in enumerate(c for c in config.cameras if c.enabled)
        for sub, cam in enumerate(units_of(section))
    ]
    for field, cam in units:
        if cam.recipe is None:
            continue
        name = f"{field}.recipe ({cam.name})"
        try:
            path = RecipeStore(config.model.store, config.model.bundle).path_of(cam.recipe)
        except RecipeError as exc:
            checks.append(Check(name, False, str(exc)))
            continue
        if path == config.model.bundle:
            continue
        if path not in verified:
            try:
                manifest = verified_manifest(config.model.model_copy(update={"bundle": path}))
                signer = manifest.signer or "unsigned (no trusted keys configured)"
                detail = f"{cam.recipe} ({path}): {manifest.model_id()}, signed by {signer}"
                verified[path] = Check(name, True, detail)
            except BundleError as exc:
                verified[path] = Check(name, False, f"recipe {cam.recipe}: {exc}")
        checks.append(Check(name, verified[path].ok, verified[path].detail))
    return checks


def check_evidence(config: EdgeConfig) -> Check:
    """The evidence index opens and passes SQLite's quick_check; a corrupt one is a warning: a start moves
    it aside and rebuilds it from the kept files (edge.stores.evidence_names)."""
    from edge.results.thresholds import resolve_state_dir
    from edge.stores.evidence import INDEX_NAME

    index = (config.evidence.dir or resolve_state_dir(config.state_dir) / "evidence") / INDEX_NAME
    if not index.exists():
        return Check("evidence.index", True, f"{index} (not made yet)")
    problem = index_problem(index)
    if problem is None:
        return Check("evidence.index", True, str(index))
    detail = f"{index} is corrupt ({problem}); the next start moves it aside and rebuilds it from the files"
    return Check("evidence.index", True, detail, warn=True)


def check_backend(config: EdgeConfig) -> Check:
    runtime = BACKEND_RUNTIMES.get(config.model.backend, config.model.backend)
    if importlib.util.find_spec(runtime) is None:
        return Check(
            "model.backend", False, f"{config.model.backend}: Python module {runtime!r} is not importable"
        )
    return Check("model.backend", True, f"{config.model.backend} ({runtime} importable)")


def check_sparkplug(config: EdgeConfig) -> Check:
    """[sparkplug] enabled: the generated payload code must import with the protobuf runtime installed."""
    try:
        import edge.faces.sparkplug.payload  # noqa: F401 - the import is the check
    except Exception as exc:  # ImportError, or a protobuf runtime too old for the generated code
        return Check("sparkplug", False, f"the Sparkplug B payload code does not import: {exc}")
    import google.protobuf

    node = f"spBv1.0/{config.sparkplug.group_id}/+/{config.sparkplug_node_id}"
    return Check("sparkplug", True, f"{node} (protobuf {google.protobuf.__version__})")


def check_source(index: int, cam: CameraConfig, open_timeout_s: Optional[float] = None) -> Check:
    """The source parses (a file exists, a URL names a host); with ``open_timeout_s`` it also opens."""
    from edge.capture.sources import uri_kind  # cv2; only imported when checks run

    name = f"cameras[{index}].source ({cam.name})"
    uri, kind = cam.source, uri_kind(cam.source)
    shown = redact(uri)
    if kind == "file" and not os.path.isfile(uri):
        return Check(
            name, False, f"{shown}: no such file (and not a device index, URL or GStreamer pipeline)"
        )
    if kind == "file" and not os.access(uri, os.R_OK):
        return Check(name, False, f"{shown}: not readable")
    if kind == "stream":
        try:
            parts = urlsplit(uri)
            port = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            return Check(name, False, f"{shown}: not a valid URL ({redact(str(exc))})")
        if not parts.hostname:
            return Check(name, False, f"{shown}: the URL names no host")
        del port
    if open_timeout_s is not None:
        from edge.capture.camera_probe import probe_camera

        problem = probe_camera(uri, open_timeout_s)
        if problem is not None:
            return Check(name, False, f"{kind} {shown}: {problem}")
        return Check(name, True, f"{kind} {shown} (opened, a frame read)")
    return Check(name, True, f"{kind} {shown}")


def run_checks(config: EdgeConfig, open_cameras: bool = False) -> List[Check]:
    """Every check a start implies, in the order a start meets them (``open_cameras``: each camera opened
    briefly)."""
    checks: List[Check] = [check_bundle(config), *check_recipes(config), check_backend(config)]
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        checks.append(_readable("mqtt.password_file", mqtt.password_file))
    if mqtt.tls is not None:
        tls = mqtt.tls
        files = (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file))
        checks += [_readable(f"mqtt.tls.{name}", path) for name, path in files if path is not None]
    if config.sparkplug.enabled:
        checks.append(check_sparkplug(config))
        own = (("cert_file", config.sparkplug.cert_file), ("key_file", config.sparkplug.key_file))
        checks += [_readable(f"sparkplug.{name}", path) for name, path in own if path is not None]
    if config.evidence.enabled:
        checks.append(check_evidence(config))
    timeout = CAMERA_OPEN_TIMEOUT_S if open_cameras else None
    checks += [check_source(i, cam, timeout) for i, cam in enumerate(config.cameras) if cam.enabled]
    return checks


def secret_warnings(config: EdgeConfig, config_path: Optional[Path], overrides: List[str]) -> List[str]:
    """Ways the configuration exposes a secret; each a line for the log (they do not stop a start)."""
    warnings = []
    for item in overrides:
        key = item.partition("=")[0].strip().lower()
        if "password" in key.split(".")[-1]:
            warnings.append(
                f"--set {key}=… puts the secret on the command line, where every user sees it (ps, "
                "/proc/*/cmdline); use mqtt.password_file instead"
            )
    if config_path is not None and config.mqtt.password is not None and world_readable(config_path):
        warnings.append(
            f"config file {config_path} holds mqtt.password and is readable by every user; chmod 640 "
            "root:<service group>, or move the password to mqtt.password_file"
        )
    secret_files = [("mqtt.password_file", config.mqtt.password_file)]
    if config.mqtt.tls is not None:
        secret_files.append(("mqtt.tls.key_file", config.mqtt.tls.key_file))
    for name, path in secret_files:
        if path is not None and world_readable(path):
            warnings.append(
                f"{name} {path} is readable by every user on this machine; chmod 600 (or 640 root:<service "
                f"group>)"
            )
    if config.health.metrics_port is not None and config.health.metrics_host not in (
        "127.0.0.1",
        "::1",
        "localhost",
    ):
        warnings.append(
            f"health.metrics_host is {config.health.metrics_host}: /metrics (unauthenticated) is reachable "
            f"from "
            "the network; keep it on 127.0.0.1 unless a firewall limits who can scrape"
        )
    return warnings
