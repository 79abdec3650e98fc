"""The daemon's configuration: one pydantic-settings model, read from a TOML file, the environment and CLI.

Precedence, highest first: CLI overrides (``--set key.path=value``) > environment (``EDGE_…``, nested with
``__``, e.g. ``EDGE_MQTT__PORT=1884``) > the TOML file (``--config``) > the defaults below.

Every model forbids unknown keys, so a typo (``fsp`` for ``fps``) stops the daemon at start with the key's
path instead of being silently ignored on a line nobody watches. Validators only check values: files named
here (bundle, TLS files, password file) are opened later, by the code that uses them.

Config objects hold data only; every stage may read them. May import: edge.util, and the backend name table
(``edge.scoring.backends.BACKENDS``, a dict of strings) to check ``model.backend``.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge.util.names import is_safe_name
from edge.util.redact import add_secret_params, redact_deep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - JetPack 5 (Python 3.8) path
    import tomli as tomllib

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MASK = "***"
PublishMask = Literal["anomalous", "always", "never"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _topic_safe(value: str, what: str) -> str:
    if not TOPIC_SAFE.match(value):
        raise ValueError(
            f"{what} {value!r} is not topic-safe: use 1-64 letters, digits, '_', '-' or '.' "
            "(no '/', '+', '#' or spaces, because it becomes part of MQTT topics)"
        )
    return value


def _default_device_id() -> str:
    """The host name with anything that is not topic-safe replaced, so the default prefix is valid."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "edge"


class TlsConfig(_Section):
    """TLS towards the broker. Files are read when connecting, not here."""

    ca_file: Optional[Path] = Field(
        default=None, description="CA bundle that signed the broker certificate; None = system CAs"
    )
    cert_file: Optional[Path] = Field(default=None, description="client certificate (PEM) for mutual TLS")
    key_file: Optional[Path] = Field(default=None, description="private key (PEM) of cert_file")
    insecure: bool = Field(default=False, description="skip the broker host name check (testing only)")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS needs both)")
        return self


class MqttConfig(_Section):
    host: str = Field(default="localhost", min_length=1, description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port (8883 is usual with TLS)")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    keepalive: int = Field(
        default=30, ge=5, le=3600, description="keepalive in seconds; the Last Will fires after 1.5x this"
    )
    client_id: Optional[str] = Field(
        default=None, max_length=128, description="MQTT client id; default edge-anomaly-<device_id>"
    )
    tls: Optional[TlsConfig] = Field(
        default=None, description="enable TLS with these settings; absent = plain TCP"
    )
    username: Optional[str] = Field(default=None, min_length=1, description="broker user name")
    password: Optional[SecretStr] = Field(
        default=None, description="broker password (masked in every output)"
    )
    password_file: Optional[Path] = Field(
        default=None, description="file holding the password (read when connecting)"
    )
    topic_prefix: Optional[str] = Field(
        default=None, description="topic prefix; default edge-anomaly/<device_id>"
    )
    qos_result: int = Field(default=1, ge=0, le=2, description="QoS of result messages")
    qos_mask: int = Field(default=1, ge=0, le=2, description="QoS of mask and heatmap images")
    queue_masks: bool = Field(
        default=True,
        description="masks (QoS >= 1) wait in the offline queue like results; false: dropped (and counted) "
        "whenever they cannot be sent at once",
    )
    offline_queue_max: int = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="QoS>=1 messages in flight and queued together (broker down, slow or not acknowledging); "
        "the oldest queued are dropped first, every drop counted",
    )
    ack_stall_s: float = Field(
        default=10.0,
        ge=0.5,
        le=3600,
        description="a message unacknowledged this long: 'broker not acknowledging' in status, stats, log",
    )
    stats_interval_s: float = Field(default=10.0, ge=0.2, le=3600, description="period of the stats topic")
    reconnect_min_s: int = Field(
        default=1, ge=1, le=600, description="first reconnect delay; doubles per failure (jittered)"
    )
    reconnect_max_s: int = Field(
        default=4,
        ge=1,
        le=3600,
        description="longest reconnect delay: once the broker is back, the device is online within this "
        "plus one connect (default: within 5 s)",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_from_number(cls, value: Any) -> Any:
        # TOML users write `protocol = 5`; accept the number for "5" only (3.1.1 is not a number).
        if isinstance(value, int) and not isinstance(value, bool) and value == 5:
            return "5"
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_a_topic(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not value or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f"topic prefix {value!r} must not be empty or start/end with '/' or contain '//'"
            )
        if any(ch in value for ch in "+#\0"):
            raise ValueError(f"topic prefix {value!r} must not contain MQTT wildcards '+' or '#'")
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class ModelConfig(_Section):
    bundle: Path = Field(description="bundle directory written by edge-export (manifest.json + ONNX files)")
    backend: str = Field(default="onnxruntime", description="inference backend: onnxruntime or tensorrt")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="which model of the bundle to run"
    )
    store: Optional[Path] = Field(
        default=None,
        description="bundle store: one verified bundle folder per recipe (product), <store>/<recipe>/; "
        "cameras "
        "pick one with cameras.recipe or over MQTT <camera>/model/set (edge-run install-bundle fills it)",
    )
    trusted_keys: List[Path] = Field(
        default_factory=list,
        max_length=32,
        description="Ed25519 public keys (.pub from edge-keygen) whose signature a bundle must carry; empty: "
        "unsigned bundles are accepted with a warning",
    )
    engine_cache_dir: Optional[Path] = Field(
        default=None,
        description="where TensorRT engines are built and cached (must be writable by the daemon); default: "
        "<bundle>/engines. The installer points it at a service-owned directory outside the root-owned "
        "bundle",
    )
    providers: Optional[List[str]] = Field(
        default=None,
        description="onnxruntime execution providers, best first: 'tensorrt', 'cuda', 'cpu' (CPU is always "
        "appended); default: the backend's own default (cpu)",
    )
    intra_op_threads: Optional[int] = Field(
        default=None, ge=1, le=256, description="onnxruntime CPU threads; default: onnxruntime's choice"
    )
    max_batch: Optional[int] = Field(
        default=None,
        ge=1,
        le=64,
        description="most frames per inference call; default: the bundle's max_batch",
    )
    helper_threads_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="nice increment of the capture, postprocess and MQTT network threads, so inference "
        "gets the CPU first (0: same priority)",
    )
    opencv_threads: Optional[int] = Field(
        default=1,
        ge=1,
        le=256,
        description="worker threads OpenCV may use for one decode, resize or encode; default 1, so they "
        "never compete with the backend's threads; null: OpenCV's own choice (all cores)",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from edge.scoring.backends import BACKENDS  # a name table only; no runtime is imported

        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(sorted(BACKENDS))}")
        return value


