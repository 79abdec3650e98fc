"""MqttTransport against a real mosquitto (retained state, v5 properties, the bounded queue, subscriptions,
reconnect timing, auth, TLS) and against a fake broker that stops acknowledging or stops reading."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.faces.mqtt_json.transport import MAX_IN_FLIGHT, Inbound, MqttTransport
from tests.helpers.broker import Broker, free_port
from tests.helpers.fake_broker import FakeBroker
from tests.helpers.mqtt import Subscriber

WAIT = 15.0  # generous: the machine is shared; every wait ends as soon as its condition holds


def persistent_broker(workdir: Path) -> Broker:
    """A broker that keeps sessions and queued messages across a restart (mosquitto persistence)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Broker(workdir, extra_conf=f"persistence true\npersistence_location {workdir}/\n")


def mqtt_cfg(broker: Broker | FakeBroker, **kw) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, **kw)


WILL = ("state", b"dead")


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def transports() -> Iterator[list[MqttTransport]]:
    made: list[MqttTransport] = []
    yield made
    for t in made:
        t.stop(timeout=2)


def start(made: list[MqttTransport], cfg: MqttConfig, prefix: str, **kw) -> MqttTransport:
    t = MqttTransport(cfg, prefix, f"pub-{uuid.uuid4().hex[:8]}", will=WILL, **kw)
    made.append(t)
    t.start()
    return t


def test_retained_state_and_v5_properties(
    broker: Broker, prefix: str, transports: list[MqttTransport]
) -> None:
    t = start(transports, mqtt_cfg(broker), prefix)
    t.set_retained("state", b"alive")
    t.set_retained("cam1/thing", b"one")
    assert t.wait_connected(WAIT)
    first = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    assert first.wait_for(lambda m: len(m) >= 2)  # now the broker holds both (live or retained for `first`)
    first.close()
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])  # subscribes after: gets the retained copies
    try:
        assert sub.wait_for(lambda m: len(m) >= 2)
        state = sub.on(f"{prefix}/state")[0]
        assert state.retain and state.payload == b"alive"
        t.publish(
            "cam1/mask/k-1", b"\x89PNG...", 1, kind="mask", content_type="image/png", correlation=b"k-1",
            user_properties=[("frame_key", "k-1")],
        )  # fmt: skip
        assert sub.wait_for(lambda m: any("/mask/" in x.topic for x in m))
        mask = sub.on(f"{prefix}/cam1/mask/k-1")[0]
        assert mask.payload == b"\x89PNG..." and not mask.retain
        assert mask.properties["ContentType"] == "image/png"
        assert mask.properties["CorrelationData"] == b"k-1"
        assert ("frame_key", "k-1") in mask.properties["UserProperty"]
    finally:
        sub.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux behaviour")
def test_network_thread_lowers_its_own_priority_only(
    broker: Broker, prefix: str, transports: list[MqttTransport]
) -> None:
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = start(transports, mqtt_cfg(broker), prefix, network_thread_nice=4)
    assert t.wait_connected(WAIT)
    network = t.session.thread
    assert network is not None and network.native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, network.native_id) == min(19, main_nice + 4)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_protocol_311(broker: Broker, prefix: str, transports: list[MqttTransport]) -> None:
    t = start(transports, mqtt_cfg(broker, protocol="3.1.1"), prefix)
    t.set_retained("state", b"alive")
    assert t.wait_connected(WAIT)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"], v5=False)
    try:
        t.publish("cam1/out", b"1", 1, content_type="application/json", correlation=b"1")
        assert sub.wait_for(lambda m: any(x.topic.endswith("/out") for x in m))
        assert sub.on(f"{prefix}/cam1/out")[0].payload == b"1"
        assert sub.on(f"{prefix}/state")[0].payload == b"alive"
    finally:
        sub.close()


def test_stop_sends_final_retained_state_and_a_kill_leaves_the_will(broker: Broker, prefix: str) -> None:
    t = MqttTransport(mqtt_cfg(broker), prefix, "pub-stop", will=WILL)
    t.set_retained("state", b"alive")
    t.start()
    assert t.wait_connected(WAIT)
    t.stop(final_retained=[("state", b"stopped")])
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    try:
        assert sub.wait_for(lambda m: len(m) >= 1)
        assert sub.on(f"{prefix}/state")[0].payload == b"stopped"  # a clean stop does not fire the Will
    finally:
        sub.close()


