"""The main job end to end, on a machine with no camera and no broker: ``edge-demo``.

1. starts a local mosquitto on a free loopback port;
2. makes (or reuses) a small trained, signed bundle: a folder of generated good parts -> edge-train (GTrans)
   -> edge-export, the threshold fitted on the good parts training held out (no defect is ever used);
3. writes a sample video of parts on a line, every few parts with a pasted defect;
4. runs ``edge-run`` on that video, as the service would, with its live-view page on a free loopback port
   (the URL is printed; ``--linger S`` keeps the page up S seconds after the video), and prints the MQTT
   results as they arrive (score, verdict, regions, latency) next to the truth, saving an overlay image of
   every defect found;
5. stops the daemon with SIGTERM when the video has ended, and prints a summary. It finishes by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from edge.faces.mqtt_json.topics import topic_name_of
from edge.results.overlays import annotate
from edge.results.payloads import AvailabilityPayload, ResultPayload, StatusPayload
from edge.trust.manifest import BundleError, verify_bundle
from tools.local_broker import Broker
from training.synthetic import part_sequence, write_good_folder, write_video

FRAME_SIZE = 256  # camera frames; the model input is smaller and the daemon resizes
MODEL_SIZE = 128


N_GOOD = 80  # good parts to train on; a quarter is held out for the threshold (the daemon's default)
VAL_FRACTION = 0.25
N_CALIB = 100  # good parts for int8 calibration: enough that edge-export has no reason to warn
EPOCHS = 10


def signing_key(out: Path) -> tuple[Path, Path]:
    """The demo's own Ed25519 pair (edge-keygen), so the daemon runs the bundle as production does: signed."""
    from export.keygen import write_key_pair

    key, pub = out / "keys" / "demo.key", out / "keys" / "demo.pub"
    if not (key.is_file() and pub.is_file()):
        for stale in (key, pub):
            stale.unlink(missing_ok=True)
        write_key_pair(out / "keys" / "demo")
    return key, pub


def reusable(bundle: Path, precision: str, pub: Path) -> bool:
    from edge.trust.signing import SignatureError, TrustedKeys

    try:
        manifest = verify_bundle(bundle, [precision], TrustedKeys.load([pub]))
    except (BundleError, SignatureError):
        return False
    print(f"reusing bundle {bundle} ({manifest.model_id()}, signed by {manifest.signer})", flush=True)
    return True


def ensure_bundle(out: Path, precision: str) -> tuple[Path, Path]:
    """``(bundle, public key)``: ``out/bundle`` when it verifies with the demo's key; else a small GTrans is
    trained on a folder of generated good parts and exported, signed, with the threshold fitted on the good
    parts training held out (``edge-export`` without ``--data``: no defect and no test image tunes it)."""
    key, pub = signing_key(out)
    bundle = out / "bundle"
    if reusable(bundle, precision, pub):
        return bundle, pub
    from export.cli import main as export_main
    from training.train import TrainConfig, train

    print(
        f"no bundle yet: training a small GTrans on {N_GOOD} generated good parts and exporting it "
        "(2 to 7 minutes on 2 cores: 7 measured while other training shared them; later runs reuse it)...",
        flush=True,
    )
    started = time.perf_counter()
    good = write_good_folder(out / "good-parts", N_GOOD, size=FRAME_SIZE, seed=1)
    ckpt = train(
        TrainConfig(
            model="gtrans",
            data=good,
            out=out / "run",
            epochs=EPOCHS,
            val_fraction=VAL_FRACTION,
            # the CNN teacher alone: the ViT's extra pass would slow a demo on 2 cores for nothing
            model_config={"image_size": MODEL_SIZE, "vit_layers": []},
        )
    )
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}[precision]
    if precision == "int8":
        calib = write_good_folder(out / "calib-parts", N_CALIB, size=FRAME_SIZE, seed=2)
        flags += ["--calib", str(calib)]
    rc = export_main([str(ckpt), "--out", str(bundle), "--sign-key", str(key), *flags])
    if rc != 0:
        raise SystemExit(f"edge-export failed with exit code {rc}")
    print(f"trained and exported in {time.perf_counter() - started:.0f} s", flush=True)
    return bundle, pub