class PostprocessConfig(_Section):
    min_region_area: int = Field(
        default=16, ge=0, le=10_000_000, description="ignore defect regions smaller than this (camera pixels)"
    )
    max_regions: int = Field(
        default=32, ge=1, le=1000, description="most regions listed in a result (largest first)"
    )
    threshold_min: Optional[float] = Field(
        default=None,
        description="lowest threshold accepted over MQTT (normalised units); default from the bundle's "
        "calibration: 0.5, half way from the median good part to the 99th percentile (or the bundle's "
        "threshold when lower)",
    )
    threshold_max: Optional[float] = Field(
        default=None,
        description="highest threshold accepted over MQTT (normalised units); default from the bundle's "
        "calibration: 3x its threshold or 5 good spreads above it, whichever is higher",
    )
    heatmap_jpeg_quality: int = Field(default=80, ge=10, le=100, description="JPEG quality of heatmap images")

    @model_validator(mode="after")
    def _range_is_a_range(self) -> PostprocessConfig:
        for name in ("threshold_min", "threshold_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if self.threshold_min is None or self.threshold_max is None:
            return self
        if self.threshold_min >= self.threshold_max:
            raise ValueError(
                f"threshold_min ({self.threshold_min}) must be below threshold_max ({self.threshold_max})"
            )
        return self


class HealthConfig(_Section):
    watchdog: bool = Field(
        default=True, description="send systemd WATCHDOG=1 while frames flow (needs WatchdogSec=)"
    )
    stall_after_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="no inference for this long counts as a stall: watchdog pings stop",
    )
    metrics_port: Optional[int] = Field(
        default=None, ge=1, le=65535, description="serve Prometheus /metrics here (needs the 'metrics' extra)"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the /metrics server listens on; loopback by default (the stats are not "
        "authenticated): set 0.0.0.0 only behind a firewall that limits who can scrape",
    )


class EvidenceConfig(_Section):
    """The on-disk evidence store (edge/stores/evidence.py): anomalous frames and a sample of good ones,
    bounded."""

    enabled: bool = Field(default=False, description="keep evidence on disk (read with edge-evidence)")
    dir: Optional[Path] = Field(
        default=None, description="where the store lives; default: <state_dir>/evidence"
    )
    max_bytes: int = Field(
        default=2 * 1024**3,
        ge=4096,
        le=2**50,
        description="size cap of the stored images, masks and results; the oldest are deleted first",
    )
    max_age_s: float = Field(
        default=30 * 86400.0, gt=0, le=10 * 365 * 86400.0, description="retention: older evidence is deleted"
    )
    jpeg_quality: int = Field(default=90, ge=10, le=100, description="JPEG quality of decoded frames kept")
    good_every: int = Field(
        default=100, ge=0, le=1_000_000, description="keep 1 in N good frames per camera (0: none)"
    )
    near_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1000,
        description="also keep every good frame whose score lies within this much (normalised) of the "
        "threshold",
    )
    queue_max: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="frames waiting for the writer; beyond it they are dropped, counted",
    )
    queue_max_mb: float = Field(
        default=16.0,
        gt=0,
        le=4096,
        description="memory the frames waiting for the writer may hold (full-resolution images); beyond it "
        "they are dropped, counted: what the store can add to the daemon's RSS",
    )
    writer_idle: bool = Field(
        default=True,
        description="run the writer in the idle scheduling class (Linux): it only uses CPU that inference "
        "leaves free; under saturation its queue drops, counted",
    )
    writer_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="nice increment of the writer thread: evidence is the first work to give way when the "
        "CPU "
        "is short (its queue then drops, counted) so that inference keeps its rate",
    )


