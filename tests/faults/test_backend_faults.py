"""The inference backend fails: it raises for some frames, it hangs, or its engine cache cannot be written.

- Raising: a real ONNX graph that fails inside onnxruntime for some inputs (a Reshape whose target shape
  depends on a pixel), run by the real daemon in a subprocess. Errors are counted, the process keeps running
  and the systemd watchdog stops petting while nothing is scored, then resumes.
- Hanging: the daemon in-process on a backend (a row the test adds to the backend table) whose ``run``
  blocks on an Event: the watchdog falls silent (systemd would restart the service), the rest of the daemon
  keeps reporting, and all resumes on release.
- Engine cache unwritable (disk full, read-only): the TensorRT backend (against tests/edge/fake_tensorrt.py)
  builds its engine, cannot store it, warns, leaves no partial file and the daemon runs from memory.
  tests/edge/test_tensorrt.py already covers ENOSPC raised by a patched ``os.replace``/``write`` and a file in
  the cache directory's place; here the errors come from a real full or read-only file system (a small
  tmpfs, where the test may mount one) and the whole daemon runs on top.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.config import load_config
from edge.scoring.backends import BACKENDS
from edge.scoring.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.service.daemon import Daemon, build
from edge.service.health import SdNotifier
from edge.trust.manifest import MANIFEST_NAME, Manifest, sha256_file
from edge.util import atomic
from tests.edge import fake_tensorrt
from tests.faults.conftest import (
    SIZE,
    WAIT,
    DaemonProcess,
    Media,
    NotifySocket,
    config_text,
    device_id,
    results,
    stats,
    write_config,
)
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from training.synthetic import part_sequence, write_video

WATCHDOG_USEC = 300_000  # systemd's WatchdogSec=0.3: the daemon pets every 0.15 s while frames flow
PET_S = WATCHDOG_USEC / 2e6
STALL_AFTER_S = 1.0
# Frames per loop at 10 fps. The daemon retries after 0.2, 0.4, 0.8, 1.6 s: the retry after the poisoned run
# lands ~3 s after its start, inside the next ordinary run; no inference for that long is a watchdog stall.
GOOD, POISON = 20, 16


# --- a bundle whose graph fails at run time for some frames ----------------------------------------------


def poison_bundle(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose fp32 graph raises in onnxruntime when the top-left pixel's red value > 127.

    An extra branch reshapes a 6-element constant to ``[6 - (pixel > 127)]``: valid for ordinary frames,
    impossible for poisoned ones. Its result is multiplied by 0 and added to the score, so the scores of
    ordinary frames are untouched and the branch cannot be pruned.
    """
    dst.mkdir(parents=True)
    model = onnx.load(str(src / "model.fp32.onnx"))
    graph = model.graph
    for node in graph.node:
        if list(node.output) == ["score"]:
            node.output[0] = "score_plain"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(4, np.int64), "px_starts"),
            numpy_helper.from_array(np.ones(4, np.int64), "px_ends"),
            numpy_helper.from_array(np.array(127.0, np.float32), "px_limit"),
            numpy_helper.from_array(np.array([1], np.int64), "one_dim"),
            numpy_helper.from_array(np.array([6], np.int64), "six"),
            numpy_helper.from_array(np.arange(6, dtype=np.float32), "six_values"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Slice", ["image", "px_starts", "px_ends"], ["px"]),
            helper.make_node("Cast", ["px"], ["px_f"], to=TensorProto.FLOAT),
            helper.make_node("Greater", ["px_f", "px_limit"], ["bright"]),
            helper.make_node("Cast", ["bright"], ["bright_i"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["bright_i", "one_dim"], ["bright_1"]),
            helper.make_node("Sub", ["six", "bright_1"], ["target"]),
            helper.make_node("Reshape", ["six_values", "target"], ["reshaped"]),
            helper.make_node("ReduceSum", ["reshaped"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["score_plain", "nothing"], ["score"]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst / "model.fp32.onnx"))
    doc = json.loads((src / MANIFEST_NAME).read_text(encoding="utf-8"))
    doc["precisions"] = {"fp32": {"file": "model.fp32.onnx", "sha256": sha256_file(dst / "model.fp32.onnx")}}
    (dst / MANIFEST_NAME).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return dst


def poison_video(path: Path) -> Path:
    """GOOD ordinary frames then POISON frames with a white top-left corner (dark on the ordinary ones)."""
    frames, _ = part_sequence(GOOD + POISON, 0, size=SIZE, seed=5)
    for i, frame in enumerate(frames):
        frame[:16, :16] = 255 if i >= GOOD else 40
    return write_video(path, frames, fps=10)


def test_the_poison_bundle_really_fails_only_on_poisoned_frames(media: Media, tmp_path: Path) -> None:
    """The fault injected below is real: onnxruntime raises for a white corner and scores the rest."""
    bundle = poison_bundle(media.bundle, tmp_path / "poison")
    session = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(
        str(media.bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"]
    )
    frames, _ = part_sequence(2, 0, size=SIZE, seed=6)
    image = cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB)[None]
    image[:, :16, :16] = 40
    assert session.run(["score"], {"image": image})[0] == reference.run(["score"], {"image": image})[0]
    image[:, :16, :16] = 255
    with pytest.raises(Exception, match="Reshape"):
        session.run(["score"], {"image": image})


def test_inference_errors_are_counted_and_the_watchdog_pauses_then_resumes(
    broker: Broker,
    media: Media,
    tmp_path: Path,
    spawn: Callable[..., DaemonProcess],
    notify_socket: NotifySocket,
) -> None:
    bundle = poison_bundle(media.bundle, tmp_path / "poison")
    video = poison_video(tmp_path / "poison.avi")
    dev = device_id("raise")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(video), "loop": True, "fps": 10, "publish_mask": "never"}]
    health = {"stall_after_s": STALL_AFTER_S}
    config = write_config(tmp_path, config_text(dev, broker, bundle, cams, health=health))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    daemon = spawn(config, env=notify_socket.env(WATCHDOG_USEC))
    notify = notify_socket
    try:
        first_pet = notify.wait_for("WATCHDOG=1", after=notify.wait_for("READY=1"))
        stalled = notify.wait_for("STATUS=stalled: no inference for", after=first_pet)
        running = notify.wait_for("STATUS=running", after=stalled)
        notify.wait_for("WATCHDOG=1", after=running)
        assert "WATCHDOG=1" not in notify.lines[stalled:running]
        # Recovered for good: frames of the next loop are scored after the poisoned run.
        loop = GOOD + POISON
        assert sub.wait_for(lambda m: any(r["frame_id"] >= loop for r in results(sub, prefix, "line")), WAIT)
        assert sub.wait_for(lambda m: any(s["errors"]["inference"] >= 1 for s in stats(sub, prefix)), WAIT)
        assert daemon.alive(), "the daemon died of an inference error"
        pid = daemon.pid
        assert daemon.terminate() == 0
        notify.wait_for("STOPPING=1", after=running)
    finally:
        sub.close()
    log = daemon.output()
    assert daemon.pid == pid and log.count("running: cameras") == 1  # one start: no crash-and-restart loop
    failed_at = log.index("inference failed")
    assert "Reshape" in log[failed_at:]  # onnxruntime's own error, in the log with its traceback
    stall_after_errors = log.index("stall: no inference for", failed_at)  # caused by the errors
    assert log.index("watchdog resumed", stall_after_errors) > stall_after_errors
    last = stats(sub, prefix)[-1]
    assert last["errors"]["inference"] >= 1 and last["drops"]["inference"] >= last["errors"]["inference"]
    scored = [r["frame_id"] for r in results(sub, prefix, "line")]
    assert scored and not [i for i in scored if i % loop >= GOOD], "a poisoned frame produced a result"


