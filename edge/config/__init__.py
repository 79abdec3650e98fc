"""The daemon's configuration: one pydantic-settings model, read from a TOML file, the environment and CLI.

Precedence, highest first: CLI overrides (``--set key.path=value``) > environment (``EDGE_…``, nested with
``__``, e.g. ``EDGE_MQTT__PORT=1884``) > the TOML file (``--config``) > the defaults in each section.

Every model forbids unknown keys, so a typo (``fsp`` for ``fps``) stops the daemon at start with the key's
path instead of being silently ignored on a line nobody watches. Validators only check values: files named
here (bundle, TLS files, password file) are opened later, by the code that uses them.

One module per section (``mqtt``, ``cameras``, ``model``, ``postprocess`` with ``health``, ``evidence``,
``sparkplug``; what they share in ``base``); this module holds :class:`EdgeConfig` and its loading, and
re-exports every section, so ``from edge.config import MqttConfig`` is the one way to import them.

Config objects hold data only; every stage may read them. May import: edge.util, and the backend name table
(``edge.scoring.backends.BACKENDS``, a dict of strings) to check ``model.backend``.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge.config.base import MASK, TOPIC_SAFE, ConfigError, PublishMask, _default_device_id, _topic_safe
from edge.config.cameras import CameraConfig
from edge.config.evidence import EvidenceConfig
from edge.config.model import ModelConfig
from edge.config.mqtt import MqttConfig, TlsConfig
from edge.config.opcua import OpcUaConfig
from edge.config.parts import PartAction, PartConfig, check_parts
from edge.config.postprocess import HealthConfig, PostprocessConfig
from edge.config.regions import RegionConfig, units_of
from edge.config.sparkplug import SparkplugConfig
from edge.config.web import WebConfig
from edge.util.redact import add_secret_params, redact_deep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - JetPack 5 (Python 3.8) path
    import tomli as tomllib

__all__ = [  # the sections live in one module each; everyone imports them from here
    "MASK",
    "TOPIC_SAFE",
    "CameraConfig",
    "ConfigError",
    "EdgeConfig",
    "EvidenceConfig",
    "HealthConfig",
    "ModelConfig",
    "MqttConfig",
    "OpcUaConfig",
    "PartAction",
    "PartConfig",
    "PostprocessConfig",
    "PublishMask",
    "RegionConfig",
    "SparkplugConfig",
    "TlsConfig",
    "WebConfig",
    "format_validation_error",
    "load_config",
    "parse_overrides",
    "read_toml",
    "unknown_env_keys",
]

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
    web: WebConfig = Field(default_factory=WebConfig, description="live-view web page (off by default)")
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig, description="OPC UA server (off by default)")
    cameras: List[CameraConfig] = Field(min_length=1, description="one [[cameras]] table per camera")
    parts: List[PartConfig] = Field(
        default_factory=list,
        description="one [[parts]] table per inspected part: its cameras, deadline and default action",
    )
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
        named = [cam.name for cam in self.units() if cam.recipe is not None]
        if named and self.model.store is None:
            raise ValueError(f"cameras {', '.join(named)} name a recipe but model.store is not set")
        return self

    @model_validator(mode="after")
    def _parts_name_enabled_cameras(self) -> EdgeConfig:
        check_parts(self.parts, self.units())
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

    def units(self) -> List[CameraConfig]:
        """Every inspection unit: a camera section, or each of its ``regions`` as ``<camera>/<region>``."""
        return [unit for cam in self.cameras for unit in units_of(cam)]

    def enabled_cameras(self) -> List[CameraConfig]:
        """The inspection units of the enabled cameras (what is scored, published and commanded)."""
        return [unit for unit in self.units() if unit.enabled]

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
