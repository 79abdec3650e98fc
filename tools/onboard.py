"""The loop from line to model, end to end on generated parts: ``edge-onboard`` (or scripts/onboard_demo.py).

1. recipe A: generated discs (product A) -> edge-train -> edge-export -> edge-run install-bundle (store);
2. a live daemon (edge-run, evidence store on) runs recipe A on the line video and catches A's defects;
3. the line changes to product B (hexagonal nuts, training/product_b.py): good B parts run for a while,
   and the evidence store keeps them (recipe A calls them all anomalous: it has never seen a nut);
4. those frames are exported from the store (``edge-evidence export --as-good``, the period B ran) and
   edge-train + edge-export make recipe B, installed into the store;
5. ``<camera>/model/set B`` switches the live daemon to B, between two frames, with no restart;
6. B parts with defects run; B's verdicts are checked against the truth (frames identified in the store).

Every step prints its time; the summary lists them. Needs only this repository and mosquitto.
Exit code 0 when recipe B catches at least half of B's defects, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from edge.stores.evidence_index import Record, query
from edge.trust.manifest import BundleError, verify_bundle
from tools.local_broker import Broker
from training.product_b import part_sequence_b
from training.synthetic import part_sequence, write_mvtec_dataset, write_video

FRAME_SIZE = 256  # camera frames; the models see 128 x 128
MODEL_SIZE = 128
FPS = 15
DEVICE = "onboard"
PREFIX = f"edge-anomaly/{DEVICE}"
REPO = Path(__file__).resolve().parents[1]


class Steps:
    """Times each step and prints it as it ends."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        yield
        dt = time.monotonic() - t0
        self.times.append((name, dt))
        print(f"   done in {dt:.1f} s", flush=True)

    def summary(self) -> None:
        print("\nstep times")
        for name, dt in self.times:
            print(f"  {dt:7.1f} s  {name}")
        print(f"  {sum(dt for _, dt in self.times):7.1f} s  total")


class Watch:
    """The onboarding engineer's MQTT view: results per model, model/state, and the stats."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.results: list[dict] = []
        self.states: list[dict] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="edge-onboard", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        with self.lock:
            if msg.topic.endswith("/result"):
                self.results.append(json.loads(msg.payload))
            elif msg.topic.endswith("/model/state"):
                self.states.append(json.loads(msg.payload))

    def wait(self, predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.1)
        raise SystemExit(f"edge-onboard: timed out after {timeout:.0f} s waiting for {what}")

    def set_model(self, camera: str, recipe: str) -> None:
        self.client.publish(f"{PREFIX}/{camera}/model/set", recipe.encode(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- bundles: edge-train + edge-export, then edge-run install-bundle ---------------------------------------


def make_bundle(data: Path, work: Path, name: str, epochs: int) -> Path:
    """edge-train (GTrans, small and fast settings) and edge-export, as an engineer runs them."""
    from export.cli import main as export_main
    from training.cli import train_main

    bundle = work / "bundle"
    out = io.StringIO()
    # the CNN teacher alone (vit_layers=[]): small and fast, as a first bundle should be
    args = ["--model", "gtrans", "--data", str(data), "--out", str(work / "run"), "--epochs", str(epochs),
            "--set", f"image_size={MODEL_SIZE}", "--set", "vit_layers=[]", "--quiet"]  # fmt: skip
    print(f"   edge-train {' '.join(args)}", flush=True)
    with contextlib.redirect_stdout(out):
        rc = train_main(args)
    if rc != 0:
        raise SystemExit(f"edge-train failed ({rc})")
    checkpoint = out.getvalue().strip().splitlines()[-1]
    print(f"   edge-export {checkpoint} --out {bundle} --name {name}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        rc = export_main([checkpoint, "--out", str(bundle), "--name", name])
    if rc != 0:
        raise SystemExit(f"edge-export failed ({rc})")
    return bundle


def install(bundle: Path, config: Path, recipe: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "edge.service.cli",
        "install-bundle",
        str(bundle),
        "--config",
        str(config),
        "--name",
        recipe,
    ]
    print(f"   edge-run install-bundle {bundle} --name {recipe}", flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"install-bundle failed: {done.stderr[-2000:]}")


def reuse(bundle: Path) -> bool:
    try:
        verify_bundle(bundle)
    except BundleError:
        return False
    print(f"   reusing {bundle} (--fresh retrains)", flush=True)
    return True


# --- the line: one camera reading a file that the "line" changes under it ----------------------------------


def point_line_at(link: Path, video: Path) -> None:
    """The camera reads ``link`` and reopens it at each loop: retargeting it changes the product."""
    tmp = link.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(video)
    os.replace(tmp, link)


def config_text(broker: Broker, root: Path, line: Path) -> str:
    return f"""device_id = "{DEVICE}"
