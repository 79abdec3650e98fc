"""A bundle's id covers everything that changes its behaviour: weights, calibration, threshold, geometry.

A bundle re-exported from the same checkpoint with another threshold is a new id, so installing it and
reloading (SIGHUP) applies it: ``model/state`` names the new id and ``threshold/state`` its threshold. Before,
the id was the checkpoint's hash alone, and the reload kept the old threshold.
"""

from __future__ import annotations

import json
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.trust.manifest import MANIFEST_NAME, read_manifest
from tests.edge.test_changeover import install_bundle_cli
from tests.edge.test_daemon_e2e import WAIT, config_toml, spawn
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

SIZE = 64


def edited(src: Path, dst: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of bundle ``src`` with its (unsigned) manifest changed: the same checkpoint re-exported."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / MANIFEST_NAME).read_text())
    change(doc)
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle-id") / "v1", size=SIZE, threshold=4.0)


def test_the_id_changes_with_threshold_calibration_and_geometry_only(base: Path, tmp_path: Path) -> None:
    first = read_manifest(base).model_id()
    name = first.split("@")[0]

    def set_threshold(d: dict) -> None:
        d["threshold"]["default"] = 6.0

    def set_scale(d: dict) -> None:
        d["normalization"]["scale"] *= 2

    def set_letterbox(d: dict) -> None:
        d["input"]["resize"] = "letterbox"

    def set_time(d: dict) -> None:
        d["created_at"] = "2030-01-01T00:00:00Z"
        d["exporter"] = {"edge-export": "9.9"}

    ids = {
        what: read_manifest(edited(base, tmp_path / what, change)).model_id()
        for what, change in (("threshold", set_threshold), ("scale", set_scale), ("letterbox", set_letterbox),
                             ("time", set_time))
    }  # fmt: skip
    assert all(i.startswith(f"{name}@") for i in ids.values())
    assert ids["threshold"] != first and ids["scale"] != first and ids["letterbox"] != first
    assert len({ids["threshold"], ids["scale"], ids["letterbox"]}) == 3
    assert ids["time"] == first  # what only describes the export leaves the id alone


def model_state(sub: Subscriber, prefix: str) -> dict:
    states = [m.json() for m in sub.on(f"{prefix}/line/model/state") if m.payload]
    return states[-1] if states else {}


def active_id(sub: Subscriber, prefix: str) -> str | None:
    return model_state(sub, prefix).get("active", {}).get("model", {}).get("id")


def threshold_state(sub: Subscriber, prefix: str) -> dict:
    states = [m.json() for m in sub.on(f"{prefix}/line/threshold/state") if m.payload]
    return states[-1] if states else {}


def test_install_and_reload_apply_a_recalibrated_bundle(base: Path, broker: Broker, tmp_path: Path) -> None:
    v2 = edited(base, tmp_path / "src" / "v2", lambda d: d["threshold"].update(default=6.0))
    id1, id2 = read_manifest(base).model_id(), read_manifest(v2).model_id()
    assert id1 != id2
    frames, _ = part_sequence(30, 3, size=SIZE, seed=7)
    video = write_video(tmp_path / "parts.avi", frames, fps=10)
    dev = f"recal-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cam = {"name": "line", "source": str(video), "fps": 10, "loop": True, "publish_mask": "never",
           "recipe": "cap"}  # fmt: skip
    cfg = tmp_path / "edge.toml"
    store = tmp_path / "store"
    text = config_toml(dev, broker, base, [cam]).replace("[model]\n", f'[model]\nstore = "{store}"\n', 1)
    cfg.write_text(text, encoding="utf-8")
    first = install_bundle_cli(cfg, str(base), "--name", "cap")
    assert first.returncode == 0, first.stderr
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    proc = spawn(cfg)
    try:
        assert sub.wait_for(lambda _: active_id(sub, prefix) == id1, WAIT)
        assert sub.wait_for(lambda _: threshold_state(sub, prefix).get("threshold") == 4.0, WAIT)
        second = install_bundle_cli(cfg, str(v2), "--name", "cap")  # same checkpoint, recalibrated
        assert second.returncode == 0, second.stderr
        proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda _: active_id(sub, prefix) == id2, WAIT), model_state(sub, prefix)
        assert sub.wait_for(lambda _: threshold_state(sub, prefix).get("threshold") == 6.0, WAIT), (
            threshold_state(sub, prefix)
        )
        assert threshold_state(sub, prefix)["source"] == "manifest"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out.decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
