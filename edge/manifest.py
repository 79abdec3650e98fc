"""The bundle manifest: the contract between ``export/`` (which writes it) and the daemon (which reads it).

Versioned with ``schema_version``. The daemon refuses a bundle whose files do not match the sha256 sums
recorded here, before anything runs. Score normalisation and the threshold live here, never in the graph,
so they can change without rebuilding an engine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.preprocess import Preprocess

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


class BundleError(RuntimeError):
    """A bundle is missing, corrupt, tampered with or of an unknown schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelInfo(_Strict):
    name: str = Field(description="human name, e.g. 'gtrans-bottle'")
    kind: str = Field(description="model family: gtrans, anovit or conv-ae")
    checkpoint_sha256: str
    config: Dict[str, object] = Field(default_factory=dict)


class InputSpec(_Strict):
    """The graph input: uint8 NHWC in ``color_order``; mean/std are applied inside the graph."""

    name: str = "image"
    height: int = Field(ge=16)
    width: int = Field(ge=16)
    layout: str = "NHWC"
    dtype: str = "uint8"
    color_order: str = "RGB"
    mean: List[float]
    std: List[float]
    max_batch: int = Field(default=8, ge=1)
    resize: str = "stretch"  # bundles from before letterbox existed stretched each axis

    def preprocess(self) -> Preprocess:
        return Preprocess(
            height=self.height,
            width=self.width,
            color_order=self.color_order,
            mean=tuple(self.mean),  # type: ignore[arg-type]
            std=tuple(self.std),  # type: ignore[arg-type]
            resize=self.resize,
        )


class OutputSpec(_Strict):
    score: str = "score"  # [N] float32, raw (un-normalised)
    anomaly_map: str = "anomaly_map"  # [N, H, W] float32 at the input size, raw, same units as score


class ScoreNormalization(_Strict):
    """normalised = (raw - offset) / scale, applied to the score and to every map pixel alike."""

    offset: float
    scale: float = Field(gt=0)
    method: str = "good-quantiles"
    n_images: int = Field(default=0, ge=0)


class ThresholdSpec(_Strict):
    default: float = Field(description="threshold on the normalised score")
    method: str = "false-alarm-rate"
    false_alarm_rate: Optional[float] = None


class GateResult(_Strict):
    passed: bool
    checked: bool = True
    metrics: Dict[str, float] = Field(default_factory=dict)
    limits: Dict[str, float] = Field(default_factory=dict)


class PrecisionEntry(_Strict):
    file: str
    sha256: str
    gate: Optional[GateResult] = None


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    input: InputSpec
    outputs: OutputSpec = OutputSpec()
    normalization: ScoreNormalization
    threshold: ThresholdSpec
    precisions: Dict[str, PrecisionEntry]
    opset: int
    exporter: Dict[str, str] = Field(default_factory=dict)
    gate_disabled: bool = False
    created_at: str = ""
    files: Dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 of other files")

    def model_id(self) -> str:
        return f"{self.model.name}@{self.model.checkpoint_sha256[:12]}"

    def normalize(self, raw: float) -> float:
        return (raw - self.normalization.offset) / self.normalization.scale


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and schema-check ``manifest.json`` without touching the model files."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} not found. Make one with edge-export.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle.") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this runtime reads version {SCHEMA_VERSION}. "
            "Re-export the bundle with a matching edge-anomaly version."
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path} does not match the manifest schema:\n{exc}") from exc


def verify_bundle(bundle_dir: Path, precisions: Optional[List[str]] = None) -> Manifest:
    """Read the manifest and check the sha256 of every listed file (or of the given precisions only)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    wanted = manifest.precisions if precisions is None else {p: precision_entry(manifest, p) for p in precisions}
    to_check = {entry.file: entry.sha256 for entry in wanted.values()}
    to_check.update(manifest.files)
    for rel, expected in sorted(to_check.items()):
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing (listed in {MANIFEST_NAME}).")
        found = sha256_file(path)
        if found != expected:
            raise BundleError(
                f"bundle file {path} does not match its manifest: sha256 {found[:16]}…, expected "
                f"{expected[:16]}…. The bundle was modified or truncated; copy it again from the export."
            )
    return manifest


def precision_entry(manifest: Manifest, precision: str) -> PrecisionEntry:
    if precision not in manifest.precisions:
        have = ", ".join(sorted(manifest.precisions)) or "none"
        raise BundleError(f"bundle has no {precision} model (it has: {have}); export it with edge-export --{precision}.")
    return manifest.precisions[precision]
