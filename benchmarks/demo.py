"""The main job end to end, on a machine with no camera and no broker: ``edge-demo``.

1. starts a local mosquitto on a free loopback port;
2. makes (or reuses) a small trained bundle: generated good parts -> edge-train (GTrans) -> edge-export;
3. writes a sample video of parts on a line, every few parts with a pasted defect;
4. runs ``edge-run`` on that video, as the service would, and prints the MQTT results as they arrive
   (score, verdict, regions, latency) next to the truth, saving overlay images of the defect masks;
5. stops the daemon with SIGTERM when the video has ended, and prints a summary. It finishes by itself.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from benchmarks.local_broker import Broker
from edge.api import AvailabilityPayload, ResultPayload, StatusPayload, topic_name_of
from edge.manifest import BundleError, verify_bundle
from training.synthetic import part_sequence, write_mvtec_dataset, write_video

FRAME_SIZE = 256  # camera frames; the model input is smaller and the daemon resizes
MODEL_SIZE = 128


def ensure_bundle(out: Path, precision: str) -> Path:
    """Reuse ``out/bundle`` when it verifies; otherwise train a small GTrans on generated parts and export it."""
    bundle = out / "bundle"
    try:
        manifest = verify_bundle(bundle)
        if precision in manifest.precisions:
            print(f"reusing bundle {bundle} ({manifest.model_id()})", flush=True)
            return bundle
    except BundleError:
        pass
    from export.cli import main as export_main
    from training.train import TrainConfig, train

    print(
        "no bundle yet: training a small GTrans on generated parts (about a minute on 2 cores)...", flush=True
    )
    data = write_mvtec_dataset(
        out / "parts", n_train=64, n_test_good=8, n_test_defect=8, size=FRAME_SIZE, seed=1
    )
    ckpt = train(
        TrainConfig(
            model="gtrans", data=data, out=out / "run", epochs=10, model_config={"image_size": MODEL_SIZE}
        )
    )
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}[precision]
    rc = export_main([str(ckpt), "--out", str(bundle), "--data", str(data), *flags])
    if rc != 0:
        raise SystemExit(f"edge-export failed with exit code {rc}")
    return bundle


@dataclass
class Watch:
    """What the demo's own MQTT client has seen."""

    prefix: str
    truth: list[np.ndarray | None]
    frames: list[np.ndarray]
    overlays: Path
    max_overlays: int = 4
    results: dict[int, dict] = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)
    statuses: list[str] = field(default_factory=list)
    saved: int = 0
    masks: dict[str, bytes] = field(default_factory=dict)  # by frame key, until their result arrives

    def on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic[len(self.prefix) + 1 :]
        if not msg.payload:  # a cleared retained message
            return
        kind = topic_name_of(topic)
        if kind == "status":
            status = StatusPayload.model_validate_json(msg.payload)
            self.statuses.append(status.state)
            cams = ", ".join(f"{name} {cam.state}" for name, cam in status.cameras.items())
            print(f"status       {status.state} ({cams})", flush=True)
        elif kind == "availability":
            event = AvailabilityPayload.model_validate_json(msg.payload)
            print(f"availability {event.camera} {event.state}: {event.reason}", flush=True)
            if event.state == "ended":
                self.ended.set()
        elif kind == "result":
            result = ResultPayload.model_validate_json(msg.payload)
            self.print_result(result.model_dump(by_alias=True))
            if result.mask is not None and result.frame_key in self.masks:
                self.save_overlay(result.frame_id, self.masks.pop(result.frame_key))
        elif kind == "mask":
            self.masks[topic.rsplit("/", 1)[1]] = bytes(msg.payload)  # the mask comes before its result

    def print_result(self, r: dict) -> None:
        fid = r["frame_id"]
        self.results[fid] = r
        if r["anomalous"] and not any(v["anomalous"] for k, v in self.results.items() if k != fid):
            (self.overlays.parent / "result-example.json").write_text(json.dumps(r, indent=2) + "\n")
        truth = "defect" if fid < len(self.truth) and self.truth[fid] is not None else "good"
        verdict = "ANOMALOUS" if r["anomalous"] else "ok"
        regions = "; ".join(
            f"bbox={g['bbox']} area={g['area']} peak={g['peak']:.2f}" for g in r["regions"][:2]
        )
        print(
            f"frame {fid:3d}  score {r['score']:7.2f} / thr {r['threshold']:.2f}  {verdict:<9}  truth {truth:<6}"
            f"  {r['latency_ms'].get('total', 0):6.1f} ms  {regions}",
            flush=True,
        )

    def save_overlay(self, fid: int, png: bytes) -> None:
        if self.saved >= self.max_overlays:
            return
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None or fid >= len(self.frames):
            return
        overlay = self.frames[fid].copy()
        overlay[mask > 0] = (0.4 * overlay[mask > 0] + 0.6 * np.array([0, 0, 255])).astype(np.uint8)
        contours, _ = cv2.findContours(
            (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(overlay, contours, -1, (0, 255, 255), 1)
        path = self.overlays / f"frame_{fid:03d}.png"
        cv2.imwrite(str(path), np.hstack([self.frames[fid], overlay]))
        self.saved += 1
        print(f"             saved {path}", flush=True)


def write_config(out: Path, bundle: Path, video: Path, broker: Broker, precision: str) -> Path:
    config = out / "edge.toml"
    config.write_text(
        f"""device_id = "demo"
[mqtt]
host = "{broker.host}"
port = {broker.port}
stats_interval_s = 2.0

[model]
bundle = "{bundle.resolve()}"
backend = "onnxruntime"
precision = "{precision}"

[[cameras]]
name = "line1"
source = "{video.resolve()}"
fps = 10
publish_mask = "anomalous"
""",
        encoding="utf-8",
    )
    return config


def summarise(watch: Watch) -> int:
    scored = sorted(watch.results)
    agree = sum(
        1
        for fid in scored
        if watch.results[fid]["anomalous"] == (fid < len(watch.truth) and watch.truth[fid] is not None)
    )
    latencies = [watch.results[f]["latency_ms"].get("total", 0.0) for f in scored]
    print("\nsummary")
    print(f"  frames in the video     {len(watch.truth)}")
    print(f"  results received        {len(scored)}")
    if scored:
        print(f"  verdicts matching truth {agree}/{len(scored)}")
        print(
            f"  capture->publish        p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms"
        )
    print(f"  status seen             {' -> '.join(watch.statuses)}")
    print(f"  overlays                {watch.overlays}")
    return 0 if scored else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--defect-every", type=int, default=4)
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="int8")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle(out, args.precision)
    frames, truth = part_sequence(args.frames, args.defect_every, size=FRAME_SIZE, seed=7)
    video = write_video(out / "line1.avi", frames, fps=10)
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    for old in overlays.glob("*.png"):
        old.unlink()

    broker = Broker(out / "broker").start()
    print(f"mosquitto listening on {broker.host}:{broker.port}", flush=True)
    watch = Watch("edge-anomaly/demo", truth, frames, overlays)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-demo-viewer", protocol=mqtt.MQTTv5)
    client.on_message = watch.on_message
    client.connect(broker.host, broker.port)
    client.subscribe("edge-anomaly/demo/#", qos=1)
    client.loop_start()
    config = write_config(out, bundle, video, broker, args.precision)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--config", str(config), "--log-level", "WARNING"]
    )
    try:
        ended = watch.ended.wait(timeout=120)
        time.sleep(1.0)  # let results of the last frames in flight arrive before stopping
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        time.sleep(0.5)  # the retained offline status
        print(
            f"\nedge-run exited with {rc} after SIGTERM"
            + ("" if ended else " (the video did not end in 120 s)")
        )
    finally:
        if daemon.poll() is None:
            daemon.kill()
        client.loop_stop()
        client.disconnect()
        broker.stop()
    return summarise(watch)


if __name__ == "__main__":
    sys.exit(main())
