"""[opcua]: the OPC UA server face (docs/opcua.md), off by default.

Anonymous access is allowed only on a loopback endpoint. An endpoint beyond the host needs user accounts
from ``users_file`` and the server's own certificate and key (``SignAndEncrypt`` only); a config without
them is refused here, before anything listens. ``trusted_clients_dir`` adds a trust list of client
certificates on top. Files are read when the server starts, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edge.config.base import _Section

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def endpoint_host(endpoint: str) -> str:
    """The host part of ``opc.tcp://HOST:PORT[/path]`` (brackets of an IPv6 address removed)."""
    return (urlsplit(endpoint).hostname or "").lower()


class OpcUaConfig(_Section):
    """An OPC UA server beside the MQTT faces (OPC 40100-1 Machine Vision structure where it fits)."""

    enabled: bool = Field(default=False, description="serve the OPC UA face (needs the 'opcua' extra)")
    endpoint: str = Field(
        default="opc.tcp://127.0.0.1:4840",
        description="endpoint URL the server listens on; any host but 127.0.0.1/localhost/::1 needs "
        "users_file, cert_file and key_file",
    )
    users_file: Optional[Path] = Field(
        default=None,
        description="user accounts, one 'name:pbkdf2-sha256:<iterations>:<salt hex>:<hash hex>' line each "
        "(python -m edge.faces.opcua.users NAME prints one); given: anonymous access is off",
    )
    cert_file: Optional[Path] = Field(
        default=None, description="the server's own certificate (PEM or DER); given: SignAndEncrypt only"
    )
    key_file: Optional[Path] = Field(default=None, description="private key (PEM) of cert_file")
    trusted_clients_dir: Optional[Path] = Field(
        default=None,
        description="folder of trusted client certificates (*.pem / *.der, certificates only; a CA's "
        "certificate trusts what it signed); given: a client whose certificate is not trusted gets no "
        "session. Needs cert_file",
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"endpoint {value!r} is not opc.tcp://HOST:PORT (e.g. opc.tcp://127.0.0.1:4840)")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"endpoint {value!r} has no valid port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _secure_beyond_localhost(self) -> OpcUaConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.trusted_clients_dir is not None and self.cert_file is None:
            raise ValueError(
                "trusted_clients_dir checks client certificates, which only a secured endpoint receives: "
                "set cert_file and key_file too"
            )
        host = endpoint_host(self.endpoint)
        if self.enabled and host not in LOOPBACK_HOSTS:
            missing = [
                name for name in ("users_file", "cert_file", "key_file") if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"endpoint {self.endpoint} listens beyond this host, which needs user accounts and "
                    f"SignAndEncrypt: set {', '.join(missing)} (docs/opcua.md, 'Security'), or bind to "
                    "127.0.0.1"
                )
        return self

    @property
    def local_only(self) -> bool:
        """True: loopback endpoint without accounts or certificate, anonymous and unencrypted."""
        return self.users_file is None and self.cert_file is None
