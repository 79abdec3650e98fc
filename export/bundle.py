"""Files -> a verified bundle, written atomically: a failed export leaves no partial bundle and the old one
intact.

Everything is written into a temp directory next to ``--out`` (same filesystem, so renames are atomic);
only after the manifest is written and ``edge.trust.manifest.verify_bundle`` accepts the result does it
replace
the old bundle: old renamed away, new renamed in, old deleted. If the second rename fails the old bundle
is put back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType

from edge.capture.preprocess import Preprocess
from edge.trust.manifest import MANIFEST_NAME, Manifest, PrecisionEntry, sha256_file, verify_bundle
from edge.trust.signing import (
    SIGNATURE_NAME,
    TrustedKeys,
    load_private_key,
    public_fingerprint,
    signature_document,
)
from edge.util.atomic import write_atomically
from export import ExportError

ENGINES_DIR = "engines"


def model_file(precision: str) -> str:
    return f"model.{precision}.onnx"


def precision_entry(bundle_dir: Path, precision: str, gate: object = None) -> PrecisionEntry:
    """The manifest entry of a model file already written into ``bundle_dir``."""
    name = model_file(precision)
    return PrecisionEntry(file=name, sha256=sha256_file(Path(bundle_dir) / name), gate=gate)  # type: ignore[arg-type]


def exporter_versions() -> dict[str, str]:
    versions = {}
    for dist in ("edge-anomaly", "torch", "onnx", "onnxruntime", "onnxslim"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def input_spec(pre: Preprocess, max_batch: int) -> dict[str, object]:
    return {
        "name": "image",
        "height": pre.height,
        "width": pre.width,
        "color_order": pre.color_order,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "max_batch": max_batch,
        "resize": pre.resize,
        **({} if pre.tiling is None else {"tiling": pre.tiling.to_dict()}),
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """``allow_nan=False``: a manifest holding NaN/Infinity is refused by every device, so never write one."""
    path = Path(bundle_dir) / MANIFEST_NAME
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def sign_manifest(bundle_dir: Path, key_path: Path) -> TrustedKeys:
    """Write ``manifest.sig`` for the bundle's manifest bytes; returns the signing key's public half as the
    only trusted key, so the caller can verify the result the way a device will."""
    key = load_private_key(key_path)
    bundle_dir = Path(bundle_dir)
    data = (bundle_dir / MANIFEST_NAME).read_bytes()
    write_atomically(bundle_dir / SIGNATURE_NAME, signature_document(key, data))
    return TrustedKeys({public_fingerprint(key): key.public_key()})


def sign_existing_bundle(bundle_dir: Path, key_path: Path) -> str:
    """Sign a bundle that is already written (after checking its files); returns the key's fingerprint.

    The files are verified first, so a signature never vouches for a bundle that was already modified.
    """
    verify_bundle(bundle_dir)
    keys = sign_manifest(bundle_dir, key_path)
    return verify_bundle(bundle_dir, trusted_keys=keys).signer or ""


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is a file; give a directory path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(
            f"--out {out} is a non-empty directory without {MANIFEST_NAME}, so it is not a bundle; "
            "edge-export only replaces bundles. Choose another --out or empty that directory."
        )


class StagedBundle:
    """A temp directory that becomes ``out`` on ``commit`` and disappears otherwise.

    Use as a context manager: leaving the block without ``commit`` (an exception, a failed gate) removes
    the temp directory and leaves ``out`` as it was.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out).absolute()
        _check_destination(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        self.path.chmod(0o755)  # mkdtemp makes it 0700; the daemon may run as another user
        self.committed = False

    def __enter__(self) -> StagedBundle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: Manifest, sign_key: Path | None = None) -> Path:
        """Write the manifest (and its signature with ``sign_key``), verify the staged bundle the way a device
        will, then swap it in for ``out``."""
        write_manifest(self.path, manifest)
        keys = sign_manifest(self.path, sign_key) if sign_key is not None else None
        verify_bundle(self.path, trusted_keys=keys)
        _check_destination(self.out)  # it may have changed while we exported
        old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
        had_old = self.out.exists()
        if had_old:
            os.rename(self.out, old)
        try:
            os.rename(self.path, self.out)
        except OSError:
            if had_old:
                os.rename(old, self.out)
            raise
        self.committed = True
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
        return self.out