state_dir = "{root / "state"}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
stats_interval_s = 1.0
[model]
bundle = "{root / "store" / "A"}"
store = "{root / "store"}"
intra_op_threads = 1
[evidence]
enabled = true
dir = "{root / "evidence"}"
good_every = 1
near_threshold = 0.0
max_bytes = 536870912
[[cameras]]
name = "line"
source = "{line}"
loop = true
fps = {FPS}
publish_mask = "anomalous"
"""


# --- checking verdicts against the truth, through the evidence store ----------------------------------------


def _thumb(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)


class Truth:
    """Which video (and which frame of it) a stored evidence image is: nearest frame by pixel distance."""

    def __init__(self, videos: dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]]) -> None:
        self.keys: list[tuple[str, int, bool]] = []
        thumbs = []
        for name, (frames, masks) in videos.items():
            for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
                self.keys.append((name, i, mask is not None))
                thumbs.append(_thumb(frame))
        self.thumbs = np.stack(thumbs)

    def of(self, store: Path, rec: Record) -> tuple[str, int, bool]:
        image = cv2.imread(str(store / rec.image))
        d = ((self.thumbs - _thumb(image)[None]) ** 2).mean(axis=(1, 2))
        return self.keys[int(np.argmin(d))]


def judge(store: Path, rows: list[Record], truth: Truth, video: str) -> dict[str, int]:
    """Verdicts of the stored frames that came from ``video``, against its truth (each frame once)."""
    seen: dict[int, tuple[bool, bool]] = {}
    for rec in rows:
        name, index, defective = truth.of(store, rec)
        if name == video:
            seen.setdefault(index, (defective, rec.anomalous))
    tally = {"defects": 0, "caught": 0, "good": 0, "false_alarms": 0}
    for defective, anomalous in seen.values():
        if defective:
            tally["defects"] += 1
            tally["caught"] += anomalous
        else:
            tally["good"] += 1
            tally["false_alarms"] += anomalous
    return tally


def show(label: str, tally: dict[str, int]) -> None:
    print(f"   {label}: caught {tally['caught']} of {tally['defects']} defective parts, "
          f"{tally['false_alarms']} false alarm(s) on {tally['good']} good parts", flush=True)  # fmt: skip


# --- the run ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-onboard", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("onboard-demo"), help="work folder (kept for a look)")
    p.add_argument("--epochs", type=int, default=8, help="GTrans epochs per recipe (small and fast)")
    p.add_argument("--fresh", action="store_true", help="retrain recipe A even if a bundle is there")
    args = p.parse_args(argv)
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    videos = {
        "A": part_sequence(48, 4, size=FRAME_SIZE, seed=101),
        "B-good": part_sequence_b(60, 0, size=FRAME_SIZE, seed=202),
        "B-check": part_sequence_b(48, 4, size=FRAME_SIZE, seed=303),
    }
    paths = {name: write_video(root / f"{name}.avi", frames, fps=FPS) for name, (frames, _) in videos.items()}
    truth = Truth(videos)
    line = root / "line.avi"
    point_line_at(line, paths["A"])
    broker = Broker(root / "mosquitto").start()
    config = root / "edge.toml"
    config.write_text(config_text(broker, root, line), encoding="utf-8")
    daemon = None
    watch = Watch(broker)
    log_file = open(root / "edge-run.log", "wb")  # noqa: SIM115  (the daemon writes it until the end)
    try:
        with steps.step("recipe A: edge-train + edge-export on generated discs, install-bundle"):
            bundle_a = root / "recipe-A" / "bundle"
            if args.fresh or not reuse(bundle_a):
                data_a = write_mvtec_dataset(root / "parts-A", n_train=64, n_test_good=4, n_test_defect=4,
                                             size=FRAME_SIZE, seed=1)  # fmt: skip
                bundle_a = make_bundle(data_a, root / "recipe-A", "gtrans-disc", args.epochs)
            install(bundle_a, config, "A")

        with steps.step("line runs recipe A (edge-run, evidence store on)"):
            evidence = root / "evidence"
            daemon = subprocess.Popen(
                [sys.executable, "-m", "edge.service.cli", "--config", str(config)],
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            watch.wait(lambda w: len(w.results) >= len(videos["A"][0]) + 5, 180, "recipe A's results")
            id_a = watch.results[-1]["model"]["id"]
            show(f"recipe A ({id_a}) on product A", judge(evidence, query(evidence, model=id_a), truth, "A"))

        with steps.step("line changes to product B; good B parts run and the store keeps them"):
            t_change = time.time()
            point_line_at(line, paths["B-good"])
            n_b = len(videos["B-good"][0])

            def b_rows() -> list[Record]:
                rows = query(evidence, since=t_change)
                return [r for r in rows if truth.of(evidence, r)[0] == "B-good"]

            deadline = time.monotonic() + 300
            while len({truth.of(evidence, r)[1] for r in b_rows()}) < n_b and time.monotonic() < deadline:
                time.sleep(1.0)
            rows = b_rows()
            since, until = rows[0].ts, rows[-1].ts + 1e-3
            calls = sum(r.anomalous for r in rows)
            print(
                f"   {len(rows)} frames of product B kept; recipe A called {calls} of them anomalous",
                flush=True,
            )

        with steps.step(
            "recipe B from the line: edge-evidence export, edge-train + edge-export, install-bundle"
        ):
            data_b = root / "from-line-B"
            cmd = [sys.executable, "-m", "edge.stores.evidence_cli", "export", "--dir", str(evidence),
                   "--out", str(data_b), "--since", str(since), "--until", str(until), "--as-good",
                   "--camera", "line"]  # fmt: skip
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise SystemExit(f"edge-evidence export failed: {done.stderr}")
            print(f"   {done.stdout.strip()}", flush=True)
            bundle_b = make_bundle(data_b, root / "recipe-B", "gtrans-nut", args.epochs)
            install(bundle_b, config, "B")

        with steps.step("model/set B: the live daemon switches between two frames, no restart"):
            n_states = len(watch.states)
            watch.set_model("line", "B")
            watch.wait(lambda w: any(s["active"]["recipe"] == "B" and s["loading"] is None
                                     for s in w.states[n_states:]), 120, "model/state active B")  # fmt: skip
            state = watch.states[-1]
            print(f"   model/state: active {state['active']['recipe']} ({state['active']['model']['id']}), "
                  f"previous {state['previous']}, {state['resident']} model(s) resident",
                  flush=True)  # fmt: skip
            id_b = state["active"]["model"]["id"]

        with steps.step("product B with defects: does recipe B catch them?"):
            t_check = time.time()
            point_line_at(line, paths["B-check"])
            n_check = len(videos["B-check"][0])

            def check_rows() -> list[Record]:
                rows = query(evidence, model=id_b, since=t_check)
                return [r for r in rows if truth.of(evidence, r)[0] == "B-check"]

            deadline = time.monotonic() + 300
            while (
                len({truth.of(evidence, r)[1] for r in check_rows()}) < n_check
                and time.monotonic() < deadline
            ):
                time.sleep(1.0)
            tally_b = judge(evidence, check_rows(), truth, "B-check")
            show(f"recipe B ({id_b}) on product B", tally_b)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        watch.close()
        broker.stop()
        log_file.close()
    steps.summary()
    seqs = [r["seq"] for r in watch.results]
    print(f"\n{len(seqs)} results, seq contiguous: {seqs == list(range(len(seqs)))}; daemon exit "
        f"{daemon.returncode}"
          f"; log {root / 'edge-run.log'}")  # fmt: skip
    return 0 if tally_b["defects"] and tally_b["caught"] >= tally_b["defects"] / 2 else 1


if __name__ == "__main__":
    sys.exit(main())