class CameraConfig(_Section):
    name: str = Field(
        description="camera name, part of its topics and folders: a letter or digit, then letters, digits, "
        "'_', '-', '.' (at most 64, no '..')"
    )
    source: str = Field(
        min_length=1,
        description="device index ('0'), file path, rtsp:// or http(s):// URL, or a GStreamer pipeline",
    )
    loop: bool = Field(default=False, description="restart a video file at its end (demo/testing)")
    fps: Optional[float] = Field(
        default=None, gt=0, le=1000, description="read at most this many frames per second"
    )
    fault_after_s: float = Field(
        default=3.0, gt=0, le=3600, description="no frame for this long: availability 'fault'"
    )
    roi: Optional[Tuple[int, int, int, int]] = Field(
        default=None, description="region of interest [x, y, w, h] in camera pixels; default: the whole frame"
    )
    threshold: Optional[float] = Field(
        default=None,
        description="fixed threshold (normalised); overrides the bundle's and ignores MQTT threshold/set",
    )
    recipe: Optional[str] = Field(
        default=None,
        description="recipe (bundle folder in model.store) this camera runs; default: model.bundle",
    )
    publish_mask: PublishMask = Field(default="anomalous", description="when to publish the PNG defect mask")
    publish_heatmap: bool = Field(default=False, description="also publish a JPEG heatmap overlay")
    decode_on_demand: bool = Field(
        default=True,
        description="MJPEG via FFmpeg: keep frames compressed until scored, decode at the scale the model "
        "needs",
    )
    enabled: bool = Field(default=True, description="false: keep the section but do not open the camera")
    secret_params: List[str] = Field(
        default_factory=list,
        max_length=32,
        description="query parameter names in this camera's source whose values are secret, hidden wherever "
        "the source is printed or published (user, pwd, password, token, key, auth, sig, ... always are)",
    )

    @field_validator("name")
    @classmethod
    def _name_topic_safe(cls, value: str) -> str:
        if not is_safe_name(value):  # it becomes a topic level and an evidence folder: never '..'
            raise ValueError(
                f"camera name {value!r} is not topic-safe: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit, no '..' (it becomes part of MQTT topics and folder names)"
            )
        return value

    @field_validator("recipe")
    @classmethod
    def _recipe_is_a_folder_name(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _topic_safe(value, "recipe")

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, value: Optional[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int, int, int]]:
        if value is None:
            return value
        x, y, w, h = value
        if x < 0 or y < 0 or w < 1 or h < 1:
            raise ValueError(f"roi [x, y, w, h] needs x, y >= 0 and w, h >= 1, got {list(value)}")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold_finite(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value


class SparkplugConfig(_Section):
    """A Sparkplug B 3.0 edge node beside the JSON API (README "Sparkplug B"); same broker as [mqtt]."""

    enabled: bool = Field(default=False, description="publish NBIRTH/DBIRTH/DDATA under spBv1.0/<group_id>/")
    group_id: str = Field(
        default="edge-anomaly", description="Sparkplug group id (first topic level after spBv1.0)"
    )
    edge_node_id: Optional[str] = Field(
        default=None, description="Sparkplug edge node id; default: device_id"
    )
    primary_host_id: Optional[str] = Field(
        default=None,
        description='wait for this host\'s retained spBv1.0/STATE/<id> {"online": true} before the births; '
        "when it goes offline: NDEATH, disconnect, start over. None: publish births at once",
    )
    client_id: Optional[str] = Field(
        default=None,
        max_length=128,
        description="MQTT client id of the Sparkplug session; default <client_id>-spb",
    )
    cert_file: Optional[Path] = Field(
        default=None,
        description="client certificate (PEM) of the Sparkplug session, with [mqtt.tls]'s CA; needed where "
        "the "
        "broker takes the client id from the certificate (deploy/mosquitto): its CN must be edge_node_id",
    )
    key_file: Optional[Path] = Field(default=None, description="private key (PEM) of sparkplug.cert_file")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> SparkplugConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _id_topic_safe(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _topic_safe(value, "Sparkplug id")


# The TOML file's values for the settings source below. A context variable (not a global) so that loading
# two configs from two threads cannot mix them up;
# pydantic-settings sources are chosen per class, not per call.
_FILE_VALUES: contextvars.ContextVar[Optional[Dict[str, Any]]] = contextvars.ContextVar(
    "edge_config_file", default=None
)


class _FileValues(PydanticBaseSettingsSource):
    """The already-parsed TOML file, ranked below the environment."""

    def get_field_value(self, field: Any, field_name: str) -> Tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> Dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class EdgeConfig(BaseSettings):
    """Everything ``edge-run`` needs. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        protected_namespaces=(),
        case_sensitive=False,
    )

    device_id: str = Field(
        default_factory=_default_device_id, description="this device's name, part of the topic prefix"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    log_format: Literal["text", "json"] = Field(
        default="text", description="key=value text or one JSON object per line"
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="broker connection and topics")
    model: ModelConfig = Field(description="which bundle to run and how")
    postprocess: PostprocessConfig = Field(
        default_factory=PostprocessConfig, description="masks, regions, thresholds"
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="systemd watchdog and metrics")
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig, description="on-disk evidence store for review and retraining"
    )
    sparkplug: SparkplugConfig = Field(
        default_factory=SparkplugConfig, description="Sparkplug B 3.0 edge node (off by default)"
    )
    cameras: List[CameraConfig] = Field(min_length=1, description="one [[cameras]] table per camera")
    state_dir: Optional[Path] = Field(
        default=None,
        description="where the daemon keeps its own state (the threshold in force, the Sparkplug bdSeq); "
        "default: systemd's "
        "$STATE_DIRECTORY, else /var/lib/edge-anomaly when writable, else ~/.local/state/edge-anomaly",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("device_id")
    @classmethod
    def _device_topic_safe(cls, value: str) -> str:
        return _topic_safe(value, "device_id")

    @model_validator(mode="after")
    def _cameras_unique(self) -> EdgeConfig:
        seen: Dict[str, int] = {}
        for index, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(
                    f"cameras[{index}].name {cam.name!r} is already used by cameras[{seen[cam.name]}]"
                )
            seen[cam.name] = index
        if not any(cam.enabled for cam in self.cameras):
            raise ValueError("every camera is disabled; enable at least one")
        if self.sparkplug.cert_file is not None and self.mqtt.tls is None:
            raise ValueError("sparkplug.cert_file needs TLS: add an [mqtt.tls] section (its CA is used)")
        return self

    @model_validator(mode="after")
    def _recipes_need_a_store(self) -> EdgeConfig:
        named = [cam.name for cam in self.cameras if cam.recipe is not None]
        if named and self.model.store is None:
            raise ValueError(f"cameras {', '.join(named)} name a recipe but model.store is not set")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> Tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileValues(settings_cls))

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"edge-anomaly/{self.device_id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-anomaly-{self.device_id}"

    @property
    def sparkplug_node_id(self) -> str:
        return self.sparkplug.edge_node_id or self.device_id

    @property
    def sparkplug_client_id(self) -> str:
        return self.sparkplug.client_id or f"{self.client_id}-spb"

    @property
    def sparkplug_tls(self) -> Optional[TlsConfig]:
        """[mqtt.tls] with the Sparkplug session's own certificate when one is configured."""
        tls, spb = self.mqtt.tls, self.sparkplug
        if tls is None or spb.cert_file is None:
            return tls
        return tls.model_copy(update={"cert_file": spb.cert_file, "key_file": spb.key_file})

    def enabled_cameras(self) -> List[CameraConfig]:
        return [cam for cam in self.cameras if cam.enabled]

    def masked_dict(self) -> Dict[str, Any]:
        """The effective config as JSON-able data with secrets replaced by ``***`` (for --check-config,
        logs)."""
        data = redact_deep(self.model_dump(mode="json"))  # camera sources may hold rtsp://user:pw@
        if self.mqtt.password is not None:
            data["mqtt"]["password"] = MASK
        data["mqtt"]["effective_topic_prefix"] = self.topic_prefix
        data["mqtt"]["effective_client_id"] = self.client_id
        return data


def read_toml(path: Path) -> Dict[str, Any]:
    """Parse the config file; errors name the file and say what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["mqtt.port=1884", "cameras=[{...}]"]`` -> nested dict.

    Values stay strings (pydantic converts "1884" to an int where the field wants one) except values that
    start with ``[`` or ``{``, which are parsed as JSON so lists and tables can be given. List items cannot
    be addressed one by one: give the whole list.
    """
    result: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. mqtt.port=1884)")
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override key {key!r} has an empty part")
        value: Any = raw
        if raw.lstrip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"override {key}: value looks like JSON but does not parse: {exc}") from exc
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return result


