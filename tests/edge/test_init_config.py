"""``edge-run --init-config PATH``: a commented first config that passes validation and every check as
written."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from edge.config import load_config
from edge.service.cli import EXIT_CONFIG, EXIT_OK, main
from tests.helpers.cli import run_edge as run
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")


def test_written_config_validates_and_passes_every_check(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    video = write_video(tmp_path / "line.avi", part_sequence(2, 2, size=32, seed=1)[0])  # opened by the check
    path = tmp_path / "edge.toml"
    rc, out, err = run("--init-config", str(path), "--bundle", str(bundle), "--source", str(video))
    assert rc == EXIT_OK, err
    assert f"wrote {path}" in out and "--check-config" in out
    text = path.read_text(encoding="utf-8")
    assert text.count("#") >= 10  # commented
    config = load_config(path)
    assert config.mqtt.host == "localhost" and config.mqtt.port == 1883 and config.mqtt.tls is None
    assert config.model.bundle == bundle.resolve()
    assert [c.source for c in config.cameras] == [str(video.resolve())]
    assert config.cameras[0].loop is False
    rc, _, err = run("--config", str(path), "--check-config")
    assert rc == EXIT_OK, err
    assert "FAILED" not in err


def test_signed_bundle_and_its_key(tmp_path: Path) -> None:
    from export.bundle import sign_existing_bundle
    from export.keygen import write_key_pair

    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    key, pub, _ = write_key_pair(tmp_path / "keys" / "line1")
    sign_existing_bundle(bundle, key)
    path = tmp_path / "edge.toml"
    rc, _, err = run("--init-config", str(path), "--bundle", str(bundle), "--trusted-key", str(pub))
    assert rc == EXIT_OK, err
    assert load_config(path).model.trusted_keys == [pub.resolve()]
    rc, _, err = run("--config", str(path), "--check-config", "--no-camera-open")  # no camera 0 here
    assert rc == EXIT_OK and "signed by SHA256:" in err and "WARNING" not in err


def test_camera_index_default_and_missing_bundle_note(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    rc, out, _ = run("--init-config", str(path), "--bundle", str(tmp_path / "nothing-yet"))
    assert rc == EXIT_OK
    assert "holds no bundle yet" in out
    config = load_config(path)
    assert config.cameras[0].source == "0" and config.model.precision == "fp32"
    assert "loop" not in path.read_text(encoding="utf-8")  # a camera does not end


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("# mine\n", encoding="utf-8")
    rc, _, err = run("--init-config", str(path))
    assert rc == EXIT_CONFIG
    assert "already exists" in err
    assert path.read_text(encoding="utf-8") == "# mine\n"


def test_init_options_without_init_config_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["--config", str(tmp_path / "edge.toml"), "--bundle", "b"])
    assert exc.value.code == 2 and "only go with --init-config" in err.getvalue()
