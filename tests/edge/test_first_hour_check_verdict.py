"""``--check-config`` says its verdict first, then one line per check; the config JSON only with --verbose
(issue 30, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.service.cli import EXIT_OK, EXIT_STARTUP
from tests.helpers.cli import run_edge as run
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")


def config(tmp_path: Path, source: str | None = None) -> Path:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    video = write_video(tmp_path / "v.avi", part_sequence(2, 2, size=32, seed=1)[0])
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device_id = "v"\n[mqtt]\nhost = "127.0.0.1"\n[model]\nbundle = "{bundle}"\n'
        f'trusted_keys = []\n[[cameras]]\nname = "a"\nsource = "{source or video}"\n'
    )
    return path


def own_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("ts=")]  # log lines aside


def test_the_verdict_comes_first_and_the_json_only_with_verbose(tmp_path: Path) -> None:
    path = config(tmp_path)
    rc, out, err = run("--config", str(path), "--check-config")
    assert rc == EXIT_OK, err
    lines = own_lines(err)
    assert lines[0] == "edge-run: all 3 checks ok" and all(x.startswith("ok ") for x in lines[1:]), lines
    assert out == ""  # no 90 lines of JSON before (or after) the verdict
    rc, out, err = run("--config", str(path), "--check-config", "--verbose")
    assert rc == EXIT_OK and json.loads(out)["device_id"] == "v"
    assert own_lines(err)[0] == "edge-run: all 3 checks ok"


def test_a_failed_check_is_the_first_line(tmp_path: Path) -> None:
    rc, out, err = run("--config", str(config(tmp_path, source=str(tmp_path / "none.avi"))), "--check-config")
    assert rc == EXIT_STARTUP and out == ""
    lines = own_lines(err)
    assert lines[0] == "edge-run: 1 check(s) FAILED: cameras[0].source (a)", lines
    assert lines[-1].startswith("FAILED  cameras[0].source (a)")
