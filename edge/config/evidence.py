"""[evidence]: the on-disk evidence store's place, bounds and sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from edge.config.base import _Section


class EvidenceConfig(_Section):
    """The on-disk evidence store (edge/stores/evidence.py): anomalous frames and a sample of good ones,
    bounded."""

    enabled: bool = Field(default=False, description="keep evidence on disk (read with edge-evidence)")
    dir: Optional[Path] = Field(
        default=None, description="where the store lives; default: <state_dir>/evidence"
    )
    max_bytes: int = Field(
        default=2 * 1024**3,
        ge=4096,
        le=2**50,
        description="size cap of the stored images, masks and results; the oldest are deleted first",
    )
    max_age_s: float = Field(
        default=30 * 86400.0, gt=0, le=10 * 365 * 86400.0, description="retention: older evidence is deleted"
    )
    jpeg_quality: int = Field(default=90, ge=10, le=100, description="JPEG quality of decoded frames kept")
    good_every: int = Field(
        default=100, ge=0, le=1_000_000, description="keep 1 in N good frames per camera (0: none)"
    )
    near_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1000,
        description="also keep every good frame whose score lies within this much (normalised) of the "
        "threshold",
    )
    queue_max: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="frames waiting for the writer; beyond it they are dropped, counted",
    )
    queue_max_mb: float = Field(
        default=16.0,
        gt=0,
        le=4096,
        description="memory the frames waiting for the writer may hold (full-resolution images); beyond it "
        "they are dropped, counted: what the store can add to the daemon's RSS",
    )
    writer_idle: bool = Field(
        default=True,
        description="run the writer in the idle scheduling class (Linux): it only uses CPU that inference "
        "leaves free; under saturation its queue drops, counted",
    )
    writer_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="nice increment of the writer thread: evidence is the first work to give way when the "
        "CPU "
        "is short (its queue then drops, counted) so that inference keeps its rate",
    )
