"""``edge-run --check-config`` verifies everything a start would and names each problem; secrets warnings.

install.sh restarts the service only when this passes, so a 0 here must mean a start would get as far as
the broker: bundle (hashes, signature, numbers), password and TLS files readable, camera sources parse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import load_config
from edge.service.cli import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP
from edge.util.redact import redact
from tests.helpers.cli import run_edge as run
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("check") / "bundle", size=32)


def write(tmp_path: Path, bundle: Path, mqtt: str = "", source: str | None = None, mode: int = 0o600) -> Path:
    video = tmp_path / "parts.avi"
    if not video.exists():  # a real video: --check-config opens each camera and reads a frame
        write_video(video, part_sequence(2, 2, size=32, seed=1)[0])
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device_id = "chk"\n[mqtt]\nhost = "127.0.0.1"\n{mqtt}\n[model]\nbundle = "{bundle}"\n'
        f'[[cameras]]\nname = "a"\nsource = "{source or video}"\n',
        encoding="utf-8",
    )
    path.chmod(mode)
    return path


def test_all_ok(tmp_path: Path, bundle: Path) -> None:
    rc, out, err = run("--config", str(write(tmp_path, bundle)), "--check-config", "--verbose")
    assert rc == EXIT_OK, err
    assert json.loads(out)["device_id"] == "chk"
    assert "ok      model.bundle" in err and "ok      cameras[0].source (a)" in err and "FAILED" not in err


def test_a_missing_bundle_fails(tmp_path: Path) -> None:
    rc, _, err = run("--config", str(write(tmp_path, tmp_path / "nope")), "--check-config")
    assert rc == EXIT_STARTUP
    assert "FAILED  model.bundle:" in err


def test_a_missing_password_file_fails_by_name(tmp_path: Path, bundle: Path) -> None:
    mqtt = f'username = "edge"\npassword_file = "{tmp_path / "missing-pw"}"'
    rc, _, err = run("--config", str(write(tmp_path, bundle, mqtt)), "--check-config")
    assert rc == EXIT_STARTUP
    assert "FAILED  mqtt.password_file: cannot read" in err


def test_unreadable_tls_files_fail_each_by_name(tmp_path: Path, bundle: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    mqtt = (
        f'[mqtt.tls]\nca_file = "{ca}"\ncert_file = "{tmp_path / "no.crt"}"\n'
        f'key_file = "{tmp_path / "no.key"}"'
    )
    rc, _, err = run("--config", str(write(tmp_path, bundle, mqtt)), "--check-config")
    assert rc == EXIT_STARTUP
    assert "ok      mqtt.tls.ca_file" in err
    assert "FAILED  mqtt.tls.cert_file" in err and "FAILED  mqtt.tls.key_file" in err
    assert "2 check(s) FAILED" in err


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("/no/such/video.avi", "no such file"),
        ("rtsp://admin:pw@cam:99999/x", "not a valid URL"),
        ("rtsp:///x", "no host"),
    ],
)
def test_sources_that_cannot_open_fail(tmp_path: Path, bundle: Path, source: str, problem: str) -> None:
    rc, out, err = run("--config", str(write(tmp_path, bundle, source=source)), "--check-config")
    assert rc == EXIT_STARTUP
    assert "FAILED  cameras[0].source (a)" in err and problem in err
    assert ":pw@" not in out + err


def test_rtsp_password_is_redacted_in_check_config(tmp_path: Path, bundle: Path) -> None:
    source = "rtsp://admin:Zx9-secret@10.1.2.3:554/h264"
    config = str(write(tmp_path, bundle, source=source))
    rc, out, err = run(
        "--config", config, "--check-config", "--no-camera-open", "--verbose"
    )  # no camera there
    assert rc == EXIT_OK, err
    assert "Zx9-secret" not in out + err
    assert json.loads(out)["cameras"][0]["source"] == "rtsp://***@10.1.2.3:554/h264"
    assert load_config(tmp_path / "edge.toml").cameras[0].source == source  # OpenCV still gets the real URL


def test_password_on_the_command_line_warns(tmp_path: Path, bundle: Path) -> None:
    rc, out, err = run(
        "--config", str(write(tmp_path, bundle)), "--check-config", "--set", "mqtt.password=hunter2"
    )
    assert rc == EXIT_OK
    assert "--set mqtt.password=" in err and "puts the secret on the command line" in err
    assert "hunter2" not in out + err


def test_world_readable_secrets_warn(tmp_path: Path, bundle: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    rc, _, err = run("--config", str(write(tmp_path, bundle, f'password_file = "{pw}"')), "--check-config")
    assert rc == EXIT_OK and f"mqtt.password_file {pw} is readable by every user" in err
    pw.chmod(0o600)
    rc, _, err = run("--config", str(write(tmp_path, bundle, f'password_file = "{pw}"')), "--check-config")
    assert rc == EXIT_OK and "readable by every user" not in err
    config = write(tmp_path, bundle, 'password = "inline"', mode=0o644)
    rc, _, err = run("--config", str(config), "--check-config")
    assert rc == EXIT_OK and "holds mqtt.password and is readable by every user" in err


@pytest.mark.parametrize("name", ["EDGE_DEVICEID", "EDGE_MQTT__PROT", "EDGE_MODEL__TRUSTED_KEYS__X"])
def test_an_env_variable_naming_no_key_fails_like_an_unknown_key(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "x")
    rc, _, err = run("--config", str(write(tmp_path, bundle)), "--check-config")
    assert rc == EXIT_CONFIG
    assert f"(environment variable {name})" in err


def test_metrics_listen_on_loopback_by_default(tmp_path: Path, bundle: Path) -> None:
    assert load_config(write(tmp_path, bundle)).health.metrics_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("rtsp://u:p%40ss@h/x", "p%40ss"),
        ("rtsp://admin:p@ss/w0rd@10.0.0.5/s", "p@ss/w0rd"),
        ("rtspsrc location=rtsp://cam/x user-id=admin user-pw=hunter2 ! decodebin", "hunter2"),
        ("cannot open 'http://me:topsecret@cam/mjpg' (OpenCV)", "topsecret"),
    ],
)
def test_redact(text: str, hidden: str) -> None:
    assert hidden not in redact(text)
    assert redact("rtsp://cam/stream") == "rtsp://cam/stream"


def test_sparkplug_is_checked_when_enabled(tmp_path: Path, bundle: Path) -> None:
    path = write(tmp_path, bundle)
    path.write_text(path.read_text() + '[sparkplug]\nenabled = true\ngroup_id = "line1"\n', encoding="utf-8")
    rc, _, err = run("--config", str(path), "--check-config")
    assert rc == EXIT_OK, err
    assert "ok      sparkplug: spBv1.0/line1/+/chk (protobuf " in err
