"""``--init-config`` picks the precision the bundle and machine suit, takes the broker's host, port and TLS
files, and a missing precision's error suggests only a fix the model kind allows (issue 30, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import load_config
from edge.service.cli import EXIT_OK, EXIT_STARTUP
from edge.service.init_config import config_text
from edge.trust import precision_hints
from edge.trust.precision_hints import missing_precision_fix, suited_precision
from tests.helpers.cli import run_edge as run
from tests.helpers.tiny_bundle import make_tiny_bundle

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("p") / "bundle", size=32, precisions=("fp32", "int8"))


def as_kind(bundle: Path, kind: str) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["kind"] = kind
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_on_cpu_init_config_writes_fp32_even_when_the_bundle_has_int8(
    int8_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_hints, "tensorrt_present", lambda: False)
    path = tmp_path / "edge.toml"
    rc, _, err = run("--init-config", str(path), "--bundle", str(int8_bundle))
    assert rc == EXIT_OK, err
    config = load_config(path)
    assert config.model.precision == "fp32" and config.model.backend == "onnxruntime"


def test_under_tensorrt_the_fastest_precision_the_bundle_has(int8_bundle: Path) -> None:
    text = config_text(int8_bundle, "0", "d", tensorrt=True)
    assert 'precision = "int8"' in text and 'backend = "tensorrt"' in text
    assert suited_precision(["fp32", "fp16"], tensorrt=True) == "fp16"  # a PatchCore bundle on a GPU
    assert suited_precision(["fp32"], tensorrt=True) == "fp32"
    assert suited_precision(["fp32", "fp16", "int8"], tensorrt=False) == "fp32"


def test_broker_host_port_and_tls_files(int8_bundle: Path, tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    path = tmp_path / "edge.toml"
    argv = [
        "--init-config",
        str(path),
        "--bundle",
        str(int8_bundle),
        "--host",
        "broker.line1",
        "--port",
        "8884",
    ]
    rc, out, err = run(*argv, "--ca-file", str(ca), "--cert-file", str(cert), "--key-file", str(key))
    assert rc == EXIT_OK, err
    assert "broker broker.line1:8884 with TLS" in out
    mqtt = load_config(path).mqtt
    assert (mqtt.host, mqtt.port) == ("broker.line1", 8884)
    assert mqtt.tls is not None
    assert (mqtt.tls.ca_file, mqtt.tls.cert_file, mqtt.tls.key_file) == (
        ca.resolve(),
        cert.resolve(),
        key.resolve(),
    )

    plain = tmp_path / "plain.toml"
    assert run("--init-config", str(plain), "--host", "10.0.0.2")[0] == EXIT_OK
    assert (load_config(plain).mqtt.port, load_config(plain).mqtt.tls) == (1883, None)
    tls_default = tmp_path / "tls.toml"
    assert run("--init-config", str(tls_default), "--ca-file", str(ca))[0] == EXIT_OK
    assert load_config(tls_default).mqtt.port == 8883


def test_a_patchcore_bundle_is_never_told_to_export_int8(tmp_path: Path) -> None:
    bundle = as_kind(make_tiny_bundle(tmp_path / "bundle", size=32), "patchcore")
    path = tmp_path / "edge.toml"
    assert run("--init-config", str(path), "--bundle", str(bundle))[0] == EXIT_OK
    assert load_config(path).model.precision == "fp32"
    rc, _, err = run(
        "--config", str(path), "--set", "model.precision=int8", "--check-config", "--no-camera-open"
    )
    assert rc == EXIT_STARTUP
    line = next(x for x in err.splitlines() if x.startswith("FAILED  model.bundle"))
    assert "bundle has no int8 model (it has: fp32)" in line
    assert "PatchCore bundles are never int8" in line and 'set model.precision = "fp32"' in line
    assert "export it with edge-export --int8" not in err


def test_other_kinds_are_offered_both_fixes() -> None:
    fix = missing_precision_fix("gtrans", "int8", ["fp32"])
    assert fix == 'set model.precision = "fp32", or export it with edge-export --int8'
    assert "edge-export --fp16" in missing_precision_fix("patchcore", "int8", ["fp32"])
    assert missing_precision_fix("patchcore", "int8", ["fp32", "fp16"]).endswith('model.precision = "fp16"')
