"""``edge-run --save-overlays DIR`` and ``edge-video FOLDER OUT`` (issue 30, item 5).

The run plays a generated video with defects at known frames through a tiny real bundle: one picture per
anomalous frame (every N-th too with --overlay-every, at most --overlay-limit), the text in a banner above
the frame so the part itself is never written on. edge-video turns a folder of images into that kind of video.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.results.overlays import LINE_H, annotate
from edge.service.cli import main
from tests.edge.test_daemon_e2e import config_toml
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence
from training.video_cli import main as video_main

FRAMES = 12
SIZE = 96

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ovl")
    frames, masks = part_sequence(FRAMES, 3, size=SIZE, seed=31)
    images = root / "images"
    images.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(images / f"f{i:02d}.png"), frame)
    return {"bundle": make_tiny_bundle(root / "bundle", size=SIZE), "images": images, "frames": frames}


def test_edge_video_makes_a_playable_video_from_a_folder(media: dict, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "line.avi"
    assert video_main([str(media["images"]), str(out), "--fps", "5"]) == 0
    assert f"wrote {out}: {FRAMES} frames of {SIZE}x{SIZE} at 5 fps" in capsys.readouterr().out
    capture = cv2.VideoCapture(str(out))
    read = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        read.append(image)
    assert len(read) == FRAMES and read[0].shape == (SIZE, SIZE, 3)
    assert np.abs(read[3].astype(int) - media["frames"][3].astype(int)).mean() < 4  # MJPG: close, not exact

    empty = tmp_path / "empty"
    empty.mkdir()
    assert video_main([str(empty), str(tmp_path / "x.avi")]) == 2
    assert "holds no images" in capsys.readouterr().err


def run_with_overlays(broker: Broker, media: dict, tmp_path: Path, *extra: str) -> tuple[list[dict], Path]:
    video = tmp_path / "line.avi"
    assert video_main([str(media["images"]), str(video), "--fps", "20"]) == 0
    dev = f"ovl-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config_toml(dev, broker, media["bundle"], [{"name": "line", "source": str(video)}]))
    sub = Subscriber(broker.host, broker.port, [f"edge-anomaly/{dev}/line/result"])
    folder = tmp_path / "overlays"
    try:
        assert main(["--config", str(cfg), "--save-overlays", str(folder), *extra]) == 0
        assert sub.wait_for(lambda m: len(m) >= FRAMES, 90)
    finally:
        sub.close()
    return [json.loads(m.payload) for m in sub.snapshot()], folder


def test_save_overlays_keeps_the_anomalous_frames_with_a_banner(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    results, folder = run_with_overlays(broker, media, tmp_path)
    flagged = sorted(r["frame_id"] for r in results if r["anomalous"])
    saved = sorted(folder.glob("line_*.jpg"))
    assert flagged and [int(p.stem.split("_")[1]) for p in saved] == flagged
    image = cv2.imread(str(saved[0]))
    banner = image.shape[0] - SIZE
    assert image.shape[1] == SIZE and banner >= 3 * LINE_H  # the text sits above the frame
    part = image[banner:].astype(int)
    frame = media["frames"][flagged[0]].astype(int)
    # outside the red mask and its outline the picture below the banner is the frame itself (JPEG aside):
    # no text is drawn over the part
    marked = (part[..., 2] - np.maximum(part[..., 0], part[..., 1]) > 40) | (part[..., 0] < part[..., 1] - 60)
    assert np.median(np.abs(part - frame)[~marked]) < 6 and not marked.all()


def test_overlay_every_and_limit(broker: Broker, media: dict, tmp_path: Path) -> None:
    results, folder = run_with_overlays(
        broker, media, tmp_path, "--overlay-every", "4", "--overlay-limit", "3"
    )
    saved = sorted(folder.glob("line_*.jpg"))
    assert len(saved) == 3  # bounded
    wanted = sorted(r["frame_id"] for r in results if r["anomalous"] or r["frame_id"] % 4 == 0)
    assert [int(p.stem.split("_")[1]) for p in saved] == wanted[:3]


def test_annotate_puts_the_text_above_and_leaves_the_frame_alone() -> None:
    frame = np.full((40, 60, 3), 128, np.uint8)
    out = annotate(frame, None, ["cam frame 1", "score 1.00 / thr 2.00", "ok"], anomalous=False)
    assert out.shape == (40 + 3 * LINE_H + 6, 60, 3)
    assert np.array_equal(out[-40:], frame)  # no mask: the frame below the banner is untouched
