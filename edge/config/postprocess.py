"""[postprocess] and [health]: maps, regions and masks after scoring; the /metrics server."""

from __future__ import annotations

import math
from typing import Optional

from pydantic import Field, model_validator

from edge.config.base import _Section


class PostprocessConfig(_Section):
    min_region_area: int = Field(
        default=16, ge=0, le=10_000_000, description="ignore defect regions smaller than this (camera pixels)"
    )
    max_regions: int = Field(
        default=32, ge=1, le=1000, description="most regions listed in a result (largest first)"
    )
    threshold_min: Optional[float] = Field(
        default=None,
        description="lowest threshold accepted over MQTT (normalised units); default from the bundle's "
        "calibration: 0.5, half way from the median good part to the 99th percentile (or the bundle's "
        "threshold when lower)",
    )
    threshold_max: Optional[float] = Field(
        default=None,
        description="highest threshold accepted over MQTT (normalised units); default from the bundle's "
        "calibration: 3x its threshold or 5 good spreads above it, whichever is higher",
    )
    heatmap_jpeg_quality: int = Field(default=80, ge=10, le=100, description="JPEG quality of heatmap images")

    @model_validator(mode="after")
    def _range_is_a_range(self) -> PostprocessConfig:
        for name in ("threshold_min", "threshold_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if self.threshold_min is None or self.threshold_max is None:
            return self
        if self.threshold_min >= self.threshold_max:
            raise ValueError(
                f"threshold_min ({self.threshold_min}) must be below threshold_max ({self.threshold_max})"
            )
        return self


class HealthConfig(_Section):
    watchdog: bool = Field(
        default=True, description="send systemd WATCHDOG=1 while frames flow (needs WatchdogSec=)"
    )
    stall_after_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="no inference for this long counts as a stall: watchdog pings stop",
    )
    metrics_port: Optional[int] = Field(
        default=None, ge=1, le=65535, description="serve Prometheus /metrics here (needs the 'metrics' extra)"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the /metrics server listens on; loopback by default (the stats are not "
        "authenticated): set 0.0.0.0 only behind a firewall that limits who can scrape",
    )