def test_queue_bound_order_and_drops_while_the_broker_is_down(
    tmp_path: Path, prefix: str, transports: list[MqttTransport]
) -> None:
    """While the broker is down: QoS 1 kept up to the bound (newest), oldest dropped and counted, QoS 0
    dropped."""
    broker = persistent_broker(tmp_path / "mosq").start()
    try:
        sub = Subscriber(
            broker.host, broker.port, [f"{prefix}/+/result"], v5=False,
            client_id=f"sub-{uuid.uuid4().hex[:8]}", persistent=True,
        )  # fmt: skip
        t = start(transports, mqtt_cfg(broker, offline_queue_max=5), prefix)
        assert t.wait_connected(WAIT)
        for seq in range(3):
            t.publish("cam1/result", f"{seq}".encode(), 1, kind="result")
        assert sub.wait_for(lambda m: len(m) >= 3)
        broker.stop()
        assert t.wait_for(lambda p: not p.connected, WAIT)
        for seq in range(3, 15):
            t.publish("cam1/result", f"{seq}".encode(), 1, kind="result")
        for _ in range(3):
            assert not t.publish("stats", b"{}", 0, kind="stats")
        snap = t.snapshot()
        assert snap["queued"] == 5 and snap["dropped"] == {"result": 7, "stats": 3}, snap
        broker.start()
        assert sub.wait_for(lambda m: any(x.payload == b"14" for x in m), timeout=30)
        seqs = [int(m.payload) for m in sub.on(f"{prefix}/cam1/result")]
        # QoS 1 is at-least-once: messages whose ack to the broker was lost in the restart may come again.
        # First arrivals must be in publish order: the queue's survivors, oldest first.
        assert list(dict.fromkeys(seqs)) == [0, 1, 2, 10, 11, 12, 13, 14], seqs
        assert t.snapshot()["queued"] == 0 and t.counters["connects"] >= 2
        sub.close()
    finally:
        broker.stop()


def test_subscriptions_routed_and_renewed_after_a_broker_restart(
    own_broker: Broker, prefix: str, transports: list[MqttTransport]
) -> None:
    got: list[Inbound] = []
    cond = threading.Condition()

    def on_set(msg: Inbound) -> None:
        with cond:
            got.append(msg)
            cond.notify_all()

    t = MqttTransport(mqtt_cfg(own_broker), prefix, f"pub-{uuid.uuid4().hex[:8]}", will=WILL)
    t.subscribe("+/threshold/set", on_set)
    transports.append(t)
    t.set_retained("cam1/thing", b"kept")
    t.start()
    assert t.wait_connected(WAIT)
    sender = Subscriber(own_broker.host, own_broker.port, [f"{prefix}/nothing"])
    sender.publish(f"{prefix}/cam1/other", b"ignored")
    sender.publish(f"{prefix}/cam1/threshold/set", b"1.5")
    with cond:
        assert cond.wait_for(lambda: len(got) >= 1, WAIT)
    assert (got[0].suffix, got[0].payload, got[0].retain) == ("cam1/threshold/set", b"1.5", False)
    sender.close()

    own_broker.stop()  # no persistence: the broker forgets subscriptions and retained messages
    assert t.wait_for(lambda p: not p.connected, WAIT)
    own_broker.start()
    assert t.wait_for(lambda p: p.counters["connects"] >= 2, 30)
    sender = Subscriber(own_broker.host, own_broker.port, [f"{prefix}/cam1/thing"])
    try:
        assert sender.wait_for(lambda m: len(m) >= 1)  # retained state re-published on reconnect
        assert sender.on(f"{prefix}/cam1/thing")[0].payload == b"kept"
        sender.publish(f"{prefix}/cam2/threshold/set", b"2", retain=True)
        with cond:
            assert cond.wait_for(lambda: len(got) >= 2, WAIT)  # re-subscribed at connect
        # live delivery: MQTT 5 retain-as-published keeps the flag, so the command guard can refuse it
        assert (got[1].suffix, got[1].retain) == ("cam2/threshold/set", True)
    finally:
        sender.close()


