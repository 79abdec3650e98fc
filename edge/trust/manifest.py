"""The bundle manifest: the contract between ``export/`` (which writes it) and the daemon (which reads it).

Versioned with ``schema_version``. The daemon refuses a bundle whose files do not match the sha256 sums
recorded here, before anything runs. Score normalisation and the threshold live here, never in the graph,
so they can change without rebuilding an engine.

The manifest is untrusted input until it is verified, and a bad one must stop the daemon (exit 3) rather
than silently switch detection off. So, fail closed:

- it is read through a descriptor of the bundle directory, never by following a symbolic link, and is
  capped in size (``MAX_MANIFEST_BYTES``) and nesting depth (``MAX_DEPTH``);
- when trusted keys are configured its exact bytes must carry a valid signature (:mod:`edge.trust.signing`)
  before they are even parsed;
- JSON ``NaN``/``Infinity``, numbers that overflow to infinity and duplicate keys are refused; every number
  is typed strictly (``true`` is not a number, ``"4"`` is not a number) and ranged (see
  :class:`Manifest` for the threshold's range, which follows from how the normalisation is calibrated);
- file entries are plain file names (no ``/``, ``\\``, ``..``, absolute paths or NUL), opened relative to
  the bundle directory without following links, and must be regular files, so nothing outside the bundle
  is ever opened or hashed; a mismatch says which file, never any bits of its hash;
- every error is one :class:`BundleError` line that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from typing_extensions import Annotated

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import SCALE_MAX, SCALE_MIN, TILE_MAX, TILE_MIN, Tiling
from edge.trust.bundle_files import (
    FILE_NAME,
    MANIFEST_NAME,
    RESERVED_NAMES,
    BundleDir,
    BundleError,
)
from edge.trust.bundle_id import behaviour_digest
from edge.trust.signing import SIGNATURE_NAME, SignatureError, TrustedKeys

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
MAX_MANIFEST_BYTES = 1 << 20  # real manifests are a few KiB
MAX_DEPTH = 32  # nesting of JSON objects/arrays; real manifests use 4
MAX_FILES = 64
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The threshold is in normalised units: (raw - median of good scores) / (q99 of good scores - median), as
# calibration.scores computes it. 0 is the median good part, 1 the worst 1 % of good parts. A threshold
# below 0 would flag more than half of all good parts; one above THRESHOLD_MAX good spreads would let
# through any defect a model can score. Both are refused rather than run.
THRESHOLD_MIN = 0.0
THRESHOLD_MAX = 100.0
RAW_LIMIT = 1e9  # raw score units (offset, scale): far beyond any model's output, below float32 overflow
# calibration.scores.scale_floor: the smallest scale calibration ever writes for a given offset
REL_SCALE_FLOOR = 1e-3
ABS_SCALE_FLOOR = 1e-8


Finite = Annotated[float, Field(allow_inf_nan=False)]
Raw = Annotated[float, Field(allow_inf_nan=False, ge=-RAW_LIMIT, le=RAW_LIMIT)]
Text = Annotated[str, Field(max_length=256)]


class _Strict(BaseModel):
    # strict: JSON true is not 1, "4" is not 4; allow_inf_nan=False: no float field holds NaN or infinity
    model_config = ConfigDict(
        extra="forbid", frozen=True, protected_namespaces=(), strict=True, allow_inf_nan=False
    )


def _plain_file_name(value: str) -> str:
    if not FILE_NAME.match(value) or value in RESERVED_NAMES:
        raise ValueError(
            f"file entry {value[:80]!r} is not a plain file name inside the bundle (letters, digits, '.', "
            f"'_', "
            "'-'; no '/', '\\', '..' or absolute path); re-export the bundle"
        )
    return value


def _sha256_hex(value: str) -> str:
    if not SHA256_HEX.match(value):
        raise ValueError("sha256 must be 64 lower-case hex digits")
    return value


class ModelInfo(_Strict):
    name: Text = Field(description="human name, e.g. 'gtrans-bottle'")
    kind: Annotated[str, Field(max_length=64)] = Field(description="model family: gtrans, anovit or conv-ae")
    checkpoint_sha256: str
    config: Dict[str, Any] = Field(default_factory=dict)

    @field_validator("checkpoint_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _sha256_hex(value)


class TilingSpec(_Strict):
    """Native-scale tiles (:mod:`edge.capture.tiling`): the region is scaled by ``scale`` and cut into
    ``tile`` px squares, the model input, overlapping by ``overlap`` px. The daemon uses exactly this."""

    tile: int = Field(ge=TILE_MIN, le=TILE_MAX)
    overlap: int = Field(default=0, ge=0, le=TILE_MAX // 2)
    scale: Annotated[float, Field(allow_inf_nan=False, ge=SCALE_MIN, le=SCALE_MAX)] = 1.0

    @model_validator(mode="after")
    def _overlap_under_half(self) -> TilingSpec:
        if self.overlap > self.tile // 2:
            raise ValueError(
                f"tiling.overlap {self.overlap} is more than half the tile ({self.tile}); re-export the "
                "bundle"
            )
        return self

    def tiling(self) -> Tiling:
        return Tiling(tile=self.tile, overlap=self.overlap, scale=self.scale)


class InputSpec(_Strict):
    """The graph input: uint8 NHWC in ``color_order``; mean/std are applied inside the graph."""

    name: Text = "image"
    height: int = Field(ge=16, le=8192)
    width: int = Field(ge=16, le=8192)
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: List[Annotated[float, Field(allow_inf_nan=False, ge=-1000.0, le=1000.0)]] = Field(
        min_length=3, max_length=3
    )
    std: List[Annotated[float, Field(allow_inf_nan=False, ge=1e-6, le=1000.0)]] = Field(
        min_length=3, max_length=3
    )
    max_batch: int = Field(default=8, ge=1, le=1024)
    resize: Literal["stretch", "letterbox"] = "stretch"  # bundles from before letterbox stretched each axis
    tiling: Optional[TilingSpec] = None  # absent: one resized image per region (whole-image bundles)

    @model_validator(mode="after")
    def _tile_is_the_input(self) -> InputSpec:
        if self.tiling is not None and (self.tiling.tile, self.tiling.tile) != (self.height, self.width):
            raise ValueError(
                f"tiling.tile {self.tiling.tile} differs from the model input {self.height}x{self.width} "
                "(a tile is one model input); re-export the bundle"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_absent_tiling(self, handler: SerializerFunctionWrapHandler) -> Dict[str, Any]:
        """A whole-image bundle's input dumps as it did before tiling existed: the same manifest bytes for
        older runtimes, the same bundle id (:mod:`edge.trust.bundle_id`)."""
        out: Dict[str, Any] = handler(self)
        if out.get("tiling") is None:
            out.pop("tiling", None)
        return out

    def preprocess(self) -> Preprocess:
        return Preprocess(
            height=self.height,
            width=self.width,
            color_order=self.color_order,
            mean=tuple(self.mean),  # type: ignore[arg-type]
            std=tuple(self.std),  # type: ignore[arg-type]
            resize=self.resize,
            tiling=None if self.tiling is None else self.tiling.tiling(),
        )


class OutputSpec(_Strict):
    score: Text = "score"  # [N] float32, raw (un-normalised)
    anomaly_map: Text = "anomaly_map"  # [N, H, W] float32 at the input size, raw, same units as score


class ScoreNormalization(_Strict):
    """normalised = (raw - offset) / scale, applied to the score and to every map pixel alike.

    ``good-quantiles`` (calibration.scores): offset = median raw good score, scale = q99 - median, never below
    the calibration's floor for that offset (a smaller scale cannot come from calibration, and it would make
    every pixel look anomalous).
    """

    offset: Raw
    scale: Raw = Field(gt=0)
    method: Literal["good-quantiles"] = "good-quantiles"
    n_images: int = Field(default=0, ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _scale_from_calibration(self) -> ScoreNormalization:
        floor = max(REL_SCALE_FLOOR * abs(self.offset), ABS_SCALE_FLOOR)
        if self.scale < floor * (1 - 1e-9):
            raise ValueError(
                f"normalization.scale {self.scale:g} is below the calibration floor {floor:g} for offset "
                f"{self.offset:g}; re-calibrate the bundle"
            )
        return self


class ThresholdSpec(_Strict):
    default: Finite = Field(description="threshold on the normalised score")
    method: Annotated[str, Field(max_length=64)] = "false-alarm-rate"
    false_alarm_rate: Optional[Annotated[float, Field(allow_inf_nan=False, gt=0.0, lt=0.5)]] = None

    @field_validator("default")
    @classmethod
    def _in_calibrated_range(cls, value: float) -> float:
        if not THRESHOLD_MIN <= value <= THRESHOLD_MAX:
            raise ValueError(
                f"threshold.default {value:g} is outside [{THRESHOLD_MIN:g}, {THRESHOLD_MAX:g}] normalised "
                f"units "
                "(0 = median good part, 1 = worst 1 % of good parts); re-calibrate the bundle"
            )
        return value


class GateResult(_Strict):
    passed: bool
    checked: bool = True
    metrics: Dict[Text, Finite] = Field(default_factory=dict)
    limits: Dict[Text, Finite] = Field(default_factory=dict)


class PrecisionEntry(_Strict):
    file: str
    sha256: str
    gate: Optional[GateResult] = None

    @field_validator("file")
    @classmethod
    def _name(cls, value: str) -> str:
        return _plain_file_name(value)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _sha256_hex(value)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    input: InputSpec
    outputs: OutputSpec = OutputSpec()
    normalization: ScoreNormalization
    threshold: ThresholdSpec
    precisions: Dict[str, PrecisionEntry] = Field(min_length=1)
    opset: int = Field(ge=7, le=30)
    exporter: Dict[Text, Text] = Field(default_factory=dict)
    gate_disabled: bool = False
    created_at: Text = ""
    files: Dict[str, str] = Field(default_factory=dict, description="file name -> sha256 of other files")

    # Set by verify_bundle: the fingerprint of the trusted key whose signature was checked, else None.
    _signer: Optional[str] = PrivateAttr(default=None)

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, value: Dict[str, PrecisionEntry]) -> Dict[str, PrecisionEntry]:
        for precision, entry in value.items():
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision[:16]!r}; known: {', '.join(PRECISIONS)}")
            if entry.file != f"model.{precision}.onnx":
                raise ValueError(
                    f"the {precision} entry names {entry.file!r}; a bundle's {precision} model is "
                    f"model.{precision}.onnx (so a file cannot be reported as a precision it is not)"
                )
        hashes = [e.sha256 for e in value.values()]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two precisions list the same file contents; each precision is its own model")
        return value

    @field_validator("files")
    @classmethod
    def _plain_files(cls, value: Dict[str, str]) -> Dict[str, str]:
        if len(value) > MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} file entries")
        for name, digest in value.items():
            _plain_file_name(name)
            _sha256_hex(digest)
        return value

    @property
    def signer(self) -> Optional[str]:
        """Fingerprint (``SHA256:…``) of the trusted key that signed this bundle, or None when unchecked."""
        return self._signer

    def model_id(self) -> str:
        """``<name>@<12 hex>`` over all that changes the bundle's behaviour (:mod:`edge.trust.bundle_id`)."""
        return f"{self.model.name}@{behaviour_digest(self)[:12]}"

    def normalize(self, raw: float) -> float:
        return (raw - self.normalization.offset) / self.normalization.scale


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- reading: bytes -> JSON -> Manifest -------------------------------------------------------------------


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} overflows to infinity")
    return value


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (so a deep document cannot overflow the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_manifest(data: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a manifest's bytes; every problem is one BundleError line starting with ``where``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes; it is not a bundle manifest")
    try:
        doc = json.loads(
            data.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:
        raise BundleError(f"{where} is nested too deeply; re-export the bundle") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where} is not valid JSON ({_one_line(exc)}); re-export the bundle") from None
    if _depth(doc) > MAX_DEPTH:
        raise BundleError(f"{where} is nested deeper than {MAX_DEPTH} levels; re-export the bundle")
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if type(version) is not int or version != SCHEMA_VERSION:
        shown = repr(version)[:20]
        raise BundleError(
            f"{where} has schema_version {shown}; this runtime reads version {SCHEMA_VERSION}. "
            "Re-export the bundle with a matching edge-anomaly version."
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"{where} does not match the manifest schema: {_first_error(exc)}") from None
    except RecursionError:
        raise BundleError(f"{where} is nested too deeply; re-export the bundle") from None


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:200]


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])[:120] or "(top level)"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    hint = "" if "re-export" in msg or "re-calibrate" in msg else "; re-export the bundle"
    return _one_line(f"{loc}: {msg}{more}{hint}")


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and schema-check ``manifest.json`` without touching the model files or checking a signature."""
    with BundleDir(bundle_dir) as bundle:
        data = bundle.read(MANIFEST_NAME, MAX_MANIFEST_BYTES, missing_ok=True)
    if data is None:
        raise BundleError(
            f"{bundle_dir} is not a bundle: {MANIFEST_NAME} not found. Make one with edge-export."
        )
    return parse_manifest(data, str(Path(bundle_dir) / MANIFEST_NAME))


def verify_bundle(
    bundle_dir: Path, precisions: Optional[List[str]] = None, trusted_keys: Optional[TrustedKeys] = None
) -> Manifest:
    """The verified manifest of ``bundle_dir``, or BundleError.

    With non-empty ``trusted_keys`` the manifest's signature is checked before it is parsed, and the returned
    manifest's ``signer`` names the key. Then the sha256 of every listed file (or of the given precisions'
    models only) is checked, each opened inside the bundle without following links.
    """
    with BundleDir(bundle_dir) as bundle:
        data = bundle.read(MANIFEST_NAME, MAX_MANIFEST_BYTES, missing_ok=True)
        if data is None:
            raise BundleError(
                f"{bundle_dir} is not a bundle: {MANIFEST_NAME} not found. Make one with edge-export."
            )
        signer = None
        if trusted_keys:
            signature = bundle.read(SIGNATURE_NAME, 4096, missing_ok=True)
            try:
                signer = trusted_keys.verify(data, signature)
            except SignatureError as exc:
                raise BundleError(f"{bundle.path}: {exc}") from None
        manifest = parse_manifest(data, str(bundle.path / MANIFEST_NAME))
        wanted = (
            manifest.precisions
            if precisions is None
            else {p: precision_entry(manifest, p) for p in precisions}
        )
        for precision, entry in sorted(wanted.items()):
            _check_file(bundle, entry.file, entry.sha256, precision)
        for name, expected in sorted(manifest.files.items()):
            _check_file(bundle, name, expected, None)
    manifest._signer = signer
    return manifest


def _check_file(bundle: BundleDir, name: str, expected: str, precision: Optional[str]) -> None:
    found, quantized = bundle.digest(name)
    if found != expected:
        raise BundleError(
            f"bundle file {name} does not match its manifest (sha256 differs, in {bundle.path}): the bundle "
            "was modified or truncated; copy it again from the export"
        )
    if precision == "int8" and not quantized:
        raise BundleError(
            f"{bundle.path / name} is listed as int8 but holds no Q/DQ (int8) graph; re-export the bundle"
        )
    if precision in ("fp32", "fp16") and quantized:
        raise BundleError(
            f"{bundle.path / name} is listed as {precision} but holds a Q/DQ (int8) graph; re-export the "
            f"bundle"
        )


def precision_entry(manifest: Manifest, precision: str) -> PrecisionEntry:
    if precision not in manifest.precisions:
        have = ", ".join(sorted(manifest.precisions)) or "none"
        from edge.trust.precision_hints import missing_precision_fix

        fix = missing_precision_fix(manifest.model.kind, precision, manifest.precisions)
        raise BundleError(f"bundle has no {precision} model (it has: {have}); {fix}.")
    return manifest.precisions[precision]
