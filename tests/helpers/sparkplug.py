"""Sparkplug B messages as an independent host sees them: decoded by Eclipse Tahu's JavaScript
``sparkplug-payload`` (tests/node, run with the machine's node), never by the project's own code.

``scripts/setup.sh`` installs the package from tests/node/package-lock.json (``npm ci``); when it is missing
the :func:`tahu` fixture installs it the same way. Without node the Sparkplug tests skip and say why.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mqtt import Received

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
Decoder = Callable[[list[bytes]], list[dict[str, Any]]]


def install_decoder() -> str | None:
    """None when Tahu's decoder is ready, else why it cannot be used here."""
    if shutil.which("node") is None:
        return "node is not installed (Sparkplug payloads are checked with Eclipse Tahu's JavaScript decoder)"
    if (NODE_DIR / "node_modules" / "sparkplug-payload").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed, so tests/node (Eclipse Tahu's sparkplug-payload) cannot be installed"
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"npm ci --prefix tests/node failed:\n{done.stderr[-2000:]}")
    return None


def decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Decode with Tahu (one node process for the whole list); 64-bit values come back as numbers."""
    if not payloads:
        return []
    text = "".join(base64.b64encode(p).decode() + "\n" for p in payloads)
    done = subprocess.run(
        ["node", str(NODE_DIR / "decode.js")], input=text, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(docs) == len(payloads), done.stderr
    bad = [d for d in docs if "error" in d]
    assert not bad, f"Tahu could not decode {len(bad)} payload(s): {bad[:3]}"
    return docs


@dataclass
class SpbMessage:
    """One Sparkplug message: topic levels and the payload as Tahu decoded it."""

    topic: str
    kind: str  # NBIRTH, NDEATH, NDATA, DBIRTH, DDEATH, DDATA
    device: str | None
    doc: dict[str, Any]
    retain: bool
    received_at: float

    @property
    def seq(self) -> int | None:
        return self.doc.get("seq")

    def metrics(self, aliases: dict[int, str] | None = None) -> dict[str, Any]:
        """name -> value; names of alias-only metrics come from ``aliases`` (learnt from the births)."""
        out = {}
        for m in self.doc.get("metrics", []):
            name = m.get("name") or (aliases or {}).get(m.get("alias"))
            assert name is not None, f"metric without name or known alias in {self.kind}: {m}"
            out[name] = m["value"]
        return out


def sparkplug_messages(msgs: list[Received], group: str, node: str, decoder: Decoder) -> list[SpbMessage]:
    """The node's messages among ``msgs`` (arrival order), decoded by Tahu."""
    ours = []
    for m in msgs:
        parts = m.topic.split("/")
        if len(parts) >= 4 and parts[0] == "spBv1.0" and parts[1] == group and parts[3] == node:
            if parts[2] in ("NCMD", "DCMD"):
                continue
            ours.append((m, parts[2], parts[4] if len(parts) > 4 else None))
    docs = decoder([m.payload for m, _, _ in ours])
    return [
        SpbMessage(m.topic, kind, dev, doc, m.retain, m.received_at)
        for (m, kind, dev), doc in zip(ours, docs, strict=True)
    ]


def aliases(msgs: list[SpbMessage]) -> dict[int, str]:
    """alias -> metric name, from every birth certificate."""
    table: dict[int, str] = {}
    for m in msgs:
        if m.kind in ("NBIRTH", "DBIRTH"):
            for metric in m.doc["metrics"]:
                table[metric["alias"]] = metric["name"]
    return table


def encode_command(metrics: list[tuple[str, str, Any]]) -> bytes:
    """An NCMD/DCMD as a host sends it, encoded by Tahu: [(name, Sparkplug type, value)]."""
    script = (
        "const sp = require('sparkplug-payload').get('spBv1.0');"
        "const m = JSON.parse(process.argv[1]);"
        "const p = sp.encodePayload({timestamp: Date.now(), metrics: m});"
        "process.stdout.write(Buffer.from(p).toString('base64'));"
    )
    doc = [{"name": n, "type": t, "value": v} for n, t, v in metrics]
    done = subprocess.run(
        ["node", "-e", script, json.dumps(doc)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return base64.b64decode(done.stdout)