# --- a backend that hangs --------------------------------------------------------------------------------


class GatedBackend:
    """The onnxruntime backend behind a gate: while ``hang`` is set, ``run`` blocks inside until ``release``
    is set. The daemon builds it as it builds any backend, from a row this test adds to the backend table."""

    OPTIONS = OnnxRuntimeBackend.OPTIONS
    CACHE_OPTION = OnnxRuntimeBackend.CACHE_OPTION

    def __init__(self, bundle_dir: Path, manifest: Manifest, precision: str, **options: object) -> None:
        self._inner = OnnxRuntimeBackend(bundle_dir, manifest, precision, **options)  # type: ignore[arg-type]
        self.name, self.precision = self._inner.name, self._inner.precision
        self.max_batch, self.input_hw = self._inner.max_batch, self._inner.input_hw
        self.hang = threading.Event()
        self.release = threading.Event()
        self.stuck = threading.Event()  # set once a run is blocked

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.hang.is_set():
            self.stuck.set()
            if not self.release.wait(2 * WAIT):
                raise RuntimeError("the test never released the backend")
        return self._inner.run(images)

    def close(self) -> None:
        self._inner.close()


class Running:
    """The daemon's loop in a thread, as edge-run runs it in its main thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.daemon.run_until_stopped()

    def stop(self) -> int | None:
        self.daemon.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.rc


def test_a_hung_backend_silences_the_watchdog_until_it_returns(
    broker: Broker,
    media: Media,
    tmp_path: Path,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    dev = device_id("hang")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 15, "publish_mask": "never"}]
    monkeypatch.setitem(BACKENDS, "gated", f"{__name__}:GatedBackend")
    model = {"backend": "gated"}
    text = config_text(dev, broker, media.bundle, cams, model=model, health={"stall_after_s": STALL_AFTER_S})
    daemon = build(load_config(write_config(tmp_path, text)), notifier=SdNotifier(str(notify_socket.path)))
    gate = daemon.backend
    assert isinstance(gate, GatedBackend)
    notify = notify_socket
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = Running(daemon)
    try:
        first_pet = notify.wait_for("WATCHDOG=1", after=notify.wait_for("READY=1"))
        gate.hang.set()
        assert gate.stuck.wait(WAIT), "inference never entered the hung backend"
        stalled = notify.wait_for("STATUS=stalled: no inference for", after=first_pet)
        hung_from = sub.count()  # stats from here on were all published while inference hung
        assert "WATCHDOG=1" not in notify.collect(4 * PET_S)  # silent: systemd's WatchdogSec would fire
        # The rest of the daemon is alive: stats keep coming, scoring nothing, while the camera's frames are
        # dropped at its one-frame slot (bounded memory, no backlog of stale frames to score later).
        assert sub.wait_for(lambda m: _slot_drops_grew(stats(sub, prefix, since=hung_from)), WAIT)
        assert len({s["frames_scored"] for s in stats(sub, prefix, since=hung_from)}) == 1
        scored_before = len(results(sub, prefix, "line"))

        gate.hang.clear()
        gate.release.set()
        running = notify.wait_for("STATUS=running", after=stalled)
        notify.wait_for("WATCHDOG=1", after=running)
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= scored_before + 5, WAIT)
    finally:
        gate.release.set()
        assert run.stop() == 0
        sub.close()
    notify.wait_for("STOPPING=1", after=stalled)
    ids = [r["frame_id"] for r in results(sub, prefix, "line")]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def _slot_drops_grew(docs: list[dict]) -> bool:
    return len(docs) >= 3 and docs[-1]["drops"]["camera_slots"] > docs[0]["drops"]["camera_slots"]


# --- engine cache on a full or read-only file system -------------------------------------------------------


def _mount_tmpfs(path: Path, size: str) -> bool:
    tool = shutil.which("mount")
    if tool is None or os.geteuid() != 0:
        return False
    done = subprocess.run(
        [tool, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _fill(path: Path) -> None:
    """Write until the file system says ENOSPC (a real full disk, not a patched call)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


