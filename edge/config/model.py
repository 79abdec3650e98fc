"""[model]: the bundle to run, its backend and precision."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

from pydantic import Field, field_validator

from edge.config.base import _Section


class ModelConfig(_Section):
    bundle: Path = Field(description="bundle directory written by edge-export (manifest.json + ONNX files)")
    backend: str = Field(default="onnxruntime", description="inference backend: onnxruntime or tensorrt")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="which model of the bundle to run"
    )
    store: Optional[Path] = Field(
        default=None,
        description="bundle store: one verified bundle folder per recipe (product), <store>/<recipe>/; "
        "cameras "
        "pick one with cameras.recipe or over MQTT <camera>/model/set (edge-run install-bundle fills it)",
    )
    trusted_keys: List[Path] = Field(
        default_factory=list,
        max_length=32,
        description="Ed25519 public keys (.pub from edge-keygen) whose signature a bundle must carry; empty: "
        "unsigned bundles are accepted with a warning",
    )
    engine_cache_dir: Optional[Path] = Field(
        default=None,
        description="where TensorRT engines are built and cached (must be writable by the daemon); default: "
        "<bundle>/engines. The installer points it at a service-owned directory outside the root-owned "
        "bundle",
    )
    providers: Optional[List[str]] = Field(
        default=None,
        description="onnxruntime execution providers, best first: 'tensorrt', 'cuda', 'cpu' (CPU is always "
        "appended); default: the backend's own default (cpu)",
    )
    intra_op_threads: Optional[int] = Field(
        default=None, ge=1, le=256, description="onnxruntime CPU threads; default: onnxruntime's choice"
    )
    max_batch: Optional[int] = Field(
        default=None,
        ge=1,
        le=64,
        description="most frames per inference call; default: the bundle's max_batch",
    )
    helper_threads_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="nice increment of the capture, postprocess and MQTT network threads, so inference "
        "gets the CPU first (0: same priority)",
    )
    opencv_threads: Optional[int] = Field(
        default=1,
        ge=1,
        le=256,
        description="worker threads OpenCV may use for one decode, resize or encode; default 1, so they "
        "never compete with the backend's threads; null: OpenCV's own choice (all cores)",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from edge.scoring.backends import BACKENDS  # a name table only; no runtime is imported

        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(sorted(BACKENDS))}")
        return value
