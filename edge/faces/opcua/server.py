"""The OPC UA server face: an asyncua server in its own thread (its own asyncio loop).

Values come from the typed results the other faces publish (:class:`OpcUaFace` is told each result, part
verdict, camera change and threshold change, like the Sparkplug node); the caller's thread only records the
newest values and wakes the server's loop, which writes them into the address space (:mod:`.nodes`). A
result is never scored or judged here.

Commands go to the device exactly as their MQTT twins do (:class:`Device`, which the daemon implements with
the JSON face's own command path: same parser, same counters, same ``threshold/state`` / ``model/state``
answers). A refused command answers with a Bad status, its text in the camera's ``LastCommandError`` (and in
``Trigger``'s ``Message`` output), and a log line.

Security (docs/opcua.md): without accounts and certificate (loopback only, the config makes sure)
anonymous and ``None``; with them, ``Basic256Sha256`` ``SignAndEncrypt`` only and user names from the users
file; anonymous is then refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from edge.config.opcua import OpcUaConfig
from edge.config.regions import unit_of_flat
from edge.faces.opcua import nodes
from edge.faces.opcua.users import check, read_users
from edge.results.payloads import CameraState, PartPayload, ResultPayload
from edge.util.deps import require

log = logging.getLogger("edge.opcua")

START_TIMEOUT_S = 20.0
REFRESH_S = 0.5  # threshold, recipe and camera state are re-read at least this often


class Device(Protocol):
    """What the face needs of the daemon: the command paths of the JSON face and the values in force."""

    cameras: Sequence[str]
    parts: Sequence[str]

    def set_threshold(self, camera: str, value: float) -> Optional[str]: ...

    def select_recipe(self, camera: str, recipe: str) -> Optional[str]: ...

    def trigger(self, camera: str, part_id: str) -> Optional[str]: ...

    def threshold(self, camera: str) -> float: ...

    def recipe(self, camera: str) -> str: ...

    def camera_state(self, camera: str) -> str: ...


def _format(path: Any) -> str:
    """'pem' or 'der' by the file's content (asyncua would go by its extension)."""
    with open(path, "rb") as f:
        return "pem" if f.read(64).lstrip().startswith(b"-----BEGIN") else "der"


def _when(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc)