def test_back_online_within_5_s_of_the_broker_returning(
    own_broker: Broker, prefix: str, transports: list[MqttTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """The default backoff is capped at 4 s (jittered), so a long outage costs at most ~5 s after it ends."""
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    t = start(transports, mqtt_cfg(own_broker), prefix)
    assert t.wait_connected(WAIT)
    own_broker.stop()
    # 1, 2, 4, 4 s nominal (x0.5..1 jitter): four failures mean the backoff has reached its cap
    assert t.wait_for(lambda p: p.counters["connect_failures"] >= 4, 30)
    own_broker.start()
    back = time.monotonic()
    assert t.wait_connected(10)
    assert time.monotonic() - back < 5.0
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.mqtt"]
    broker = f"{own_broker.host}:{own_broker.port}"
    lost = [m for m in lines if "connection lost" in m]
    refused = [m for m in lines if "cannot connect" in m]
    assert len(lost) == 1 and broker in lost[0]
    assert len(refused) == 1 and broker in refused[0] and "refused" in refused[0].lower(), refused
    connected = [m for m in lines if ": connected" in m]
    failures = t.counters["connect_failures"]
    assert f"after {failures} failed attempt(s)" in connected[-1]  # the counter and the log agree


def test_a_broker_that_never_acknowledges_bounds_memory_counts_drops_and_warns(
    prefix: str, transports: list[MqttTransport], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeBroker("no_ack")
    try:
        bound = 50
        t = start(
            transports,
            MqttConfig(host=fake.host, port=fake.port, offline_queue_max=bound, ack_stall_s=0.5),
            prefix,
        )
        assert t.wait_connected(WAIT)
        for _ in range(400):
            t.publish("cam1/result", b"x" * 1000, 1, kind="result")
            assert t.in_flight() + t.snapshot()["queued"] <= bound
        assert t.in_flight() <= MAX_IN_FLIGHT
        assert _wait(lambda: bool(t.warnings()))
        assert "not acknowledging" in t.warnings()[0] and f"{fake.host}:{fake.port}" in t.warnings()[0]
        snap = t.snapshot()
        assert snap["dropped"]["result"] == 400 - snap["queued"] - snap["in_flight"]
        assert fake.wait_for(lambda f: len(f.published) >= MAX_IN_FLIGHT, WAIT)
        assert len([p for p in fake.published if p.qos]) == MAX_IN_FLIGHT  # paho was never given more
        assert t.publish("stats", b"{}", 0, kind="stats")  # QoS 0 still flows: stats can say what is wrong
        assert fake.wait_for(lambda f: any(p.topic.endswith("/stats") for p in f.published), WAIT)
        assert _wait(lambda: any("not acknowledging" in r.getMessage() for r in caplog.records))
    finally:
        fake.close()


def test_a_broker_that_stops_reading_bounds_memory_and_counts_drops(
    prefix: str, transports: list[MqttTransport]
) -> None:
    fake = FakeBroker("no_read")
    try:
        bound = 30
        t = start(
            transports,
            MqttConfig(host=fake.host, port=fake.port, offline_queue_max=bound, ack_stall_s=0.5),
            prefix,
        )
        assert t.wait_connected(WAIT)
        big = b"m" * 200_000  # a few of these fill the socket buffers, so writes stop going anywhere
        for _ in range(200):
            t.publish("cam1/mask/k", big, 1, kind="mask")
            t.publish("stats", b"{}", 0, kind="stats")
            qos0, qos1, queued = t.occupancy()
            assert qos0 <= MAX_IN_FLIGHT
            assert qos1 + queued <= bound
        assert _wait(lambda: bool(t.warnings()))
        snap = t.snapshot()
        assert snap["dropped"]["mask"] >= 200 - bound
        assert snap["dropped"].get("stats", 0) > 0  # QoS 0 is dropped, not piled up, once nothing is written
    finally:
        fake.close()


def _wait(predicate, timeout: float = WAIT) -> bool:  # noqa: ANN001
    """For conditions with no event of their own (a warning that appears with time), with a hard timeout."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.05)
    return True


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
    tmp_path: Path, prefix: str, transports: list[MqttTransport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    broker = _passwd_broker(tmp_path).start()
    try:
        bad = start(transports, mqtt_cfg(broker, username="edge", password="wrong"), prefix)
        assert bad.wait_for(lambda p: p.counters["connect_failures"] >= 1, WAIT)
        assert not bad.connected
        bad.publish("cam1/result", b"{}", 1, kind="result")
        assert bad.snapshot()["queued"] == 1  # kept for later, not handed to a refused connection
        refused = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
        assert refused and f"{broker.host}:{broker.port}" in refused[0]
        secret = tmp_path / "secret"
        secret.write_text("right-pass\n", encoding="utf-8")
        good = start(transports, mqtt_cfg(broker, username="edge", password_file=secret), prefix)
        assert good.wait_connected(WAIT)
    finally:
        for t in transports:
            t.stop(timeout=1)
        transports.clear()
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


def test_tls_connection_and_a_clear_certificate_error(
    tmp_path: Path, prefix: str, transports: list[MqttTransport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    workdir = tmp_path / "tls"
    workdir.mkdir()
    ca, cert, key = _make_certs(workdir)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = _make_certs(other)
    tls_port = free_port()
    broker = Broker(
        workdir,
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
    )
    broker.start()
    try:
        t = start(transports, MqttConfig(host="127.0.0.1", port=tls_port, tls={"ca_file": ca}), prefix)
        t.set_retained("state", b"alive")
        assert t.wait_connected(WAIT)
        sub = Subscriber(
            broker.host, broker.port, [f"{prefix}/state"]
        )  # the plain listener of the same broker
        assert sub.wait_for(lambda m: len(m) >= 1)
        assert sub.messages[0].payload == b"alive"
        sub.close()
        wrong = start(
            transports, MqttConfig(host="127.0.0.1", port=tls_port, tls={"ca_file": wrong_ca}), prefix
        )
        assert wrong.wait_for(lambda p: p.counters["connect_failures"] >= 1, WAIT)
        lines = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
        assert any("certificate verify failed" in m and f"127.0.0.1:{tls_port}" in m for m in lines), lines
        assert not any("Client is not connected" in r.getMessage() for r in caplog.records)
    finally:
        for t in transports:
            t.stop(timeout=1)
        transports.clear()
        broker.stop()


def test_paho_without_drop_out_messages_still_delivers_after_a_restart(
    tmp_path: Path, prefix: str, transports: list[MqttTransport]
) -> None:
    """paho 2.1 (the JetPack lock's) has no drop_out_messages: paho resends its unacknowledged messages."""
    broker = persistent_broker(tmp_path / "mosq").start()
    try:
        sub = Subscriber(broker.host, broker.port, [f"{prefix}/+/result"], persistent=True)
        t = MqttTransport(mqtt_cfg(broker), prefix, f"pub-{uuid.uuid4().hex[:8]}", will=WILL)
        t.client.drop_out_messages = None  # type: ignore[assignment,method-assign]  # as in paho < 2.2
        transports.append(t)
        t.start()
        assert t.wait_connected(WAIT)
        t.publish("cam1/result", b"0", 1, kind="result")
        assert sub.wait_for(lambda m: len(m) >= 1)
        broker.stop()
        assert t.wait_for(lambda p: not p.connected, WAIT)
        for seq in range(1, 4):
            t.publish("cam1/result", f"{seq}".encode(), 1, kind="result")
        broker.start()
        assert sub.wait_for(lambda m: {x.payload for x in m} >= {b"0", b"1", b"2", b"3"}, 30)
        sub.close()
    finally:
        broker.stop()


def test_an_error_in_the_network_thread_is_counted_and_survived(
    broker: Broker, prefix: str, transports: list[MqttTransport], caplog: pytest.LogCaptureFixture
) -> None:
    t = MqttTransport(mqtt_cfg(broker), prefix, f"pub-{uuid.uuid4().hex[:8]}", will=WILL)
    transports.append(t)
    real = t._carry_unacked
    calls: list[int] = []

    def broken_once(client):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in on_connect")
        return real(client)

    t._carry_unacked = broken_once  # type: ignore[method-assign]
    t.start()
    assert t.wait_connected(WAIT)
    assert t.counters["network_errors"] == 1 and len(calls) == 2
    assert any("network thread error" in r.getMessage() for r in caplog.records)
