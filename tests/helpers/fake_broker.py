"""A tiny MQTT server that misbehaves on purpose: it accepts clients, then never acknowledges, or stops
reading.

mosquitto cannot be made to do either, and both happen in plants (a broker whose disk is full stops
acknowledging; a hung broker or a half-dead NAT stops reading). Enough of MQTT 3.1.1 and 5 is spoken for a
paho client to connect and publish: CONNACK, PINGRESP in ``no_ack`` mode, and PUBLISH parsing so a test can
see what arrived.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from typing import Literal

Mode = Literal["no_ack", "no_read"]


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class FakeBroker:
    """Listens on a free loopback port; ``published`` holds every PUBLISH read (``no_ack`` mode only)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.published: list[Published] = []
        self.connects = 0
        self._cond = threading.Condition()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._server.getsockname()
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def wait_for(self, predicate, timeout: float) -> bool:  # noqa: ANN001
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_packet(self, conn: socket.socket, buf: bytearray) -> tuple[int, bytes] | None:
        while True:
            if len(buf) >= 2:
                try:
                    length, start = _varint(bytes(buf[:5]), 1)
                except IndexError:
                    length, start = -1, 0
                if length >= 0 and len(buf) >= start + length:
                    header, body = buf[0], bytes(buf[start : start + length])
                    del buf[: start + length]
                    return header, body
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf.extend(chunk)

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            first = self._read_packet(conn, buf)
            if first is None or first[0] >> 4 != 1:
                return
            body = first[1]
            name_len = int.from_bytes(body[0:2], "big")
            v5 = body[2 + name_len] == 5  # protocol level after the protocol name
            conn.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
            with self._cond:
                self.connects += 1
                self._cond.notify_all()
            if self.mode == "no_read":
                self._stop.wait()  # keep the socket open and never read again: the client's writes back up
                return
            while not self._stop.is_set():
                packet = self._read_packet(conn, buf)
                if packet is None:
                    return
                header, body = packet
                kind = header >> 4
                if kind == 12:  # PINGREQ: answered, so the client stays connected and keeps waiting for acks
                    conn.sendall(b"\xd0\x00")
                elif kind == 3:
                    self._record(header, body, v5)
                elif kind == 14:  # DISCONNECT
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _record(self, header: int, body: bytes, v5: bool) -> None:
        qos = (header >> 1) & 3
        topic_len = int.from_bytes(body[0:2], "big")
        topic = body[2 : 2 + topic_len].decode()
        pos = 2 + topic_len + (2 if qos else 0)
        if v5:
            props, pos = _varint(body, pos)
            pos += props
        with self._cond:
            self.published.append(Published(topic, body[pos:], qos))
            self._cond.notify_all()
