"""The MQTT session every face shares: one paho client set up the same way (protocol, credentials, TLS, only
the network thread writes to the socket), the password and TLS files read at start, one error text.

Each face keeps its own connection, Last Will, topics and connect loop (the JSON face reconnects one client
and resends its queue; the Sparkplug node makes a client per session, as bdSeq requires), and each backs off
with :class:`edge.util.backoff.Backoff`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.config import ConfigError, MqttConfig, TlsConfig


def new_client(
    client_id: str,
    v5: bool,
    username: Optional[str],
    password: Optional[str],
    tls: Optional[TlsConfig],
    logger: logging.Logger,
) -> paho.Client:
    """A paho client for one face: MQTT 5 or 3.1.1 with a clean session, credentials, TLS.

    Only the network thread writes to the socket: without the write hook, paho writes from whichever thread
    publishes, and two threads' packets can interleave on the wire. Publishers only queue packets and wake
    the network thread's select() through paho's socket pair, as with loop_start().
    """
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.enable_logger(logger)
    if username is not None or password is not None:
        client.username_pw_set(username or "", password)
    if tls is not None:
        configure_tls(client, tls)
    client.on_socket_register_write = network_thread_writes
    return client


def command_filters(
    topics: Sequence[str], v5: bool, qos: int = 1
) -> Union[List[Tuple[str, int]], List[Tuple[str, SubscribeOptions]]]:
    """Subscription filters for command topics. On MQTT 5 with retain-as-published, so a retained command
    published while we are connected still carries its retain flag and the one retained-command guard
    (:class:`edge.commands.CommandDesk`) refuses it; MQTT 3.1.1 brokers clear the flag on live delivery, so
    only the retained copies delivered at subscribe time can be recognised there."""
    if not v5:
        return [(topic, qos) for topic in topics]
    return [(topic, SubscribeOptions(qos=qos, retainAsPublished=True)) for topic in topics]


def read_password(cfg: MqttConfig) -> Optional[str]:
    """The broker password from the config or its file (read here, at start, never in a validator)."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is None:
        return None
    try:
        return Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"mqtt.password_file: cannot read {cfg.password_file}: {exc.strerror or exc}"
        ) from exc


def configure_tls(client: paho.Client, tls: TlsConfig) -> None:
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"mqtt.tls.{name}: {path} does not exist or is not a file")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"mqtt.tls: the TLS files cannot be used: {exc}") from exc
    client.tls_insecure_set(tls.insecure)


def network_thread_writes(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook, used only to stop it writing from publishing threads (see _make_client)."""


def error_text(exc: BaseException) -> str:
    """``certificate verify failed: …`` or ``[Errno 111] Connection refused``, without paho's wrapping."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"
