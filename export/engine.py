"""Bundle -> TensorRT engines in ``BUNDLE/engines``, on the device. A thin wrapper: the build and its cache
key live in ``edge.scoring.backends.tensorrt_engine`` (the daemon builds with the same code on first
start)."""

from __future__ import annotations

from pathlib import Path

from edge.trust.manifest import precision_entry, verify_bundle
from edge.util.deps import MissingDependency, require
from export import ExportError
from export.bundle import ENGINES_DIR

ON_DEVICE_HINT = (
    "the TensorRT engine will be built on the device: run `edge-export --build-engine BUNDLE` there, "
    "or let the daemon build it on its first start (edge-run)."
)


class EngineUnavailable(ExportError):
    """TensorRT is not importable here, so no engine can be built on this machine."""


def require_tensorrt() -> None:
    try:
        require("tensorrt", "tensorrt", "building a TensorRT engine")
    except MissingDependency as exc:
        raise EngineUnavailable(f"TensorRT is not importable on this machine; {ON_DEVICE_HINT}") from exc


def tensorrt_available() -> bool:
    try:
        require_tensorrt()
    except EngineUnavailable:
        return False
    return True


def build_bundle_engines(
    bundle_dir: Path,
    precisions: list[str] | None = None,
    max_batch: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Path]:
    """Verify the bundle, then build (or reuse from the cache) one engine per precision.

    ``cache_dir``: where engines go (default ``<bundle>/engines``); the daemon's ``model.engine_cache_dir``,
    so an installed, root-owned bundle is never written to."""
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir, precisions)
    require_tensorrt()
    from edge.scoring.backends.tensorrt_engine import build_engine

    engines = {}
    for precision in precisions or list(manifest.precisions):
        entry = precision_entry(manifest, precision)
        engines[precision] = build_engine(
            bundle_dir / entry.file,
            Path(cache_dir) if cache_dir is not None else bundle_dir / ENGINES_DIR,
            precision,
            max_batch or manifest.input.max_batch,
            (manifest.input.height, manifest.input.width),
            onnx_sha256=entry.sha256,
            input_name=manifest.input.name,
        )
    return engines
