"""``edge-run --init-config PATH``: a first configuration that works as written.

It names a broker on this machine (plain TCP, no password: ``apt install mosquitto`` gives one), the bundle
``edge-export`` wrote and one camera or video file, each line with a comment, and points at
``deploy/config.example.toml`` for the production form (TLS, password file, signed bundles). The file is
never overwritten: an existing PATH is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from edge.capture.sources import uri_kind
from edge.config import _default_device_id


class InitConfigError(ValueError):
    """The file cannot be written (it exists, or its folder cannot be written)."""


def _precision(bundle: Path) -> str:
    """int8 when the bundle has it (the smallest, fastest model), else fp32; fp32 when it cannot be read."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        precisions = manifest.get("precisions") or {}
    except (OSError, ValueError, AttributeError):
        return "fp32"
    return "int8" if "int8" in precisions else "fp32"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_text(
    bundle: Path,
    source: str,
    device_id: Optional[str] = None,
    name: str = "THIS_FILE",
    trusted_key: Optional[Path] = None,
) -> str:
    kind = uri_kind(source)
    if kind == "file":
        source = str(Path(source).resolve())
    bundle = bundle.resolve()
    device = device_id or _default_device_id()
    lines = [
        "# edge-anomaly: a first configuration, written by `edge-run --init-config`.",
        f"# Check it (bundle, camera, files; one ok/FAILED line each):  edge-run --config {name} "
        f"--check-config",
        f"# Run it:                                                    edge-run --config {name}",
        "# Every key, and the production form (TLS, password file, signed bundles): "
        "deploy/config.example.toml.",
        "# Any key can be overridden without editing: EDGE_MQTT__PORT=1884 or --set mqtt.port=1884.",
        "",
        f"device_id = {_toml_string(device)}   # part of every topic: edge-anomaly/<device_id>/...",
        "",
        "[mqtt]",
        'host = "localhost"          # a broker on this machine (apt install mosquitto), plain TCP, no '
        "password",
        "port = 1883",
        "",
        "[model]",
        f"bundle = {_toml_string(str(bundle))}   # the folder edge-export --out wrote",
        f'precision = "{_precision(bundle)}"          # fp32, fp16 or int8: which model of the bundle to run',
        *_trust_lines(trusted_key),
        "",
        "[[cameras]]",
        'name = "cam0"               # part of its topics: edge-anomaly/<device_id>/cam0/result',
        f"source = {_toml_string(source)}   # {_source_comment(kind)}",
        "fps = 5.0                   # score at most this many frames per second",
    ]
    if kind == "file":
        lines.append("loop = false                # true: play the file again and again (a demo line)")
    lines.append('publish_mask = "anomalous"  # PNG mask on .../cam0/mask/<frame_key>, anomalous parts')
    return "\n".join(lines) + "\n"


def _trust_lines(trusted_key: Optional[Path]) -> list:
    if trusted_key is not None:
        return [
            "# Only bundles signed with this key's private half (edge-export --sign-key) are run.",
            f"trusted_keys = [{_toml_string(str(trusted_key.resolve()))}]",
        ]
    return [
        "# Accept only bundles signed by your key (edge-keygen; edge-export --sign-key). Without it the "
        "daemon",
        "# runs unsigned bundles and says so with a WARNING at start.",
        '# trusted_keys = ["keys/line1.pub"]',
    ]


def _source_comment(kind: str) -> str:
    return {
        "device": "a device index: 0 = /dev/video0",
        "file": "a video file, played at fps below",
        "stream": "an RTSP/HTTP camera URL",
        "gstreamer": "a GStreamer pipeline ending in appsink",
    }.get(kind, "a device index, video file, rtsp:// URL or GStreamer pipeline")


def write_initial_config(
    path: Path,
    bundle: Path,
    source: str,
    device_id: Optional[str] = None,
    trusted_key: Optional[Path] = None,
) -> Path:
    """Write the file; never replaces one that exists (InitConfigError)."""
    text = config_text(bundle, source, device_id, name=str(path), trusted_key=trusted_key)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        raise InitConfigError(
            f"{path} already exists; it is left as it is (choose another name or remove it)"
        ) from None
    except OSError as exc:
        raise InitConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