@dataclass
class Watch:
    """What the demo's own MQTT client has seen."""

    prefix: str
    truth: list[np.ndarray | None]
    frames: list[np.ndarray]
    overlays: Path
    results: dict[int, dict] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # by frame key, until their result arrives
    ended: threading.Event = field(default_factory=threading.Event)
    statuses: list[str] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)  # frame key -> frame id, of the results received

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
            if any(cam.state == "ended" for cam in status.cameras.values()):
                self.ended.set()  # the video reached its end: a normal stop, not a fault
        elif kind == "availability":
            event = AvailabilityPayload.model_validate_json(msg.payload)
            print(f"availability {event.camera} {event.state}: {event.reason}", flush=True)
            if event.state == "ended":
                self.ended.set()
        elif kind == "result":
            result = ResultPayload.model_validate_json(msg.payload)
            self.keys[result.frame_key] = result.frame_id
            self.print_result(result.model_dump(by_alias=True))
        elif kind == "mask":
            self.keep_mask(topic.rsplit("/", 1)[1], bytes(msg.payload))

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
            f"frame {fid:3d}  score {r['score']:7.2f} / thr {r['threshold']:.2f}  {verdict:<9}  truth "
            f"{truth:<6}"
            f"  {r['latency_ms'].get('total', 0):6.1f} ms  {regions}",
            flush=True,
        )
        self.save_overlay(fid)

    def keep_mask(self, frame_key: str, png: bytes) -> None:
        """A mask from ``<camera>/mask/<frame_key>``, kept until its result has arrived too."""
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is not None:
            self.masks[frame_key] = mask
            if frame_key in self.keys:
                self.save_overlay(self.keys[frame_key])

    def save_overlay(self, fid: int) -> None:
        """One image per anomalous frame, once its result and its mask have both arrived (either order)."""
        r = self.results.get(fid)
        if r is None or r["mask"] is None or fid >= len(self.frames):
            return
        key = r["frame_key"]
        mask = self.masks.get(key)
        if mask is None:
            return
        path = self.overlays / f"frame_{fid:03d}.png"
        annotated = annotated_overlay(self.frames[fid], mask, r)
        blank = np.full((annotated.shape[0] - self.frames[fid].shape[0], *annotated.shape[1:]), 32, np.uint8)
        cv2.imwrite(str(path), np.hstack([np.vstack([blank, self.frames[fid]]), annotated]))
        self.saved.append(path)
        del self.masks[key]
        print(f"             saved {path}", flush=True)


def annotated_overlay(frame: np.ndarray, mask: np.ndarray, r: dict) -> np.ndarray:
    """The frame with the defect mask in red, its outline in yellow, and frame / score / threshold / verdict
    in a banner above it (edge.results.overlays, as edge-run --save-overlays draws them: no text over the
    part)."""
    verdict = "ANOMALOUS" if r["anomalous"] else "ok"
    lines = [f"frame {r['frame_id']}", f"score {r['score']:.2f} / thr {r['threshold']:.2f}", verdict]
    return annotate(frame, mask, lines, r["anomalous"])


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def live_view_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def web_section(port: int | None) -> str:
    """The live view on loopback (no token needed there), or nothing without aiohttp (the web extra)."""
    if port is None:
        return ""
    return f"""
[web]
enabled = true
host = "127.0.0.1"
port = {port}
"""


def write_config(
    out: Path,
    bundle: Path,
    pub: Path,
    video: Path,
    broker: Broker,
    precision: str,
    web_port: int | None = None,
) -> Path:
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
trusted_keys = ["{pub.resolve()}"]

[[cameras]]
name = "line1"
source = "{video.resolve()}"
fps = 10
publish_mask = "anomalous"
"""
        + web_section(web_port),
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
            f"  capture->publish        p50 {np.percentile(latencies, 50):.1f} ms, p99 "
            f"{np.percentile(latencies, 99):.1f} ms"
        )
    print(f"  status seen             {' -> '.join(watch.statuses)}")
    print(f"  overlays                {len(watch.saved)} saved in {watch.overlays} (one per anomalous frame)")
    return 0 if scored else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--defect-every", type=int, default=4)
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="int8")
    p.add_argument(
        "--linger", type=float, default=0.0, metavar="S",
        help="keep the daemon and its live-view page up S seconds after the video ended (default 0)",
    )  # fmt: skip
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bundle, pub = ensure_bundle(out, args.precision)
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
    web_port = free_loopback_port() if importlib.util.find_spec("aiohttp") is not None else None
    config = write_config(out, bundle, pub, video, broker, args.precision, web_port)
    linger = args.linger > 0 and web_port is not None  # the daemon stays up after the video (--keep-running)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.service.cli", "--config", str(config), "--log-level", "WARNING"]
        + (["--keep-running"] if linger else [])
    )
    if web_port is None:
        print("live view off: aiohttp is not installed (pip install 'edge-anomaly[web]')", flush=True)
    else:
        print(f"live view    {live_view_url(web_port)}  (open it in a browser on this machine)", flush=True)
    try:
        ended = watch.ended.wait(timeout=120)
        time.sleep(1.0)  # let results of the last frames in flight arrive before stopping
        if linger:
            print(f"the video ended; the live view stays up {args.linger:.0f} s (Ctrl-C ends it)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):  # the daemon got the Ctrl-C too and is stopping
                time.sleep(args.linger)
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
