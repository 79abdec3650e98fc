"""[sparkplug]: the Sparkplug B edge node beside the JSON API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator, model_validator

from edge.config.base import _Section, _topic_safe


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
