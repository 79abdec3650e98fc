"""The Sparkplug B 3.0 edge node: its own MQTT session, births and deaths, seq and bdSeq, NCMD and DCMD.

It is a second face of :class:`edge.faces.mqtt_json.api.DeviceApi` (an
:class:`edge.faces.mqtt_json.api.ApiObserver`): every result, camera
change and threshold change reaches it after the JSON face published it, and its threshold command goes
through the JSON face's own ``set_threshold`` (same validation, record and ``threshold/state`` answer).

Session (an :class:`edge.faces.mqtt_session.MqttSession` whose network thread ``edge-spb`` asks the node
for a new paho client per connection, clean session):

1. bdSeq = the last one used + 1 (0-255, wrapping; kept in ``state_dir`` so it survives restarts), the
   Will = NDEATH with that bdSeq at QoS 1, not retained; CONNECT.
2. On CONNACK: subscribe NCMD, DCMD (and ``spBv1.0/STATE/<primary_host_id>``); births wait for the SUBACK.
3. With a primary host: births wait for its STATE ``{"online": true, "timestamp": …}``. A STATE older than
   the last one seen is ignored. When it says offline after the births: NDEATH, disconnect, back to 1.
4. Births: NBIRTH (seq 0, every node metric, ``Node Control/Rebirth`` = false, bdSeq), then a DBIRTH per
   camera that is not in fault. Then DDATA with the changed metrics of each result (QoS 0); seq +1 per
   message of the node, 0-255 wrapping. A camera fault sends DDEATH, its return a DBIRTH.
5. NCMD ``Node Control/Rebirth`` = true: step 4 again. Stop: NDEATH, then DISCONNECT.

Threads: results arrive from the postprocess thread, camera changes from grabber threads, JSON threshold
sets from the JSON network thread, commands and connection events in ``edge-spb``. One lock covers the seq
and every hand-over to paho, so seq order is wire order. As in :mod:`edge.faces.mqtt_json.transport`, only
``edge-spb`` writes to the socket (publishers queue and wake it), and no paho callback that paho runs under
its own locks is used. Data published while the node is not born (broker away, primary host offline) is
dropped and counted: the births that follow carry the latest values.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edge.commands import CommandDesk, ThresholdError, threshold_payload_of
from edge.config import MqttConfig, SparkplugConfig, TlsConfig
from edge.config.regions import flat_name, unit_of_flat
from edge.faces.mqtt_session import LOOP_TICK_S, MqttSession, command_filters, new_client, read_password
from edge.faces.sparkplug import limits
from edge.faces.sparkplug import payload as spb
from edge.faces.sparkplug.bdseq import BdSeqStore
from edge.faces.sparkplug.device import Camera, Device, node_values
from edge.faces.sparkplug.parts import PartMetrics
from edge.results.payloads import CameraState, PartPayload, ResultPayload
from edge.util.ratelog import RateLimitedLog

log = logging.getLogger("edge.sparkplug")
rate_log = RateLimitedLog(log)

NAMESPACE = "spBv1.0"
CONNACK_TIMEOUT_S = 10.0
DEATH_ACK_TIMEOUT_S = 2.0
MAX_UNWRITTEN = 100  # QoS 0 data messages handed to paho and not yet written; more are dropped and counted


class SparkplugNode:
    """One Sparkplug B edge node; each camera is a device. :meth:`start` connects, :meth:`stop` ends it."""

    def __init__(
        self,
        cfg: SparkplugConfig,
        mqtt: MqttConfig,
        *,
        node_id: str,
        client_id: str,
        api: Device,
        json_prefix: str,
        state_file: Optional[Path],
        tls: Optional[TlsConfig] = None,
        network_thread_nice: int = 0,
    ) -> None:
        self.cfg = cfg
        self.mqtt = mqtt
        self.tls = tls
        self.group = cfg.group_id
        self.node_id = node_id
        self.client_id = client_id
        self.api = api
        self.v5 = mqtt.protocol == "5"
        self.broker = f"{mqtt.host}:{mqtt.port}"
        self._bdseq = BdSeqStore(state_file)
        self._password = read_password(mqtt)
        self._lock = threading.Lock()
        self._client: Optional[paho.Client] = None
        self._connected = False
        self._subscribed = False
        self._sub_mid: Optional[int] = None
        self._born = False
        self._seq = 0
        self._current_bdseq = 0
        self._host_online = cfg.primary_host_id is None
        self._host_ts = -1  # timestamp of the newest STATE seen (kept across connections)
        self._host_went_offline = False
        self._unwritten: Deque[paho.MQTTMessageInfo] = deque()
        self._node_values = node_values(api.identity, json_prefix)
        self._cameras: Dict[str, Camera] = {}
        self.part_metrics = PartMetrics()  # [[parts]] verdicts as node metrics, declared before start()
        for index, (name, state) in enumerate(api.cameras_now().items()):
            self._cameras[name] = Camera(index, self._initial_camera_values(name, state))
        self.counters: Dict[str, int] = dict.fromkeys(
            ("connects", "disconnects", "connect_failures", "network_errors", "published", "births",
             "rebirth_requests", "host_offline", "stale_state", "dropped_ddata", "commands_rejected",
             "commands_too_large", "commands_too_many_metrics", "rebirths_coalesced"), 0,
        )  # fmt: skip
        self._rebirths = limits.RebirthGate()
        self.desk = CommandDesk(self._clear_retained)  # the retained-command guard every face shares
        self.session = MqttSession(
            mqtt, self, label="sparkplug", logger=log, thread_name="edge-spb",
            network_thread_nice=network_thread_nice, connack_timeout_s=CONNACK_TIMEOUT_S,
            clean_start=True,  # MQTT 5, and no session expiry: the session ends with the connection
            connect_properties=limits.connect_properties(),  # MQTT 5: no bigger command reaches us
        )  # fmt: skip

    # --- topics ---------------------------------------------------------------------------------------------

    def topic(self, kind: str, device: Optional[str] = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.node_id}"
        return base if device is None else f"{base}/{flat_name(device)}"  # a region: <camera>:<region>

    @property
    def state_topic(self) -> Optional[str]:
        host = self.cfg.primary_host_id
        return None if host is None else f"{NAMESPACE}/STATE/{host}"

    # --- values ---------------------------------------------------------------------------------------------

    def _initial_camera_values(self, camera: str, state: CameraState) -> Dict[str, spb.Value]:
        values: Dict[str, spb.Value] = dict.fromkeys(spb.DEVICE_INDEX)
        values.update(self._threshold_values(camera))
        values["Camera/State"] = state.state
        values["Camera/Reason"] = state.reason
        return values

    def _threshold_values(self, camera: str) -> Dict[str, spb.Value]:
        value, source = self.api.thresholds.get(camera)
        return {"Inspection/Threshold": value, "Inspection/Threshold Source": source}

    # --- the API faces' updates (any thread) ----------------------------------------------------------------

    def result(self, doc: ResultPayload) -> None:
        """DDATA with the metrics of this result that changed (timestamped with the capture time)."""
        values: Dict[str, spb.Value] = {
            "Inspection/Score": doc.score,
            "Inspection/Anomalous": doc.anomalous,
            "Inspection/Defect Area": doc.defect_area,
            "Inspection/Region Count": doc.regions_total,
            "Inspection/Threshold": doc.threshold,
            "Inspection/Threshold Source": doc.threshold_source,
            "Inspection/Frame Key": doc.frame_key,
            "Latency/Total": doc.latency_ms.total,
            "Latency/Inference": doc.latency_ms.inference,
            "Inspection/Verdict": doc.verdict or ("ng" if doc.anomalous else "ok"),
        }
        model = doc.model
        node: Dict[str, spb.Value] = {
            "Properties/Model": model.id, "Properties/Precision": model.precision,
            "Properties/Backend": model.backend,
        }  # fmt: skip
        with self._lock:
            if any(self._node_values[k] != v for k, v in node.items()):  # a new model: NDATA
                self._node_values.update(node)
                if self._born:
                    self._ndata(node)
            self._update(doc.camera, values, spb.now_ms(doc.capture_ts))

    def camera_state(self, camera: str, state: CameraState) -> None:
        """A fault is a DDEATH, the camera's return (online) a DBIRTH, any other change DDATA."""
        values = {"Camera/State": state.state, "Camera/Reason": state.reason}
        with self._lock:
            cam = self._cameras.get(camera)
            if cam is None:
                return
            cam.values.update(values)
            if not self._born:
                return
            if state.state == "fault":
                if cam.alive:
                    self._ddeath(camera, cam)
            elif not cam.alive:
                if state.state == "online":
                    self._dbirth(camera, cam)
            else:
                self._ddata(camera, cam, values, spb.now_ms(time.time()))

    def rebirth(self) -> None:
        """NBIRTH and every DBIRTH again (same bdSeq): what NCMD Rebirth does, and what a change of the metric
        set (not just of values) needs."""
        with self._lock:
            self.counters["rebirth_requests"] += 1
            if not self._born:
                return  # the births that come with the next session serve it
            if self._rebirths.request():
                self._births()
            else:  # coalesced: one rebirth at the end of the interval (limits.RebirthGate)
                self.counters["rebirths_coalesced"] += 1

    def _due_rebirth(self) -> None:
        with self._lock:
            if self._born and self._rebirths.due():
                self._births()

    def threshold(self, camera: str) -> None:
        """The threshold changed (JSON threshold/set or a DCMD): DDATA with the value in force."""
        with self._lock:
            self._update(camera, self._threshold_values(camera), spb.now_ms(time.time()))

    def part(self, doc: PartPayload) -> None:
        """NDATA with every metric of the part (declared in ``part_metrics``), at the verdict's time."""
        with self._lock:
            entries = self.part_metrics.verdict(doc)
            if entries is not None and (not self._born or not self._room()):
                self.counters["dropped_ddata"] += 1
            elif entries is not None:
                self._send(
                    self.topic("NDATA"), spb.encode(spb.now_ms(time.time()), entries, self._next_seq())
                )

    def _update(self, camera: str, values: Dict[str, spb.Value], ts: int, force: Sequence[str] = ()) -> None:
        cam = self._cameras.get(camera)
        if cam is None:
            return
        cam.values.update(values)
        if not (self._born and cam.alive):
            self.counters["dropped_ddata"] += 1
            return
        changed = {k: v for k, v in values.items() if k in force or cam.sent.get(k, _UNSENT) != v}
        if changed:
            self._ddata(camera, cam, changed, ts)

    # --- messages (caller holds self._lock) -----------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _send(self, topic: str, data: bytes, qos: int = 0) -> Optional[paho.MQTTMessageInfo]:
        client = self._client
        if client is None or not self._connected:
            return None
        info = client.publish(topic, data, qos=qos, retain=False)
        self.counters["published"] += 1
        if qos == 0:
            self._unwritten.append(info)
        return info

    def _room(self) -> bool:
        while self._unwritten and self._unwritten[0].is_published():
            self._unwritten.popleft()
        return len(self._unwritten) < MAX_UNWRITTEN

    def _births(self) -> None:
        """NBIRTH (seq 0) and a DBIRTH per camera not in fault: everything a host needs to know."""
        now = spb.now_ms(time.time())
        self._seq = 0
        self._rebirths.pending = False  # these births serve every rebirth asked so far
        self._node_values["bdSeq"] = self._current_bdseq
        self._node_values["Node Control/Rebirth"] = False
        entries = [(m, spb.NODE_ALIAS[m.name], self._node_values[m.name], now) for m in spb.NODE_METRICS]
        entries += self.part_metrics.birth(now)
        self._send(self.topic("NBIRTH"), spb.encode(now, entries, self._next_seq(), names=True))
        self._born = True
        self.counters["births"] += 1
        for name, cam in self._cameras.items():
            cam.alive = False
            if cam.values["Camera/State"] != "fault":
                self._dbirth(name, cam)
        log.info(
            "sparkplug %s: NBIRTH %s (bdSeq %d), %d camera(s) born",
            self.broker, self.topic("NBIRTH"), self._current_bdseq,
            sum(c.alive for c in self._cameras.values()),
        )  # fmt: skip

    def _dbirth(self, name: str, cam: Camera) -> None:
        now = spb.now_ms(time.time())
        entries = [
            (m, spb.device_alias(cam.index, m.name), cam.values[m.name], now) for m in spb.DEVICE_METRICS
        ]
        self._send(self.topic("DBIRTH", name), spb.encode(now, entries, self._next_seq(), names=True))
        cam.sent = dict(cam.values)
        cam.alive = True

    def _ddeath(self, name: str, cam: Camera) -> None:
        now = spb.now_ms(time.time())
        self._send(self.topic("DDEATH", name), spb.encode(now, [], self._next_seq()))
        cam.alive = False

    def _ddata(self, name: str, cam: Camera, values: Dict[str, spb.Value], ts: int) -> None:
        if not self._room():
            self.counters["dropped_ddata"] += 1
            return
        entries = [(spb.METRIC_BY_NAME[k], spb.device_alias(cam.index, k), v, ts) for k, v in values.items()]
        self._send(self.topic("DDATA", name), spb.encode(spb.now_ms(time.time()), entries, self._next_seq()))
        cam.sent.update(values)

    def _ndata(self, values: Dict[str, spb.Value]) -> None:
        now = spb.now_ms(time.time())
        entries = [(spb.METRIC_BY_NAME[k], spb.NODE_ALIAS[k], v, now) for k, v in values.items()]
        self._send(self.topic("NDATA"), spb.encode(now, entries, self._next_seq()))

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.session.start()

    def stop(self, timeout: float = 5.0) -> None:
        """NDEATH, then DISCONNECT (done by the network thread), then the thread ends."""
        self.session.stop(timeout)

    def snapshot(self) -> Dict[str, int]:
        retained = self.desk.snapshot()["rejected_retained"]
        with self._lock:
            return dict(self.counters, commands_retained=retained)

    def command_counts(self) -> Dict[str, int]:
        """The node's command refusals and coalesced rebirths, for ``stats.commands`` (``sparkplug_*``)."""
        snap = self.snapshot()
        keys = ("commands_rejected", "commands_retained", "commands_too_large", "commands_too_many_metrics",
                "rebirth_requests", "rebirths_coalesced")  # fmt: skip
        return {f"sparkplug_{key}": snap[key] for key in keys}

    # --- the session's face (edge-spb) ---------------------------------------------------------------------

    def session_client(self) -> paho.Client:
        """A new client per connection attempt: its Will is the NDEATH of the attempt's bdSeq."""
        bdseq = self._bdseq.take()
        client = new_client(
            self.client_id, self.v5, self.mqtt.username, self._password, self.tls,
            logging.getLogger("edge.sparkplug.paho"),
        )  # fmt: skip
        will = spb.death(spb.now_ms(time.time()), bdseq)
        client.will_set(self.topic("NDEATH"), will, qos=1, retain=False)
        client.on_subscribe = self._on_subscribe
        client.message_callback_add(self.topic("NCMD"), self._on_ncmd)
        client.message_callback_add(self.topic("DCMD", "+"), self._on_dcmd)
        if self.state_topic is not None:
            client.message_callback_add(self.state_topic, self._on_state)
        with self._lock:
            self._client = client
            self._current_bdseq = bdseq
            self._subscribed = False
            self._sub_mid = None
            self._host_went_offline = False
            self._host_online = self.cfg.primary_host_id is None
        return client

    def session_up(self, client: paho.Client) -> str:
        self._bdseq.connected()
        commands = [self.topic("NCMD"), self.topic("DCMD", "+")]
        filters: List[Tuple[str, Any]] = list(command_filters(commands, self.v5))
        if self.state_topic is not None:
            filters.append((self.state_topic, 1))
        _, mid = client.subscribe(filters)
        with self._lock:
            self._connected = True
            self._sub_mid = mid
        return f" as {self.client_id} (bdSeq {self._current_bdseq})"

    def session_down(self) -> None:
        with self._lock:
            self._connected = self._born = False

    def session_tick(self) -> bool:
        self._due_rebirth()
        if self._host_went_offline:
            log.warning("sparkplug %s: primary host offline; NDEATH, disconnecting", self.broker)
            return False
        return True

    def session_goodbye(self, client: paho.Client) -> None:
        """NDEATH (the Will's twin); waits up to DEATH_ACK_TIMEOUT_S for the broker's ack."""
        with self._lock:
            info = self._send(
                self.topic("NDEATH"), spb.death(spb.now_ms(time.time()), self._current_bdseq), 1
            )
            self._born = False
        deadline = time.monotonic() + DEATH_ACK_TIMEOUT_S
        while info is not None and not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=LOOP_TICK_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if info is not None and self.session.stopping:
            log.info("sparkplug %s: NDEATH (bdSeq %d) sent; disconnecting", self.broker, self._current_bdseq)

    def session_count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    # --- paho callbacks (edge-spb) --------------------------------------------------------------------------

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if mid != self._sub_mid:
            return
        if any(code.is_failure for code in codes):
            log.error("sparkplug %s: the broker refused a subscription (%s); no births", self.broker, codes)
            return
        with self._lock:
            self._subscribed = True
            self._maybe_birth()

    def _maybe_birth(self) -> None:
        if self._connected and self._subscribed and self._host_online and not self._born:
            self._births()

    def _on_state(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            online, stamp = doc["online"], doc["timestamp"]
            if not isinstance(online, bool) or isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
                raise ValueError("online must be a boolean and timestamp a number (ms since the epoch)")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("sparkplug: ignoring a malformed STATE on %s: %s", msg.topic, exc)
            return
        with self._lock:
            if stamp < self._host_ts:
                self.counters["stale_state"] += 1
                log.info(
                    "sparkplug: ignoring a STATE older than the last one seen (%d < %d)", stamp, self._host_ts
                )
                return
            self._host_ts = int(stamp)
            self._host_online = online
            if online:
                self._maybe_birth()
            elif self._born:
                self.counters["host_offline"] += 1
                self._host_went_offline = True  # the loop sends NDEATH and disconnects
        log.info(
            "sparkplug: primary host %s is %s", self.cfg.primary_host_id, "online" if online else "offline"
        )

    def _commands(self, msg: paho.MQTTMessage) -> Optional[List[spb.Command]]:
        # commands act once: a retained one (at subscribe time, or live with retain-as-published) is old;
        # the one guard of every face refuses, counts and clears it
        if not self.desk.admit(msg.topic, msg.topic, bytes(msg.payload), bool(msg.retain)):
            return None
        commands, why, counter = limits.decode_commands(msg.payload)  # size first, then metric count
        if commands is None:
            self._reject("refused a command on %s: %s", msg.topic, why, counter=counter)
        return commands

    def _clear_retained(self, topic: str) -> None:
        with self._lock:
            if self._client is not None and self._connected:
                self._client.publish(topic, b"", qos=1, retain=True)

    def _reject(self, text: str, *args: Any, counter: str = "") -> None:
        with self._lock:
            self.counters["commands_rejected"] += 1
            if counter:
                self.counters[counter] += 1
        rate_log.warning(counter or text, "sparkplug: " + text, *args)

    def _on_ncmd(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        for command in self._commands(msg) or []:
            named = command.name == spb.REBIRTH.name or command.alias == spb.NODE_ALIAS[spb.REBIRTH.name]
            if named and command.value is True:
                self.rebirth()
            else:
                self._reject("NCMD %s = %r is not a command of this node", command.name or command.alias,
                             command.value)  # fmt: skip

    def _on_dcmd(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        camera = unit_of_flat(msg.topic.rsplit("/", 1)[1])
        cam = self._cameras.get(camera)
        if cam is None:
            self._reject("DCMD for unknown device %r", camera)
            return
        alias = spb.device_alias(cam.index, spb.THRESHOLD.name)
        for command in self._commands(msg) or []:
            if command.name != spb.THRESHOLD.name and command.alias != alias:
                self._reject("DCMD %s on %s is not writable", command.name or command.alias, camera)
                continue
            try:
                payload = threshold_payload_of(spb.number(command))
            except ThresholdError as exc:
                error: Optional[str] = str(exc)
            else:
                error = self.api.set_threshold(camera, payload, origin="Sparkplug DCMD")
            if error is not None:  # answer with the value in force, so the host's tag shows what holds
                self._reject("DCMD threshold on %s refused: %s", camera, error)
                with self._lock:
                    self._update(camera, self._threshold_values(camera), spb.now_ms(time.time()),
                                 force=(spb.THRESHOLD.name,))  # fmt: skip


_UNSENT = object()
