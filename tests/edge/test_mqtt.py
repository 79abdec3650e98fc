"""MqttPublisher against a real mosquitto: retained state, v5 properties, offline queue, threshold/set, auth, TLS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.mqtt import MqttPublisher
from tests.helpers.broker import Broker, free_port
from tests.helpers.mqtt import Subscriber

WAIT = 15.0  # generous: the machine is shared; every wait ends as soon as its condition holds


# Run as root, mosquitto drops to its own user before reading password files and writing its database,
# and pytest's tmp dirs are private to root; "user root" keeps it able to reach them.


def persistent_broker(workdir: Path) -> Broker:
    """A broker that keeps sessions and queued messages across a restart (mosquitto persistence)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Broker(workdir, extra_conf=f"persistence true\npersistence_location {workdir}/\n")


def mqtt_cfg(broker: Broker, **kw) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, **kw)


STATUS = {"version": "test", "model": "tiny@abc"}


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def publishers() -> Iterator[list[MqttPublisher]]:
    made: list[MqttPublisher] = []
    yield made
    for pub in made:
        pub.stop(timeout=2)


def start(made: list[MqttPublisher], cfg: MqttConfig, prefix: str, **kw) -> MqttPublisher:
    pub = MqttPublisher(cfg, prefix, f"pub-{uuid.uuid4().hex[:8]}", STATUS, **kw)
    made.append(pub)
    pub.start()
    return pub


def test_status_retained_and_v5_properties(
    broker: Broker, prefix: str, publishers: list[MqttPublisher]
) -> None:
    pub = start(publishers, mqtt_cfg(broker), prefix)
    assert pub.wait_connected(WAIT)
    pub.set_retained("cam1/availability", b"online")
    first = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    assert first.wait_for(lambda m: len(m) >= 2)  # now the broker holds both (live or retained for `first`)
    first.close()
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])  # subscribes after: gets the retained copies
    try:
        assert sub.wait_for(lambda m: len(m) >= 2)
        status = sub.on(f"{prefix}/status")[0]
        assert status.retain and status.json() == {"state": "online", **STATUS}
        avail = sub.on(f"{prefix}/cam1/availability")[0]
        assert avail.retain and avail.payload == b"online"
        pub.publish(
            "cam1/mask",
            b"\x89PNG...",
            1,
            content_type="image/png",
            correlation=b"42",
            user_properties=[("frame_id", "42"), ("camera", "cam1")],
        )
        assert sub.wait_for(lambda m: any(x.topic.endswith("/mask") for x in m))
        mask = sub.on(f"{prefix}/cam1/mask")[0]
        assert mask.payload == b"\x89PNG..." and not mask.retain
        assert mask.properties["ContentType"] == "image/png"
        assert mask.properties["CorrelationData"] == b"42"
        assert ("frame_id", "42") in mask.properties["UserProperty"]
    finally:
        sub.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux behaviour")
def test_network_thread_lowers_its_own_priority_only(
    broker: Broker, prefix: str, publishers: list[MqttPublisher]
) -> None:
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pub = start(publishers, mqtt_cfg(broker), prefix, network_thread_nice=4)
    assert pub.wait_connected(WAIT)
    network = pub.client._thread  # paho's loop_start thread, the one that runs on_connect
    assert network is not None and network.native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, network.native_id) == min(19, main_nice + 4)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_protocol_311(broker: Broker, prefix: str, publishers: list[MqttPublisher]) -> None:
    pub = start(publishers, mqtt_cfg(broker, protocol="3.1.1"), prefix)
    assert pub.wait_connected(WAIT)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"], v5=False)
    try:
        pub.publish("cam1/result", b'{"frame_id": 1}', 1, content_type="application/json", correlation=b"1")
        assert sub.wait_for(lambda m: any(x.topic.endswith("/result") for x in m))
        assert sub.on(f"{prefix}/cam1/result")[0].payload == b'{"frame_id": 1}'
        assert sub.on(f"{prefix}/status")[0].json()["state"] == "online"
    finally:
        sub.close()