@pytest.fixture(params=["disk-full", "read-only", "read-only-patched"])
def unwritable_bundle(
    request: pytest.FixtureRequest, media: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """A copy of the bundle whose engines/ cannot be written, and the error text that says why.

    "disk-full" and "read-only" use a real 1 MiB tmpfs (skipped where this test may not mount one);
    "read-only-patched" runs everywhere: every write under the bundle raises EROFS.
    """
    mount = tmp_path / "fs"
    mount.mkdir()
    kind = request.param
    if kind == "read-only-patched":
        bundle = Path(shutil.copytree(media.bundle, mount / "bundle"))
        (bundle / "engines").mkdir()
        real_open = open

        def read_only_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
            if "w" in mode and str(file).startswith(str(bundle)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(
            atomic, "open", read_only_open, raising=False
        )  # the engine cache writes through it
        yield bundle, os.strerror(errno.EROFS)
        return
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); read-only-patched covers it")
    try:
        bundle = Path(shutil.copytree(media.bundle, mount / "bundle"))
        if kind == "disk-full":
            (bundle / "engines").mkdir()
            _fill(mount / "filler")
            yield bundle, os.strerror(errno.ENOSPC)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
            yield bundle, os.strerror(errno.EROFS)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_engine_cache_unwritable_daemon_runs_from_memory(
    unwritable_bundle: tuple[Path, str],
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    media: Media,
) -> None:
    bundle, why = unwritable_bundle
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    gpu = fake_tensorrt.install(monkeypatch, "8.6.1")
    dev = device_id("trt")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 20, "publish_mask": "never"}]
    model = {"backend": "tensorrt", "intra_op_threads": None}
    config = load_config(write_config(tmp_path, config_text(dev, broker, bundle, cams, model=model)))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/line/result"])
    with caplog.at_level(logging.WARNING):
        daemon = build(config)
        assert daemon.backend.engine_path is None  # type: ignore[attr-defined]
        run = Running(daemon)
        try:
            assert sub.wait_for(lambda m: len(m) >= 3, WAIT)
        finally:
            assert run.stop() == 0
            sub.close()
    assert gpu.state.builds == 1
    doc = sub.on(f"{prefix}/line/result")[0].json()
    assert doc["model"]["backend"] == "tensorrt"
    warnings = [r.getMessage() for r in caplog.records if "running this engine from memory" in r.getMessage()]
    assert len(warnings) == 1 and why in warnings[0], [r.getMessage() for r in caplog.records]
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before, (
        "a partial file was left behind"
    )
