"""edge-run's configuration: file < env < CLI, unknown keys and bad values named, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import CameraConfig, ConfigError, EdgeConfig, load_config, parse_overrides
from edge.service.cli import EXIT_CONFIG, main
from tests.helpers.tiny_bundle import make_tiny_bundle

BASE = """
device_id = "press-7"
[mqtt]
host = "broker.local"
port = 1884
[model]
bundle = "/opt/bundles/bottle"
[[cameras]]
name = "line1"
source = "rtsp://cam/stream"
"""


pytestmark = pytest.mark.usefixtures("clean_env")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.mqtt.port == 1884 and cfg.mqtt.host == "broker.local"
    assert cfg.mqtt.protocol == "5" and cfg.mqtt.qos_result == 1
    assert cfg.topic_prefix == "edge-anomaly/press-7"
    assert cfg.client_id == "edge-anomaly-press-7"
    assert cfg.cameras[0].publish_mask == "anomalous" and cfg.cameras[0].enabled
    assert cfg.model.precision == "fp32" and cfg.model.backend == "onnxruntime"


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE)
    monkeypatch.setenv("EDGE_MQTT__PORT", "1999")
    monkeypatch.setenv("EDGE_MQTT__KEEPALIVE", "45")
    monkeypatch.setenv("EDGE_MODEL__PRECISION", "int8")
    cfg = load_config(path)
    assert cfg.mqtt.port == 1999  # env beats file
    assert cfg.mqtt.host == "broker.local"  # nested merge keeps the file's other keys
    assert cfg.mqtt.keepalive == 45 and cfg.model.precision == "int8"
    cfg = load_config(path, ["mqtt.port=2000", "model.precision=fp16"])
    assert cfg.mqtt.port == 2000 and cfg.model.precision == "fp16"  # CLI beats env
    assert cfg.mqtt.keepalive == 45


def test_env_json_for_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EDGE_CAMERAS", json.dumps([{"name": "a", "source": "0"}, {"name": "b", "source": "1"}])
    )
    cfg = load_config(write(tmp_path, BASE))
    assert [c.name for c in cfg.cameras] == ["a", "b"]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[[cameras]]\nname = "c2"\nsource = "x.avi"\nfsp = 5\n', "cameras[1].fsp: unknown key"),
        ("[health]\nwatchdgo = true\n", "health.watchdgo: unknown key"),
        ('colour = "red"\n', "colour: unknown key"),
        ('[[cameras]]\nname = "c2"\nsource = "x.avi"\nfps = -3\n', "cameras[1].fps"),
        ('[[cameras]]\nname = "a/b"\nsource = "x.avi"\n', "not topic-safe"),
        ('[[cameras]]\nname = "line1"\nsource = "x.avi"\n', "already used by cameras[0]"),
        ('[[cameras]]\nname = "c2"\nsource = "x.avi"\nroi = [0, 0, 0, 10]\n', "cameras[1].roi"),
        (
            '[[cameras]]\nname = "c2"\nsource = "x.avi"\npublish_mask = "sometimes"\n',
            "cameras[1].publish_mask",
        ),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path: Path, snippet: str, expected: str) -> None:
    # Top-level keys must come before the first table in TOML.
    text = snippet + BASE if not snippet.startswith("[") else BASE + snippet
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)


def test_mqtt_value_errors(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    for override, expected in [
        ("mqtt.port=70000", "mqtt.port"),
        ("mqtt.protocol=4", "mqtt.protocol"),
        ("mqtt.qos_result=3", "mqtt.qos_result"),
        ("mqtt.topic_prefix=a/#", "wildcards"),
        ("model.backend=tensorflow", "unknown backend 'tensorflow'"),
        ("postprocess.threshold_min=nan", "threshold_min"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(path, [override])
        assert expected in str(err.value), override


def test_protocol_accepts_number_five_and_311(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE.replace("port = 1884", "port = 1884\nprotocol = 5")))
    assert cfg.mqtt.protocol == "5"
    cfg = load_config(write(tmp_path, BASE.replace("port = 1884", 'port = 1884\nprotocol = "3.1.1"')))
    assert cfg.mqtt.protocol == "3.1.1"


def test_unknown_nested_env_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MQTT__PRT", "1")
    with pytest.raises(ConfigError, match=r"mqtt\.prt: unknown key"):
        load_config(write(tmp_path, BASE))


def test_password_and_password_file_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either password or password_file"):
        load_config(write(tmp_path, BASE), ["mqtt.password=x", "mqtt.password_file=/run/secret"])


def test_validators_do_no_io(tmp_path: Path) -> None:
    """Paths that do not exist are fine at validation time; they are opened when used."""
    cfg = load_config(
        write(tmp_path, BASE),
        ["mqtt.password_file=/nonexistent/secret", 'mqtt.tls={"ca_file": "/nonexistent/ca.pem"}'],
    )
    assert cfg.mqtt.password_file == Path("/nonexistent/secret")
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == Path("/nonexistent/ca.pem")


def test_overrides_parser() -> None:
    assert parse_overrides(["mqtt.port=1884", "a.b.c=x=y", 'cameras=[{"name": "a"}]']) == {
        "mqtt": {"port": "1884"},
        "a": {"b": {"c": "x=y"}},
        "cameras": [{"name": "a"}],
    }
    for bad in ["noequals", "=1", "a..b=1", "x=[1,"]:
        with pytest.raises(ConfigError):
            parse_overrides([bad])


def test_every_field_has_a_description() -> None:
    def walk(model: type[BaseModel], where: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{where}{name}")
        return missing

    from edge.config import HealthConfig, ModelConfig, MqttConfig, PostprocessConfig, TlsConfig

    missing = []
    for model in (
        EdgeConfig,
        MqttConfig,
        TlsConfig,
        ModelConfig,
        PostprocessConfig,
        HealthConfig,
        CameraConfig,
    ):
        missing += walk(model, model.__name__ + ".")
    assert missing == []


# --- through the CLI ------------------------------------------------------------------------------------


def test_check_config_prints_effective_config_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_MQTT__PASSWORD", "s3cret-from-env")
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    path = write(
        tmp_path,
        BASE.replace("port = 1884", 'port = 1884\nusername = "edge"\npassword = "s3cret-file"').replace(
            "/opt/bundles/bottle", str(bundle)
        ),
    )
    rc = main(
        [
            "--config",
            str(path),
            "--check-config",
            "--verbose",
            "--no-camera-open",
            "--set",
            "mqtt.qos_result=0",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out.out)
    assert doc["mqtt"]["password"] == "***"
    assert doc["mqtt"]["username"] == "edge"
    assert doc["mqtt"]["qos_result"] == 0
    assert doc["mqtt"]["effective_topic_prefix"] == "edge-anomaly/press-7"
    assert "s3cret" not in out.out and "s3cret" not in out.err


def test_cli_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE + "fsp = 3\n")  # lands in [[cameras]] (the last table)
    rc = main(["--config", str(path), "--check-config"])
    err = capsys.readouterr().err
    assert rc == EXIT_CONFIG
    assert "cameras[0].fsp: unknown key" in err


def test_cli_exit_2_on_bad_value_without_echoing_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE)
    rc = main(["--config", str(path), "--set", "mqtt.password=[1]", "--set", "mqtt.port=0"])
    err = capsys.readouterr().err
    assert rc == EXIT_CONFIG
    assert "mqtt.port" in err and "mqtt.password" in err
    assert "[1]" not in err


def test_table_level_errors_never_echo_the_password(tmp_path: Path) -> None:
    text = BASE.replace("port = 1884", 'port = 1884\npassword = "hunter2-secret"\npassword_file = "/run/pw"')
    text += '[[cameras]]\nname = "line1"\nsource = "0"\n'  # duplicate name: a top-level (whole config) error
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "either password or password_file" in message
    assert "hunter2" not in message
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text.replace('password_file = "/run/pw"', "")))
    assert "already used by cameras[0]" in str(err.value) and "hunter2" not in str(err.value)


def test_cli_exit_2_on_unreadable_or_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml"), "--check-config"]) == EXIT_CONFIG
    assert "cannot read config file" in capsys.readouterr().err
    assert main(["--config", str(write(tmp_path, "[mqtt\nport=1")), "--check-config"]) == EXIT_CONFIG
    assert "not valid TOML" in capsys.readouterr().err


def test_cli_exit_2_when_model_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[cameras]]\nname = "a"\nsource = "0"\n')
    assert main(["--config", str(path), "--check-config"]) == EXIT_CONFIG
    assert "model: Field required" in capsys.readouterr().err