def _loc_to_path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``cameras[0].fsp: unknown key``; never echoes a password."""
    lines = []
    for err in exc.errors(include_url=False):
        path = _loc_to_path(err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{path}: {msg}{_shown_input(path, err)}")
    return "\n".join(lines)


def _shown_input(path: str, err: Any) -> str:
    """The offending value, only when it is a plain scalar that cannot be (or contain) a secret."""
    value = err.get("input")
    if err["type"] == "missing" or "password" in path or isinstance(value, (dict, list, tuple)):
        return ""  # a table's input would include its password
    text = repr(value)
    return f" (got {text[:80]}{'…' if len(text) > 80 else ''})"


ENV_PREFIX = "EDGE_"
# EDGE_ variables that belong to other tools of this project, not to the daemon's settings
ENV_NOT_SETTINGS = frozenset({"EDGE_ANOMALY_CACHE", "EDGE_MVTEC_BOTTLE"})


def _settings_model(annotation: Any) -> Optional[type]:
    """The pydantic model inside ``annotation`` (``Optional[TlsConfig]`` -> TlsConfig), else None."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def unknown_env_keys(environ: Dict[str, str]) -> List[str]:
    """``EDGE_…`` variables that name no setting (a typo such as EDGE_DEVICEID), as error lines.

    pydantic-settings only looks up the names it knows, so a misspelt variable would otherwise be ignored
    silently, exactly what an unknown key in the file is not allowed to do.
    """
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in ENV_NOT_SETTINGS:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        model: Optional[type] = EdgeConfig
        for depth, part in enumerate(parts):
            fields = getattr(model, "model_fields", {}) if model is not None else {}
            if part not in fields:
                where = ".".join(parts[: depth + 1])
                problems.append(f"{where}: unknown key (environment variable {name})")
                break
            model = _settings_model(fields[part].annotation)
            if model is None and depth < len(parts) - 1:  # a list or scalar cannot be entered with __
                where = ".".join(parts[: depth + 1])
                problems.append(f"{where}: has no sub-keys (environment variable {name})")
                break
    return problems


def load_config(path: Optional[Path] = None, overrides: Sequence[str] = ()) -> EdgeConfig:
    """File < environment < overrides -> validated :class:`EdgeConfig`, or :class:`ConfigError`."""
    unknown = unknown_env_keys(dict(os.environ))
    if unknown:
        raise ConfigError("invalid configuration (environment):\n" + "\n".join(unknown))
    file_values = read_toml(path) if path is not None else {}
    init_values = parse_overrides(overrides)
    token = _FILE_VALUES.set(file_values)
    try:
        config = EdgeConfig(**init_values)
    except ValidationError as exc:
        where = f" ({path})" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}:\n{format_validation_error(exc)}") from exc
    finally:
        _FILE_VALUES.reset(token)
    add_secret_params(name for cam in config.cameras for name in cam.secret_params)
    return config