def test_stop_publishes_offline_and_final_retained_state(broker: Broker, prefix: str) -> None:
    pub = MqttPublisher(mqtt_cfg(broker), prefix, "pub-stop", STATUS)
    pub.start()
    assert pub.wait_connected(WAIT)
    pub.stop(offline_retained=[("cam1/availability", b"offline")])
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    try:
        assert sub.wait_for(lambda m: len(m) >= 2)
        assert sub.on(f"{prefix}/status")[0].json() == {"state": "offline", "reason": "shutdown", **STATUS}
        assert sub.on(f"{prefix}/cam1/availability")[0].payload == b"offline"
    finally:
        sub.close()


def test_stop_does_not_repeat_a_final_state_already_published(broker: Broker, prefix: str) -> None:
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/+/availability"])
    pub = MqttPublisher(mqtt_cfg(broker), prefix, "pub-once", STATUS)
    pub.start()
    try:
        assert pub.wait_connected(WAIT)
        pub.set_retained("cam1/availability", b"online")
        pub.set_retained("cam1/availability", b"offline")  # the camera's own stop
        pub.stop(offline_retained=[("cam1/availability", b"offline"), ("cam2/availability", b"offline")])
        assert sub.wait_for(lambda m: len(sub.on(f"{prefix}/cam2/availability")) >= 1)
        assert [m.payload for m in sub.on(f"{prefix}/cam1/availability")] == [b"online", b"offline"]
    finally:
        sub.close()


def test_offline_queue_bound_order_and_drops(
    tmp_path: Path, prefix: str, publishers: list[MqttPublisher]
) -> None:
    """While the broker is down: QoS 1 kept up to the bound (newest), oldest dropped and counted, QoS 0 dropped."""
    broker = persistent_broker(tmp_path / "mosq").start()
    try:
        sub = Subscriber(
            broker.host,
            broker.port,
            [f"{prefix}/+/result"],
            v5=False,
            client_id=f"sub-{uuid.uuid4().hex[:8]}",
            persistent=True,
        )
        pub = start(publishers, mqtt_cfg(broker, offline_queue_max=5), prefix)
        assert pub.wait_connected(WAIT)
        for seq in range(3):
            pub.publish("cam1/result", json.dumps({"seq": seq}).encode(), 1)
        assert sub.wait_for(lambda m: len(m) >= 3)
        broker.stop()
        assert pub.wait_for(lambda p: not p.connected, WAIT)
        for seq in range(3, 15):
            pub.publish("cam1/result", json.dumps({"seq": seq}).encode(), 1)
        for _ in range(3):
            pub.publish("stats", b"{}", 0)
        snap = pub.snapshot()
        assert (
            snap["offline_queue"] == 5 and snap["offline_dropped"] == 7 and snap["qos0_dropped_offline"] == 3
        )
        broker.start()
        assert sub.wait_for(lambda m: any(x.json()["seq"] == 14 for x in m), timeout=30)
        seqs = [m.json()["seq"] for m in sub.on(f"{prefix}/cam1/result")]
        # QoS 1 is at-least-once: messages whose ack to the broker was lost in the restart may come again.
        # First arrivals must be in publish order: the queue's survivors, oldest first.
        assert list(dict.fromkeys(seqs)) == [0, 1, 2, 10, 11, 12, 13, 14], seqs
        assert pub.snapshot()["offline_queue"] == 0 and pub.counters["connects"] >= 2
        sub.close()
    finally:
        broker.stop()


