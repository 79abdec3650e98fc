"""[mqtt]: the broker connection, its TLS and credentials, the offline queue and topics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, SecretStr, field_validator, model_validator

from edge.config.base import _Section


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
