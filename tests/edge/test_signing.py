"""Signed bundles: edge-keygen makes a pair, edge-export --sign-key signs, the device config names the keys
it trusts. A good signature runs and is reported; a tampered manifest (even with matching hashes), an
unsigned bundle or a stranger's signature is refused when keys are configured; with none configured an
unsigned bundle runs with a warning."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import TypedDict

import pytest

from edge.config import load_config
from edge.service.cli import EXIT_OK, EXIT_STARTUP, main
from edge.service.daemon import StartupError, build
from edge.trust.manifest import BundleError, verify_bundle
from edge.trust.signing import SIGNATURE_NAME, TrustedKeys
from export.cli import main as export_main
from export.keygen import main as keygen_main
from tests.helpers.tiny_bundle import make_tiny_bundle


class Keys(TypedDict):
    key: Path
    pub: Path
    stranger_key: Path
    stranger_pub: Path
    fp: str  # kept a string: a fingerprint's base64 may hold "//", which a Path would fold into "/"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keygen_main(["--out", str(root / "line")]) == 0
        assert keygen_main(["--out", str(root / "stranger")]) == 0
    fingerprint = [ln for ln in out.getvalue().splitlines() if ln.startswith("fingerprint:")][0].split()[-1]
    return {
        "key": root / "line.key",
        "pub": root / "line.pub",
        "stranger_key": root / "stranger.key",
        "stranger_pub": root / "stranger.pub",
        "fp": fingerprint,
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("signed") / "bundle", size=32)


@pytest.fixture
def bundle(tmp_path: Path, pristine: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def sign(bundle: Path, key: Path) -> int:
    with contextlib.redirect_stderr(io.StringIO()):
        return export_main(["--sign-key", str(key), str(bundle)])


def config(tmp_path: Path, bundle: Path, trusted: list[Path]) -> Path:
    video = tmp_path / "parts.avi"
    video.write_bytes(b"x")
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device_id = "sig"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n[model]\nbundle = "{bundle}"\n'
        f"trusted_keys = {json.dumps([str(p) for p in trusted])}\n"
        f'[[cameras]]\nname = "a"\nsource = "{video}"\n',
        encoding="utf-8",
    )
    return path


def check(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--config", str(path), "--check-config", "--no-camera-open"])  # the video is a stub
    return rc, err.getvalue()


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: Keys) -> None:
    assert keys["key"].stat().st_mode & 0o777 == 0o600
    assert keys["fp"].startswith("SHA256:")
    with contextlib.redirect_stderr(io.StringIO()):
        assert keygen_main(["--out", str(keys["key"].with_suffix(""))]) == 2  # never overwrites


def test_a_good_signature_runs_and_names_its_signer(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    assert sign(bundle, keys["key"]) == 0
    assert (bundle / SIGNATURE_NAME).is_file()
    cfg = config(tmp_path, bundle, [keys["pub"]])
    rc, err = check(cfg)
    assert rc == EXIT_OK, err
    assert f"signed by {keys['fp']}" in err
    daemon = build(load_config(cfg))
    try:
        assert daemon.manifest.signer == keys["fp"]  # status payload: tests/edge/test_redaction.py
    finally:
        daemon.backend.close()  # type: ignore[attr-defined]


def test_a_tampered_manifest_with_matching_hashes_is_refused(
    tmp_path: Path, bundle: Path, keys: Keys
) -> None:
    """The attack signing exists for: rewrite manifest and hashes together (here: turn detection off)."""
    assert sign(bundle, keys["key"]) == 0
    doc = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    doc["threshold"]["default"] = 99.0
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    verify_bundle(bundle)  # hashes and numbers alone cannot tell
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP
    assert "does not match manifest.json" in err
    with pytest.raises(StartupError, match="does not match manifest.json"):
        build(load_config(config(tmp_path, bundle, [keys["pub"]])))


def test_a_swapped_model_in_a_signed_bundle_is_refused(bundle: Path, keys: Keys) -> None:
    assert sign(bundle, keys["key"]) == 0
    with open(bundle / "model.fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256 differs"):
        verify_bundle(bundle, trusted_keys=TrustedKeys.load([keys["pub"]]))


def test_unsigned_is_refused_when_keys_are_configured(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP
    assert "not signed" in err and SIGNATURE_NAME in err


def test_a_strangers_signature_is_refused(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    assert sign(bundle, keys["stranger_key"]) == 0
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP
    assert "not in model.trusted_keys" in err


def test_a_forged_signature_file_naming_the_trusted_key_is_refused(
    tmp_path: Path, bundle: Path, keys: Keys
) -> None:
    assert sign(bundle, keys["stranger_key"]) == 0
    sig = json.loads((bundle / SIGNATURE_NAME).read_text(encoding="utf-8"))
    sig["key"] = keys["fp"]  # claims the trusted key; the stranger's signature cannot verify under it
    (bundle / SIGNATURE_NAME).write_text(json.dumps(sig), encoding="utf-8")
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP and "does not match manifest.json" in err


@pytest.mark.parametrize("junk", [b"", b"{}", b"[[[[", b"\xff" * 5000, b'{"schema":1,"algorithm":"ed25519"}'])
def test_a_garbage_signature_file_is_one_line(tmp_path: Path, bundle: Path, keys: Keys, junk: bytes) -> None:
    (bundle / SIGNATURE_NAME).write_bytes(junk)
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "FAILED  model.bundle" in ln]) == 1


def test_a_symlinked_signature_is_refused(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    assert sign(bundle, keys["key"]) == 0
    real = tmp_path / "elsewhere.sig"
    shutil.move(bundle / SIGNATURE_NAME, real)
    (bundle / SIGNATURE_NAME).symlink_to(real)
    rc, err = check(config(tmp_path, bundle, [keys["pub"]]))
    assert rc == EXIT_STARTUP and "symbolic link" in err


def test_unsigned_runs_and_says_so_when_no_keys_are_configured(
    tmp_path: Path, bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="edge.checks")
    daemon = build(load_config(config(tmp_path, bundle, [])))
    try:
        assert daemon.manifest.signer is None
        # an unsigned set-up is a choice: INFO (once per bundle and process), not a WARNING at every start
        assert any("trusted_keys is empty" in r.getMessage() for r in caplog.records if r.levelname == "INFO")
    finally:
        daemon.backend.close()  # type: ignore[attr-defined]


def test_a_bad_trusted_key_file_is_named(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    for bad in (tmp_path / "missing.pub", keys["key"]):  # missing; a private key where a public one belongs
        rc, err = check(config(tmp_path, bundle, [bad]))
        assert rc == EXIT_STARTUP, err
        line = [ln for ln in err.splitlines() if ln.startswith("FAILED  model.bundle: model.trusted_keys")]
        assert len(line) == 1 and str(bad) in line[0], err


def test_results_report_the_signer_and_the_loaded_precision(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    assert sign(bundle, keys["key"]) == 0
    daemon = build(load_config(config(tmp_path, bundle, [keys["pub"]])))
    try:
        model = daemon.api.identity.model  # the model object of every status and result (edge/api.py)
        assert model.signer == keys["fp"]
        assert model.precision == daemon.backend.precision == "fp32"  # type: ignore[attr-defined]
    finally:
        daemon.backend.close()  # type: ignore[attr-defined]


def test_signing_an_existing_bundle_verifies_its_files_first(bundle: Path, keys: Keys) -> None:
    with open(bundle / "model.fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    assert sign(bundle, keys["key"]) == 2  # a modified bundle is never signed
    assert not (bundle / SIGNATURE_NAME).exists()
