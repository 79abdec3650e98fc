"""The shipped broker config (deploy/mosquitto) enforces mutual TLS, certificate-bound identity and
per-device topics: one device can neither evict nor impersonate another, whatever user name, password or
client id it sends.

A real mosquitto runs the real mosquitto.conf and acl (only paths and the port rewritten), with certificates
from the real make-certs.sh. Clients are paho-mqtt 2.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO_DIR = REPO / "deploy" / "mosquitto"
INSTALLED_DIR = "/etc/mosquitto/edge-anomaly"
DEVICE = "line3-station2"
OTHER = "line9-other"  # a second device with its own certificate
PASSWORDS = {DEVICE: "device-secret", OTHER: "other-secret", "scada": "scada-secret"}  # sent, and ignored
WAIT_S = 10.0
# CONNECT, MQTT 3.1.1, clean session, keepalive 60 s, empty client id.
MQTT311_CONNECT = bytes([0x10, 0x0C, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])

pytestmark = pytest.mark.timeout(120)


@dataclass
class SecureBroker:
    host: str
    port: int
    certs: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(tool: str) -> str:
    """The tool's path; Debian puts mosquitto in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/local/sbin/{tool}") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip(f"{tool} is not installed (apt-get install mosquitto mosquitto-clients openssl)")
    return found


