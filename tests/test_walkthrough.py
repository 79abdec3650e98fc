"""The walk-through (docs/walkthrough.md) runs as written: good images -> edge-train -> edge-eval --pasted
-> edge-export -> edge-video (line images -> video) -> edge-run --init-config -> edge-run on the video ->
results on MQTT and overlays (scripts/walkthrough.sh, on generated data).

The commands are the installed console scripts' entry points (shims on PATH run them from this checkout);
only the model is made tiny (TRAIN_ARGS) so the whole path takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import pytest

from edge.trust.precision_hints import suited_precision
from tests.helpers.broker import Broker
from training.synthetic import part_sequence, write_good_folder

REPO = Path(__file__).resolve().parents[1]
FRAMES = 16
TINY = "--epochs 4 --val-fraction 0.25 --set image_size=64 --set depth=1 --set dim=32"


def shims(bin_dir: Path) -> Path:
    """``edge-train`` & co. as in pyproject's [project.scripts], run by this interpreter from this
    checkout."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    bin_dir.mkdir()
    for name, target in scripts.items():
        module, func = target.split(":")
        shim = bin_dir / name
        shim.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from {module} import {func}; '
            f'sys.exit({func}())" "$@"\n'
        )
        shim.chmod(0o755)
    return bin_dir


@pytest.mark.timeout(900)
def test_walkthrough_from_good_images_to_results_on_mqtt(broker: Broker, tmp_path: Path) -> None:
    good = write_good_folder(tmp_path / "good", 40, size=128, seed=3)
    frames, truth = part_sequence(FRAMES, 4, size=128, seed=5)
    line = tmp_path / "line-images"  # photos of the line: the walk-through makes the video (edge-video)
    line.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(line / f"frame_{i:03d}.png"), frame)
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_")},
        "PATH": f"{shims(tmp_path / 'bin')}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "PYTHON": sys.executable,
        "MQTT_PORT": str(broker.port),
        "RUN_FRAMES": str(FRAMES),
        "TRAIN_ARGS": TINY,
    }
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "walkthrough.sh"), str(good), str(line), str(tmp_path / "work")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order, as a user sees it
        text=True,
        timeout=840,
    )
    out = done.stdout
    print(out)  # the transcript, for `pytest -s` (docs/walkthrough.md's expected output comes from it)
    assert done.returncode == 0, out[-6000:]
    work = tmp_path / "work"
    # 1. edge-train prints the checkpoint's path
    assert "runs/line1/checkpoint.pt" in out and (work / "runs/line1/checkpoint.pt").is_file()
    # 2. edge-eval --pasted prints the metrics table
    assert "pasted defects on 10 held-out good images" in out and "image AUROC" in out
    # 3. edge-export: the gate table, and a threshold from the held-out good images (no test set given)
    assert "bundle written to bundles/line1" in out and "false-alarm" in out
    manifest = json.loads((work / "bundles/line1/manifest.json").read_text())
    assert set(manifest["precisions"]) == {"fp32", "int8"}
    assert manifest["threshold"]["method"] != "best-f1"
    # 4. --init-config + --check-config
    assert "wrote edge.toml" in out and "checks ok" in out
    # 5. every scored frame's result arrived over MQTT
    assert f"results received over MQTT: {FRAMES}" in out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"schema"')]
    suited = suited_precision(manifest["precisions"])  # fp32 on CPU, where int8 is slower (issue 30)
    assert rows and all(r["camera"] == "cam0" and r["model"]["precision"] == suited for r in rows)
    flagged = json.loads(out.split("anomalous frames: ", 1)[1].split(" (threshold", 1)[0])
    defects = {i for i, mask in enumerate(truth) if mask is not None}
    # even this tiny model finds most pasted defects at a threshold no defect tuned, with few false alarms
    assert len(defects & set(flagged)) >= len(defects) // 2, (flagged, sorted(defects))
    assert len(set(flagged) - defects) <= 2, (flagged, sorted(defects))
    assert "level=WARNING" not in out.split("== 4.", 1)[1]  # signed and trusted: a clean start
    # edge-video made the camera's video; --save-overlays kept one picture per anomalous frame
    assert f"edge-video: wrote line.avi: {FRAMES} frames of 128x128 at 10 fps" in out
    overlays = sorted((work / "overlays").glob("cam0_*.jpg"))
    assert [int(p.stem.split("_")[1]) for p in overlays] == sorted(flagged)
    assert f"overlays of the anomalous frames: {len(flagged)}" in out
