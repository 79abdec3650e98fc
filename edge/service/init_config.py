"""``edge-run --init-config PATH``: a first configuration that works as written.

It names a broker (by default one on this machine, plain TCP, no password: ``apt install mosquitto`` gives
one; else ``--host``/``--port`` and the TLS files), the precision the bundle and this machine suit (fp32 on
CPU), the bundle ``edge-export`` wrote and one camera or video file, each line with a comment, and points at
``deploy/config.example.toml`` for the production form (TLS, password file, signed bundles). The file is
never overwritten: an existing PATH is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from edge.capture.sources import uri_kind
from edge.config import _default_device_id
from edge.trust.precision_hints import suited_precision, tensorrt_present


class InitConfigError(ValueError):
    """The file cannot be written (it exists, or its folder cannot be written)."""


def _precision(bundle: Path, tensorrt: bool) -> str:
    """What the bundle and this machine suit (edge.precision_hints): fp32 on CPU, where int8 is slower; under
    TensorRT the fastest the bundle has. fp32 when the bundle cannot be read."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        precisions = manifest.get("precisions") or {}
    except (OSError, ValueError, AttributeError):
        return "fp32"
    return suited_precision(precisions, tensorrt)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_text(
    bundle: Path,
    source: str,
    device_id: Optional[str] = None,
    name: str = "THIS_FILE",
    trusted_key: Optional[Path] = None,
    broker: Optional[Broker] = None,
    tensorrt: Optional[bool] = None,
) -> str:
    broker = broker or Broker()
    tensorrt = tensorrt_present() if tensorrt is None else tensorrt
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
        *_broker_lines(broker),
        "",
        "[model]",
        f"bundle = {_toml_string(str(bundle))}   # the folder edge-export --out wrote",
        *_precision_lines(bundle, tensorrt),
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


@dataclass(frozen=True)
class Broker:
    """Where the daemon publishes: --host/--port, and TLS with --ca-file (--cert-file/--key-file for mutual
    TLS)."""

    host: str = "localhost"
    port: Optional[int] = None  # default: 8883 with TLS, else 1883
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None

    @property
    def tls(self) -> bool:
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


def _broker_lines(broker: Broker) -> List[str]:
    port = broker.effective_port
    where = (
        "a broker on this machine (apt install mosquitto)"
        if broker.host in ("localhost", "127.0.0.1", "::1")
        else "the broker"
    )
    lines = [
        "[mqtt]",
        f"host = {_toml_string(broker.host)}   # {where}, {'TLS' if broker.tls else 'plain TCP'}, no "
        "password",
        f"port = {port}",
    ]
    if broker.tls:
        lines += ["", "[mqtt.tls]"]
        files = (("ca_file", broker.ca_file), ("cert_file", broker.cert_file), ("key_file", broker.key_file))
        lines += [f"{key} = {_toml_string(str(path.resolve()))}" for key, path in files if path is not None]
    return lines


def _precision_lines(bundle: Path, tensorrt: bool) -> List[str]:
    precision = _precision(bundle, tensorrt)
    if tensorrt:
        return [
            'backend = "tensorrt"         # TensorRT is installed: the engine is built at the first start',
            f'precision = "{precision}"          # the fastest model the bundle has, under TensorRT',
        ]
    return [
        f'precision = "{precision}"          # on CPU fp32 is fastest (int8 and fp16 pay only under '
        "TensorRT)",
    ]


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
    broker: Optional[Broker] = None,
) -> Path:
    """Write the file; never replaces one that exists (InitConfigError)."""
    text = config_text(bundle, source, device_id, name=str(path), trusted_key=trusted_key, broker=broker)
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