def _write_broker_files(work: Path, port: int) -> Path:
    """Certs, passwd, acl and the shipped mosquitto.conf with its paths pointed at ``work``."""
    subprocess.run(
        [
            "bash",
            str(MOSQUITTO_DIR / "make-certs.sh"),
            str(work / "certs"),
            "--client",
            DEVICE,
            "--client",
            OTHER,
            "--client",
            "scada",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    shutil.copy(MOSQUITTO_DIR / "acl", work / "acl")
    conf_text = (MOSQUITTO_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    assert "listener 8883\n" in conf_text and INSTALLED_DIR in conf_text
    conf_text = conf_text.replace(INSTALLED_DIR, str(work)).replace(
        "listener 8883\n", f"listener {port} 127.0.0.1\n"
    )
    # Test-only lines: log to a file we can show on failure; when the tests run as root, stay root so the
    # broker can read the 0600 keys in pytest's 0700 tmp dir (as a normal user mosquitto ignores `user`).
    conf_text += f"\nlog_dest file {work / 'mosquitto.log'}\nlog_type all\npersistence false\nuser root\n"
    conf = work / "mosquitto.conf"
    conf.write_text(conf_text, encoding="utf-8")
    return conf


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mosquitto exited with {proc.returncode}:\n{log.read_text() if log.exists() else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet; no event to wait on
    raise RuntimeError(f"mosquitto did not listen on {port} within {WAIT_S}s")


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    binary = _need("mosquitto")
    _need("openssl")
    work = tmp_path_factory.mktemp("secure-broker")
    port = _free_port()
    conf = _write_broker_files(work, port)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, work / "mosquitto.log")
        yield SecureBroker("127.0.0.1", port, work / "certs", work / "mosquitto.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Session:
    """A paho client plus what its callbacks saw, each behind an event to wait on."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    connect_rc: ReasonCode | None = None
    suback: list[ReasonCode] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    got_message: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_topic(self, topic: str, timeout: float = WAIT_S) -> bytes:
        with self.got_message:
            ok = self.got_message.wait_for(lambda: any(t == topic for t, _ in self.messages), timeout=timeout)
            assert ok, f"no message on {topic} within {timeout}s; got {[t for t, _ in self.messages]}"
            return next(p for t, p in self.messages if t == topic)

    def subscribe(self, topic: str) -> ReasonCode:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT_S), f"no SUBACK for {topic}"
        return self.suback[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _open(
    broker: SecureBroker,
    user: str | None,
    password: str | None,
    cert: str | None,
    expect_connect: bool = True,
    client_id: str | None = None,
) -> Session:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{user}-{cert}", protocol=mqtt.MQTTv5
    )
    certfile = str(broker.certs / f"{cert}.crt") if cert else None
    keyfile = str(broker.certs / f"{cert}.key") if cert else None
    client.tls_set(ca_certs=str(broker.certs / "ca.crt"), certfile=certfile, keyfile=keyfile)
    if user is not None:
        client.username_pw_set(user, password)
    session = Session(client)

    def on_connect(_c, _u, _flags, reason_code, _props):
        session.connect_rc = reason_code
        session.connected.set()

    def on_subscribe(_c, _u, _mid, reason_codes, _props):
        session.suback = list(reason_codes)
        session.subscribed.set()

    def on_message(_c, _u, msg):
        with session.got_message:
            session.messages.append((msg.topic, msg.payload))
            session.got_message.notify_all()

    def on_disconnect(*_args):
        session.disconnected.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if expect_connect:
        assert session.connected.wait(WAIT_S), f"no CONNACK within {WAIT_S}s; broker log {broker.log}"
        assert session.connect_rc is not None and not session.connect_rc.is_failure, (
            f"{user} was refused: {session.connect_rc}"
        )
    return session


def _publish(session: Session, topic: str, payload: bytes) -> ReasonCode | int:
    """QoS 1 publish; returns what the broker said in PUBACK (MQTT 5 reason code)."""
    acked = threading.Event()
    result: dict[str, ReasonCode | int] = {}

    def on_publish(_c, _u, _mid, reason_code, _props):
        result["rc"] = reason_code
        acked.set()

    session.client.on_publish = on_publish
    info = session.client.publish(topic, payload, qos=1)
    assert info.rc == mqtt.MQTT_ERR_SUCCESS
    assert acked.wait(WAIT_S), f"no PUBACK for {topic}"
    return result["rc"]


def test_device_with_certificate_and_password_publishes_its_results(secure_broker: SecureBroker) -> None:
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    device = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], DEVICE)
    try:
        assert not scada.subscribe("edge-anomaly/#").is_failure
        topic = f"edge-anomaly/{DEVICE}/cam0/result"
        rc = _publish(device, topic, b'{"schema":1,"score":4.2}')
        assert not getattr(rc, "is_failure", False)
        assert scada.wait_for_topic(topic) == b'{"schema":1,"score":4.2}'
    finally:
        device.close()
        scada.close()


def test_the_certificate_not_the_claimed_user_decides_the_rights(secure_broker: SecureBroker) -> None:
    """A device certificate with SCADA's user name and password still has only that device's rights."""
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    posing = _open(secure_broker, "scada", PASSWORDS["scada"], DEVICE, client_id="scada")
    other = _open(secure_broker, OTHER, PASSWORDS[OTHER], OTHER)
    try:
        assert not scada.subscribe("edge-anomaly/#").is_failure
        assert not other.subscribe(f"edge-anomaly/{OTHER}/#").is_failure
        # SCADA's right: set another device's threshold. The
        # poser is refused; only the real SCADA gets through.
        target = f"edge-anomaly/{OTHER}/cam0/threshold/set"
        denied = _publish(posing, target, b"999")
        _publish(scada, target, b"3.0")
        assert other.wait_for_topic(target) == b"3.0"
        assert [p for t, p in other.messages if t == target] == [b"3.0"], other.messages
        assert getattr(denied, "value", 0) == 0x87  # Not authorized
        # SCADA's other right: read every device. The poser subscribed to all sees only its own device.
        posing.subscribe("edge-anomaly/#")
        theirs = f"edge-anomaly/{OTHER}/status"
        _publish(other, theirs, b'{"state":"online"}')
        mine = f"edge-anomaly/{DEVICE}/cam0/threshold/set"
        _publish(scada, mine, b"2.0")
        assert posing.wait_for_topic(mine) == b"2.0"
        assert [t for t, _ in posing.messages] == [mine], posing.messages
    finally:
        for session in (posing, other, scada):
            session.close()


def test_a_device_cannot_evict_or_publish_as_another(secure_broker: SecureBroker) -> None:
    """Another device's certificate with this device's client id, user name and password, again and again:
    the device stays connected, and nothing reaches SCADA under its name."""
    client_id = f"edge-anomaly-{DEVICE}"  # the daemon's default client id
    device = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], DEVICE, client_id=client_id)
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    try:
        assert not scada.subscribe("edge-anomaly/#").is_failure
        forged = f"edge-anomaly/{DEVICE}/cam0/result"
        for attempt in range(5):
            intruder = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], OTHER, client_id=client_id)
            try:
                rc = _publish(intruder, forged, b'{"schema":1,"score":0.0,"anomalous":false}')
                assert getattr(rc, "value", 0) == 0x87, rc
            finally:
                intruder.close()
            # An eviction is sent before the intruder's CONNACK, so by now the device would have been told; a
            # QoS 1 round trip on the device proves its session is the one the broker still holds.
            own = f"edge-anomaly/{DEVICE}/status"
            assert not getattr(_publish(device, own, f"alive {attempt}".encode()), "is_failure", False)
            assert not device.disconnected.is_set(), "the device was evicted by another device's certificate"
        assert scada.wait_for_topic(f"edge-anomaly/{DEVICE}/status")
        with scada.got_message:
            scada.got_message.wait_for(lambda: len(scada.messages) >= 5, timeout=WAIT_S)
        assert [t for t, _ in scada.messages] == [f"edge-anomaly/{DEVICE}/status"] * 5, scada.messages
    finally:
        scada.close()
        device.close()


def _tls_context(broker: SecureBroker, max_version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(broker.certs / "ca.crt"))
    ctx.maximum_version = max_version  # no client certificate loaded
    return ctx


def test_client_without_certificate_fails_the_tls_handshake(secure_broker: SecureBroker) -> None:
    # TLS 1.2: the server asks for a certificate inside the handshake, so the handshake itself fails.
    with socket.create_connection((secure_broker.host, secure_broker.port), timeout=WAIT_S) as raw:
        ctx = _tls_context(secure_broker, ssl.TLSVersion.TLSv1_2)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            ctx.wrap_socket(raw, server_hostname="localhost")
    # TLS 1.3: the client finishes first and the server's "certificate required" alert ends the session on
    # the first read: no CONNACK ever arrives.
    with socket.create_connection((secure_broker.host, secure_broker.port), timeout=WAIT_S) as raw:
        ctx = _tls_context(secure_broker, ssl.TLSVersion.TLSv1_3)
        with (
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        ):
            tls.sendall(MQTT311_CONNECT)
            if tls.recv(16) == b"":
                raise ConnectionResetError("closed by the broker without a CONNACK")
    # And the real client: even with a password, no certificate means no session.
    session = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], None, expect_connect=False)
    try:
        assert session.disconnected.wait(WAIT_S), "a client without a certificate stayed connected"
        assert session.connect_rc is None or session.connect_rc.is_failure
    finally:
        session.close()


def test_scada_can_set_thresholds_but_cannot_forge_results(secure_broker: SecureBroker) -> None:
    device = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], DEVICE)
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    try:
        assert not device.subscribe(f"edge-anomaly/{DEVICE}/#").is_failure
        forged = f"edge-anomaly/{DEVICE}/cam0/result"
        allowed = f"edge-anomaly/{DEVICE}/cam0/threshold/set"
        denied_rc = _publish(scada, forged, b'{"schema":1,"score":0.0}')
        _publish(scada, allowed, b"3.5")
        # Same publisher, same QoS: the broker forwards in order, so once the threshold has arrived a forged
        # result that had been let through would already be here.
        assert device.wait_for_topic(allowed) == b"3.5"
        assert [t for t, _ in device.messages] == [allowed], device.messages
        # mosquitto 2 answers a denied MQTT 5 publish with "Not authorized" (older ones acknowledge silently).
        assert getattr(denied_rc, "value", 0) in (0x00, 0x87)
    finally:
        scada.close()
        device.close()


def test_device_stays_inside_its_own_topics(secure_broker: SecureBroker) -> None:
    device = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], DEVICE)
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    try:
        assert not scada.subscribe("edge-anomaly/#").is_failure
        # Writing into another device's topics (or outside edge-anomaly/) is dropped.
        _publish(device, "edge-anomaly/line9-other/cam0/result", b"forged")
        _publish(device, "plant/other", b"forged")
        own = f"edge-anomaly/{DEVICE}/status"
        _publish(device, own, b'{"state":"online"}')
        assert scada.wait_for_topic(own) == b'{"state":"online"}'
        assert [t for t, _ in scada.messages] == [own], scada.messages
        # Reading another device's topics delivers nothing, even through a wildcard subscription.
        device.subscribe("edge-anomaly/#")
        other = "edge-anomaly/line9-other/cam0/threshold/set"
        mine = f"edge-anomaly/{DEVICE}/cam0/threshold/set"
        _publish(scada, other, b"9.0")
        _publish(scada, mine, b"2.0")
        assert device.wait_for_topic(mine) == b"2.0"
        assert [t for t, _ in device.messages] == [mine], device.messages
    finally:
        scada.close()
        device.close()


def test_make_certs_keeps_the_ca_when_adding_a_device(tmp_path: Path) -> None:
    """Adding a device must not re-issue the CA, or every device already in the field would be locked out."""
    _need("openssl")
    script = str(MOSQUITTO_DIR / "make-certs.sh")
    subprocess.run(
        ["bash", script, str(tmp_path), "--client", DEVICE], check=True, capture_output=True, timeout=60
    )
    ca_before = (tmp_path / "ca.crt").read_bytes()
    old_client = (tmp_path / f"{DEVICE}.crt").read_bytes()
    out = subprocess.run(
        ["bash", script, str(tmp_path), "--client", DEVICE, "--client", "line3-station3"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "kept" in out and "made" in out
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / f"{DEVICE}.crt").read_bytes() == old_client
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "ca.crt"),
            str(tmp_path / "line3-station3.crt"),
            str(tmp_path / "server.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert stat.S_IMODE((tmp_path / "line3-station3.key").stat().st_mode) == 0o600
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "line3-station3.crt"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "CN = line3-station3" in subject or "CN=line3-station3" in subject


def test_sparkplug_topics_follow_the_same_identity_rules(secure_broker: SecureBroker) -> None:
    """The shipped ACL's Sparkplug lines: a node writes its own births, data and deaths and reads its commands
    and the host's STATE; SCADA reads every node and sends commands; a device cannot speak as another node."""
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    device = _open(secure_broker, DEVICE, PASSWORDS[DEVICE], DEVICE)
    other = _open(secure_broker, OTHER, PASSWORDS[OTHER], OTHER)
    try:
        assert not scada.subscribe("spBv1.0/#").is_failure
        assert not device.subscribe(f"spBv1.0/line/DCMD/{DEVICE}/+").is_failure
        assert not device.subscribe("spBv1.0/STATE/+").is_failure
        for topic in (f"spBv1.0/line/NBIRTH/{DEVICE}", f"spBv1.0/line/DDATA/{DEVICE}/cam0"):
            assert not getattr(_publish(device, topic, b"\x08\x01"), "is_failure", False), topic
            assert scada.wait_for_topic(topic) == b"\x08\x01"
        forged = _publish(other, f"spBv1.0/line/NBIRTH/{DEVICE}", b"\x08\x02")
        assert getattr(forged, "value", 0) == 0x87  # Not authorized
        assert getattr(_publish(other, f"spBv1.0/line/DCMD/{DEVICE}/cam0", b"x"), "value", 0) == 0x87
        dcmd = f"spBv1.0/line/DCMD/{DEVICE}/cam0"
        _publish(scada, dcmd, b"\x12\x00")
        _publish(scada, "spBv1.0/STATE/scada", b'{"online": true, "timestamp": 1}')
        assert device.wait_for_topic(dcmd) == b"\x12\x00"
        assert device.wait_for_topic("spBv1.0/STATE/scada").startswith(b'{"online": true')
        assert [p for t, p in scada.messages if t == f"spBv1.0/line/NBIRTH/{DEVICE}"] == [b"\x08\x01"]
    finally:
        for session in (other, device, scada):
            session.close()


def test_the_daemon_runs_both_faces_on_the_shipped_broker(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The broker takes the client id from the certificate, so two sessions of one identity would evict each
    other (each eviction firing the other's Will). The Sparkplug session has its own certificate (CN =
    edge_node_id): both faces stay connected, and each stays inside its own topics."""
    from tests.edge.test_daemon_e2e import InProcess
    from tests.helpers.mqtt import Received
    from tests.helpers.tiny_bundle import make_tiny_bundle
    from training.synthetic import part_sequence, write_video

    node = f"{DEVICE}-spb"
    certs = secure_broker.certs
    make = [str(MOSQUITTO_DIR / "make-certs.sh"), str(certs), "--client", DEVICE, "--client", node]
    subprocess.run(
        ["bash", *make], check=True, capture_output=True, timeout=60
    )  # adds the node's, keeps the CA
    bundle = make_tiny_bundle(tmp_path / "bundle", size=64)
    frames, _ = part_sequence(12, 3, size=64, seed=51)
    video = write_video(tmp_path / "parts.avi", frames, fps=10)
    text = (
        f'device_id = "{DEVICE}"\n[mqtt]\nhost = "{secure_broker.host}"\nport = {secure_broker.port}\n'
        f'stats_interval_s = 0.3\n[mqtt.tls]\nca_file = "{certs / "ca.crt"}"\ncert_file = '
        f'"{certs / f"{DEVICE}.crt"}"\n'
        f'key_file = "{certs / f"{DEVICE}.key"}"\n[model]\nbundle = "{bundle}"\nintra_op_threads = 1\n'
        f'[sparkplug]\nenabled = true\ngroup_id = "line"\nedge_node_id = "{node}"\n'
        f'cert_file = "{certs / f"{node}.crt"}"\nkey_file = "{certs / f"{node}.key"}"\n'
        f'[[cameras]]\nname = "cam0"\nsource = "{video}"\nloop = true\nfps = 10\npublish_mask = "never"\n'
    )
    scada = _open(secure_broker, "scada", PASSWORDS["scada"], "scada")
    try:
        assert (
            not scada.subscribe("spBv1.0/#").is_failure and not scada.subscribe("edge-anomaly/#").is_failure
        )
        run = InProcess(tmp_path, text).start()
        try:
            for topic in (f"spBv1.0/line/NBIRTH/{node}", f"spBv1.0/line/DBIRTH/{node}/cam0"):
                scada.wait_for_topic(topic)
            with scada.got_message:
                done = scada.got_message.wait_for(
                    lambda: (
                        sum(t == f"spBv1.0/line/DDATA/{node}/cam0" for t, _ in scada.messages) >= 10
                        and sum(t == f"edge-anomaly/{DEVICE}/cam0/result" for t, _ in scada.messages) >= 10
                    ),
                    timeout=WAIT_S * 3,
                )
            assert done, [t for t, _ in scada.messages][-20:]
        finally:
            assert run.stop() == 0
        scada.wait_for_topic(f"spBv1.0/line/NDEATH/{node}")
    finally:
        scada.close()
    topics = [t for t, _ in scada.messages]
    assert (
        topics.count(f"spBv1.0/line/NBIRTH/{node}") == 1 and topics.count(f"spBv1.0/line/NDEATH/{node}") == 1
    )
    statuses = [
        Received(t, p, False, 1, 0.0).json()["state"] for t, p in scada.messages if t.endswith("/status")
    ]
    assert (
        statuses.count("offline") == 1 and statuses[-1] == "offline"
    )  # no eviction: offline only at the stop