class OpcUaFace:
    """See the module docstring. Thread use: observers from any thread; all of asyncua in ``edge-opcua``."""

    def __init__(self, config: OpcUaConfig, device: Device, application_uri: str) -> None:
        self.config = config
        self.device = device
        self.application_uri = application_uri
        self.ua = require("asyncua", "opcua", "The OPC UA face ([opcua] enabled = true)")
        self._users = read_users(config.users_file) if config.users_file is not None else None
        self._lock = threading.Lock()
        self._pending: Dict[Tuple[str, str, str], Any] = {}  # ("Cameras", cam, var) -> newest value
        self._written: Dict[Tuple[str, str, str], Any] = {}  # what the address space holds (edge-opcua only)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._stopping: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self.tree: Optional[nodes.Tree] = None
        self._server: Any = None
        self.update_errors = 0

    # --- observers (any thread; never block) ----------------------------------------------------------

    def result(self, doc: ResultPayload) -> None:
        verdict = doc.verdict or ("ng" if doc.anomalous else "ok")
        self._offer(
            ("Cameras", doc.camera),
            LastVerdict=verdict, Score=float(doc.score), Threshold=float(doc.threshold),
            ResultTimestamp=_when(doc.capture_ts),
        )  # fmt: skip

    def part(self, doc: PartPayload) -> None:
        self._offer(
            ("Parts", doc.part),
            LastVerdict=doc.verdict, Action=doc.action, PartId=doc.part_id, Reason=doc.reason or "",
            Late=doc.late, Timestamp=_when(doc.verdict_ts), ElapsedMs=float(doc.elapsed_ms),
        )  # fmt: skip
        for camera in doc.cameras:
            self._offer(("Cameras", camera), PartId=doc.part_id)

    def camera_state(self, camera: str, state: CameraState) -> None:
        self._offer(("Cameras", camera), State=state.state)

    def threshold(self, camera: str) -> None:
        self._offer(("Cameras", camera), Threshold=self.device.threshold(camera))

    def _offer(self, where: Tuple[str, str], **values: Any) -> None:
        with self._lock:
            for var, value in values.items():
                self._pending[(where[0], where[1], var)] = value
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the face is stopping
                loop.call_soon_threadsafe(wake.set)

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server thread; returns once it listens, or raises with the reason it could not."""
        self._thread = threading.Thread(target=self._run, name="edge-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(
                f"OPC UA server on {self.config.endpoint} did not start in {START_TIMEOUT_S} s"
            )
        if self._error is not None:
            raise RuntimeError(
                f"OPC UA server on {self.config.endpoint} failed: {self._error}"
            ) from self._error
        log.info("OPC UA server listening on %s (%s)", self.config.endpoint, self._security_text())

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _security_text(self) -> str:
        if self.config.local_only:
            return "anonymous, no security: loopback only"
        users = "user accounts" if self._users is not None else "anonymous"
        return f"Basic256Sha256 SignAndEncrypt, {users}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); after the start the log says it
            self._error = exc
            if self._ready.is_set():
                log.exception("OPC UA server stopped with an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake, self._stopping = asyncio.Event(), asyncio.Event()
        server = await self._make_server()
        await server.start()
        try:
            self._ready.set()
            waiter = asyncio.ensure_future(self._stopping.wait())
            while not self._stopping.is_set():
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([woken, waiter], timeout=REFRESH_S, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                self._wake.clear()
                await self._flush()
            waiter.cancel()
        finally:
            await server.stop()

    # --- the server -------------------------------------------------------------------------------------

    async def _make_server(self) -> Any:
        ua = self.ua.ua
        server = self.ua.Server(user_manager=self._user_manager())
        await server.init()
        server.set_endpoint(self.config.endpoint)
        server.set_server_name("edge-anomaly vision system")
        await server.set_application_uri(self.application_uri)
        if self.config.local_only:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.config.cert_file), format=_format(self.config.cert_file))
            await server.load_private_key(str(self.config.key_file), format=_format(self.config.key_file))
            if self.config.trusted_clients_dir is not None:
                server.set_certificate_validator(
                    await self._client_validator(self.config.trusted_clients_dir)
                )
        if self._users is not None:
            server.set_security_IDs(["Username"])
        self._server = server
        self.tree = await nodes.build(server, ua, self.device.cameras, self.device.parts)
        await self._add_trigger(ua)
        self._guard_writes(server, ua)
        for camera in self.device.cameras:
            self._offer(("Cameras", camera), State=self.device.camera_state(camera))
        await self._flush()
        return server

    async def _client_validator(self, folder: Path) -> Any:
        """Only a client whose certificate, or its issuer's, lies in ``folder`` gets a session (asyncua's
        trust store; a refused client gets BadCertificateUntrusted and asyncua logs its CN)."""
        try:
            truststore = importlib.import_module("asyncua.crypto.truststore")
            validator = importlib.import_module("asyncua.crypto.validator")
        except ImportError as exc:
            raise RuntimeError(
                "opcua.trusted_clients_dir needs asyncua.crypto.truststore, which this asyncua lacks"
            ) from exc
        if not folder.is_dir():
            raise RuntimeError(f"opcua.trusted_clients_dir {folder} is not a folder")
        certs = [f for f in folder.iterdir() if f.suffix.lower() in (".pem", ".der")]
        if not certs:
            raise RuntimeError(
                f"opcua.trusted_clients_dir {folder} holds no *.pem or *.der: no client could connect"
            )
        store = truststore.TrustStore([folder], [])
        try:
            await store.load()
        except Exception as exc:  # a key or any other file that is not a certificate: say where
            raise RuntimeError(
                f"opcua.trusted_clients_dir {folder}: a file there is not a certificate ({exc})"
            ) from exc
        log.info("OPC UA: %d trusted client certificate file(s) from %s", len(certs), folder)
        opts = validator.CertificateValidatorOptions
        return validator.CertificateValidator(opts.TIME_RANGE | opts.TRUSTED | opts.PEER_CLIENT, store)

    def _user_manager(self) -> Any:
        if self._users is None:
            return None
        users = self._users
        try:  # asyncua 1.1+ (2.x on Python >= 3.10)
            accounts = importlib.import_module("asyncua.crypto.permission_rules")
        except ImportError:  # asyncua 1.0 (the newest on JetPack 5's Python 3.8)
            accounts = importlib.import_module("asyncua.server.users")
        user_cls, role = accounts.User, accounts.UserRole

        class FileUsers:
            def get_user(
                self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None
            ) -> Any:
                return user_cls(role=role.User, name=username) if check(users, username, password) else None

        return FileUsers()

    async def _add_trigger(self, ua: Any) -> None:
        assert self.tree is not None  # set by _server() just before

        def arg(name: str, text: str) -> Any:
            return ua.Argument(
                Name=name, DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=-1,
                Description=ua.LocalizedText(text),
            )  # fmt: skip

        async def trigger(parent: Any, camera: Any, part_id: Any) -> Any:
            return await self._trigger(ua, camera.Value, part_id.Value)

        await self.tree.vision.add_method(
            ua.NodeId(nodes.node_id("Trigger"), self.tree.idx), ua.QualifiedName("Trigger", self.tree.idx),
            trigger,
            [arg("cameraName", "camera the part is in front of"), arg("partId", "the part's id")],
            [arg("Message", "empty when the trigger was accepted, else why it was refused")],
        )  # fmt: skip

    async def _trigger(self, ua: Any, camera: Any, part_id: Any) -> Any:
        camera = unit_of_flat(camera) if isinstance(camera, str) else camera  # cam0:label or cam0/label
        if not isinstance(camera, str) or camera not in self.device.cameras:
            return ua.CallMethodResult(
                StatusCode=ua.StatusCode(ua.StatusCodes.BadNotFound),
                OutputArguments=[ua.Variant(f"no camera {camera!r}", ua.VariantType.String)],
            )
        error = self.device.trigger(camera, part_id if isinstance(part_id, str) else "")
        self._offer(("Cameras", camera), LastCommandError=error or "")
        await self._flush()  # a client reading LastCommandError after the answer reads this one
        if error is None:
            return [ua.Variant("", ua.VariantType.String)]
        return ua.CallMethodResult(
            StatusCode=ua.StatusCode(ua.StatusCodes.BadInvalidArgument),
            OutputArguments=[ua.Variant(error, ua.VariantType.String)],
        )

    def _guard_writes(self, server: Any, ua: Any) -> None:
        """Writes of Threshold and RecipeId go to the device's command path instead of into the node."""
        service = server.iserver.attribute_service
        plain: Callable[..., Any] = service.write
        writable = self.tree.writable if self.tree is not None else {}

        async def write(params: Any, user: Any = None) -> List[Any]:
            results: List[Any] = []
            for item in params.NodesToWrite:
                target = writable.get(item.NodeId) if item.AttributeId == ua.AttributeIds.Value else None
                if target is None:
                    one = ua.WriteParameters(NodesToWrite=[item])
                    results.extend(await (plain(one) if user is None else plain(one, user=user)))
                else:
                    results.append(await self._command(ua, target[0], target[1], item.Value.Value))
            return results

        service.write = write

    async def _command(self, ua: Any, camera: str, var: str, variant: Any) -> Any:
        value = None if variant is None else variant.Value
        if var == "Threshold":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
            error = self.device.set_threshold(camera, float(value))
            self._offer(("Cameras", camera), Threshold=self.device.threshold(camera))
        else:
            if not isinstance(value, str):
                return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
            error = self.device.select_recipe(camera, value)
        self._offer(("Cameras", camera), LastCommandError=error or "")
        await self._flush()  # the answer comes after the address space says the same
        if error is None:
            return ua.StatusCode(ua.StatusCodes.Good)
        log.warning("OPC UA write of %s/%s refused: %s", camera, var, error)
        code = "BadOutOfRange" if "outside the allowed range" in error else "BadInvalidArgument"
        return ua.StatusCode(getattr(ua.StatusCodes, code))

    async def _flush(self) -> None:
        """Write what changed into the address space; re-read the values in force every REFRESH_S."""
        for camera in self.device.cameras:
            with self._lock:
                self._pending.setdefault(("Cameras", camera, "Threshold"), self.device.threshold(camera))
                self._pending.setdefault(("Cameras", camera, "RecipeId"), self.device.recipe(camera))
        with self._lock:
            pending, self._pending = self._pending, {}
        if self.tree is None or self._server is None:
            return
        ua = self.ua.ua
        for key, value in pending.items():
            node = self.tree.variables.get(key)
            if node is None or self._written.get(key) == value:
                continue
            now = datetime.now(timezone.utc)
            value_now = ua.DataValue(
                ua.Variant(value, self.tree.types[key]), SourceTimestamp=now, ServerTimestamp=now
            )
            try:  # straight into the address space: node.write_value would pass the command guard
                await self._server.write_attribute_value(node.nodeid, value_now)
                self._written[key] = value
            except Exception:  # one bad value must not stop the others; counted
                self.update_errors += 1
                log.exception("OPC UA value %s could not be written", ".".join(key))
