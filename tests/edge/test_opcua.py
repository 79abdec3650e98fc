"""The OPC UA face without the daemon: config rules (anonymous only on loopback), the users file, and the
server with asyncua's own client: values offered from another thread, command writes answered with the
device's text, and the secured endpoint (SignAndEncrypt, user accounts, anonymous refused)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import ConfigError, OpcUaConfig, load_config
from edge.faces.opcua.users import UsersFileError, check, hash_line, read_users
from edge.results.payloads import CameraState
from edge.util.deps import MissingDependency

asyncua = pytest.importorskip(
    "asyncua", reason="the OPC UA face needs asyncua (pip install 'edge-anomaly[opcua]')"
)
from asyncua import Client, ua  # noqa: E402

from edge.faces.opcua.server import OpcUaFace  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_beyond_localhost_needs_users_and_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = ['model={"bundle": "b"}', 'cameras=[{"name": "c", "source": "v.avi"}]']
    with pytest.raises(ConfigError) as err:
        load_config(None, [*bundle, "opcua.enabled=true", "opcua.endpoint=opc.tcp://0.0.0.0:4840"])
    assert "listens beyond this host" in str(err.value) and "users_file, cert_file, key_file" in str(
        err.value
    )
    assert load_config(None, bundle).opcua.enabled is False  # off by default
    OpcUaConfig(enabled=True, endpoint="opc.tcp://localhost:4841")  # loopback: anonymous allowed
    OpcUaConfig(enabled=False, endpoint="opc.tcp://0.0.0.0:4840")  # off: nothing listens
    secured = OpcUaConfig(
        enabled=True, endpoint="opc.tcp://0.0.0.0:4840", users_file="u", cert_file="c.pem", key_file="k.pem"
    )
    assert not secured.local_only
    with pytest.raises(ValueError, match="opc.tcp://HOST:PORT"):
        OpcUaConfig(endpoint="http://127.0.0.1:4840")


def test_a_missing_asyncua_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncua", None)  # import asyncua now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'edge-anomaly\[opcua\]'"):
        OpcUaFace(OpcUaConfig(enabled=True), FakeDevice(), "urn:edge-anomaly:t")


def test_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# plant users\n\n" + hash_line("plc1", "s3cret", iterations=1000) + "\n")
    users = read_users(path)
    assert (
        check(users, "plc1", "s3cret")
        and not check(users, "plc1", "wrong")
        and not check(users, "x", "s3cret")
    )
    assert not check(users, None, None)
    path.write_text("plc1:sha256:abcd\n")
    with pytest.raises(UsersFileError, match=r"users:1: expected 'name:pbkdf2-sha256"):
        read_users(path)


class FakeDevice:
    cameras = ["cam1"]
    parts = ["item"]

    def __init__(self) -> None:
        self.value = 0.5
        self.triggers: list[str] = []

    def set_threshold(self, camera: str, value: float) -> str | None:
        if not 0.0 <= value <= 10.0:
            return f"threshold {value:g} is outside the allowed range [0, 10]"
        self.value = value
        return None

    def select_recipe(self, camera: str, recipe: str) -> str | None:
        return None if recipe == "B" else f"no recipe {recipe!r}"

    def trigger(self, camera: str, part_id: str) -> str | None:
        self.triggers.append(part_id)
        return None

    def threshold(self, camera: str) -> float:
        return self.value

    def recipe(self, camera: str) -> str:
        return "A"

    def camera_state(self, camera: str) -> str:
        return "online"


@pytest.fixture
def local_face() -> Iterator[OpcUaFace]:
    face = OpcUaFace(
        OpcUaConfig(enabled=True, endpoint=f"opc.tcp://127.0.0.1:{free_port()}"),
        FakeDevice(),
        "urn:edge-anomaly:t",
    )
    face.start()
    yield face
    face.stop()


def test_values_commands_and_trigger_with_asyncua_client(local_face: OpcUaFace) -> None:
    async def session() -> None:
        async with Client(local_face.config.endpoint) as client:
            idx = await client.get_namespace_index("urn:edge-anomaly")

            def node(path: str):  # type: ignore[no-untyped-def]
                return client.get_node(ua.NodeId(f"VisionSystem.{path}", idx))

            local_face.camera_state("cam1", CameraState(state="fault", reason="x", since="t"))
            await asyncio.sleep(0.2)
            assert await node("Cameras.cam1.State").read_value() == "fault"
            assert await node("Cameras.cam1.Threshold").read_value() == 0.5
            await node("Cameras.cam1.Threshold").write_value(ua.Variant(2.5, ua.VariantType.Double))
            assert await node("Cameras.cam1.Threshold").read_value() == 2.5
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node("Cameras.cam1.Threshold").write_value(ua.Variant(20.0, ua.VariantType.Double))
            assert refused.value.code == ua.StatusCodes.BadOutOfRange
            error = await node("Cameras.cam1.LastCommandError").read_value()
            assert error == "threshold 20 is outside the allowed range [0, 10]"
            with pytest.raises(ua.UaStatusCodeError):
                await node("Cameras.cam1.Threshold").write_value(ua.Variant("high", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError):
                await node("Cameras.cam1.RecipeId").write_value(ua.Variant("Z", ua.VariantType.String))
            assert await node("Cameras.cam1.LastCommandError").read_value() == "no recipe 'Z'"
            with pytest.raises(ua.UaStatusCodeError):  # only the commands are writable
                await node("Cameras.cam1.Score").write_value(ua.Variant(0.1, ua.VariantType.Double))
            out = await client.get_node(ua.NodeId("VisionSystem", idx)).call_method(
                ua.NodeId("VisionSystem.Trigger", idx), "cam1", "P-1"
            )
            assert out == "" and local_face.device.triggers == ["P-1"]  # type: ignore[attr-defined]

    asyncio.run(session())


def _self_signed(
    folder: Path, name: str, uri: str, suffixes: tuple[str, str] = (".pem", "-key.pem")
) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / f"{name}{suffixes[0]}", folder / f"{name}{suffixes[1]}"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_secured_endpoint_needs_sign_and_encrypt_and_a_user(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server", "urn:edge-anomaly:t", (".crt", ".key"))  # PEM all the same
    client_cert, client_key = _self_signed(tmp_path, "client", "urn:edge-anomaly:test-client")
    users = tmp_path / "users"
    users.write_text(hash_line("plc1", "s3cret", iterations=1000) + "\n")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    config = OpcUaConfig(enabled=True, endpoint=endpoint, users_file=users, cert_file=cert, key_file=key)
    face = OpcUaFace(config, FakeDevice(), "urn:edge-anomaly:t")
    face.start()
    security = f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}"

    async def connect(user: str | None, password: str | None, secure: bool = True) -> str:
        client = Client(endpoint, timeout=5)
        client.application_uri = "urn:edge-anomaly:test-client"
        if secure:
            await client.set_security_string(security)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        try:
            async with client:
                idx = await client.get_namespace_index("urn:edge-anomaly")
                return str(
                    await client.get_node(ua.NodeId("VisionSystem.Cameras.cam1.State", idx)).read_value()
                )
        except Exception as exc:
            return f"refused: {type(exc).__name__}"

    try:
        assert asyncio.run(connect("plc1", "s3cret")) == "online"
        assert asyncio.run(connect("plc1", "wrong")).startswith("refused")
        assert asyncio.run(connect(None, None)).startswith("refused")  # anonymous
        assert asyncio.run(connect(None, None, secure=False)).startswith("refused")  # no encryption
    finally:
        face.stop()
    time.sleep(0.1)


def test_trusted_client_certificates_from_a_folder(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server", "urn:edge-anomaly:t")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    known_cert, known_key = _self_signed(tmp_path, "known", "urn:edge-anomaly:known")
    (trusted / "known.pem").write_bytes(known_cert.read_bytes())  # certificates only in the folder
    other_cert, other_key = _self_signed(tmp_path, "other", "urn:edge-anomaly:other")
    users = tmp_path / "users"
    users.write_text(hash_line("plc1", "s3cret", iterations=1000) + "\n")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="set cert_file and key_file"):
        OpcUaConfig(enabled=True, endpoint=endpoint, trusted_clients_dir=trusted)
    config = OpcUaConfig(
        enabled=True, endpoint=endpoint, users_file=users, cert_file=cert, key_file=key,
        trusted_clients_dir=trusted,
    )  # fmt: skip
    face = OpcUaFace(config, FakeDevice(), "urn:edge-anomaly:t")
    face.start()

    async def connect(name: str, client_cert: Path, client_key: Path) -> str:
        client = Client(endpoint, timeout=5)
        client.application_uri = f"urn:edge-anomaly:{name}"
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
        client.set_user("plc1")
        client.set_password("s3cret")
        try:
            async with client:
                idx = await client.get_namespace_index("urn:edge-anomaly")
                node = client.get_node(ua.NodeId("VisionSystem.Cameras.cam1.State", idx))
                return str(await node.read_value())
        except Exception as exc:
            return f"refused: {type(exc).__name__} {exc}"

    try:
        assert asyncio.run(connect("known", known_cert, known_key)) == "online"
        refused = asyncio.run(connect("other", other_cert, other_key))
        assert refused.startswith("refused") and "BadCertificateUntrusted" in refused, refused
    finally:
        face.stop()

    (trusted / "known-key.pem").write_bytes(known_key.read_bytes())  # a key in the folder: refused at start
    broken = OpcUaFace(config, FakeDevice(), "urn:edge-anomaly:t")
    with pytest.raises(RuntimeError, match="a file there is not a certificate"):
        broken.start()
    broken.stop()