def test_threshold_set_routed_and_state_restored_after_restart(
    own_broker: Broker, prefix: str, publishers: list[MqttPublisher]
) -> None:
    got: list[tuple[str, bytes]] = []
    cond = threading.Condition()

    def on_set(camera: str, payload: bytes) -> None:
        with cond:
            got.append((camera, payload))
            cond.notify_all()

    pub = start(publishers, mqtt_cfg(own_broker), prefix, on_threshold_set=on_set)
    assert pub.wait_connected(WAIT)
    pub.set_retained("cam1/availability", b"online")
    sender = Subscriber(own_broker.host, own_broker.port, [f"{prefix}/nothing"])
    sender.publish(f"{prefix}/cam1/other", b"ignored")
    sender.publish(f"{prefix}/cam1/threshold/set", b"1.5")
    with cond:
        assert cond.wait_for(lambda: len(got) >= 1, WAIT)
    assert got == [("cam1", b"1.5")]
    sender.close()

    own_broker.stop()  # no persistence: the broker forgets subscriptions and retained messages
    assert pub.wait_for(lambda p: not p.connected, WAIT)
    own_broker.start()
    assert pub.wait_for(lambda p: p.counters["connects"] >= 2, 30)
    sender = Subscriber(own_broker.host, own_broker.port, [f"{prefix}/+/availability", f"{prefix}/status"])
    try:
        assert sender.wait_for(lambda m: len(m) >= 2)  # retained state re-published on reconnect
        assert sender.on(f"{prefix}/cam1/availability")[0].payload == b"online"
        sender.publish(f"{prefix}/cam2/threshold/set", b'{"threshold": 2}')
        with cond:
            assert cond.wait_for(lambda: len(got) >= 2, WAIT)  # re-subscribed in on_connect
        assert got[1] == ("cam2", b'{"threshold": 2}')
    finally:
        sender.close()


def _passwd_broker(tmp_path: Path) -> Broker:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    workdir = tmp_path / "auth"
    workdir.mkdir()
    pwfile = workdir / "passwd"
    subprocess.run([tool, "-b", "-c", str(pwfile), "edge", "right-pass"], check=True, capture_output=True)
    return Broker(workdir, extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n")


def test_refused_login_is_not_connected_and_right_password_file_is(
    tmp_path: Path, prefix: str, publishers: list[MqttPublisher]
) -> None:
    broker = _passwd_broker(tmp_path).start()
    try:
        bad = start(publishers, mqtt_cfg(broker, username="edge", password="wrong"), prefix)
        assert bad.wait_for(lambda p: p.counters["connect_failures"] >= 1, WAIT)
        assert not bad.connected
        bad.publish("cam1/result", b"{}", 1)
        assert bad.snapshot()["offline_queue"] == 1  # kept for later, not handed to a refused connection
        secret = tmp_path / "secret"
        secret.write_text("right-pass\n", encoding="utf-8")
        good = start(publishers, mqtt_cfg(broker, username="edge", password_file=secret), prefix)
        assert good.wait_connected(WAIT)
    finally:
        for pub in publishers:
            pub.stop(timeout=1)
        publishers.clear()
        broker.stop()


def _make_certs(workdir: Path) -> tuple[Path, Path, Path]:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, cert = (
        workdir / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = workdir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")

    def run(*args: str) -> None:
        subprocess.run([tool, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=edge-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


def test_tls_connection(tmp_path: Path, prefix: str, publishers: list[MqttPublisher]) -> None:
    workdir = tmp_path / "tls"
    workdir.mkdir()
    ca, cert, key = _make_certs(workdir)
    tls_port = free_port()
    broker = Broker(
        workdir,
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
    )
    broker.start()
    try:
        pub = start(publishers, MqttConfig(host="127.0.0.1", port=tls_port, tls={"ca_file": ca}), prefix)
        assert pub.wait_connected(WAIT)
        sub = Subscriber(
            broker.host, broker.port, [f"{prefix}/status"]
        )  # the plain listener of the same broker
        assert sub.wait_for(lambda m: len(m) >= 1)
        assert sub.messages[0].json()["state"] == "online"
        sub.close()
    finally:
        for pub in publishers:
            pub.stop(timeout=1)
        publishers.clear()
        broker.stop()
