"""[[cameras]]: one section per camera (source, rate, ROI or named regions, threshold)."""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple

from pydantic import Field, ValidationInfo, field_validator

from edge.config.base import PublishMask, _finite_threshold, _roi_ok, _Section, _topic_safe
from edge.config.regions import RegionConfig, check_regions
from edge.util.names import is_safe_name


class CameraConfig(_Section):
    name: str = Field(
        description="camera name, part of its topics and folders: a letter or digit, then letters, digits, "
        "'_', '-', '.' (at most 64, no '..')"
    )
    source: str = Field(
        min_length=1,
        description="device index ('0'), file path, rtsp:// or http(s):// URL, or a GStreamer pipeline",
    )
    loop: bool = Field(default=False, description="restart a video file at its end (demo/testing)")
    fps: Optional[float] = Field(
        default=None, gt=0, le=1000, description="read at most this many frames per second"
    )
    fault_after_s: float = Field(
        default=3.0, gt=0, le=3600, description="no frame for this long: availability 'fault'"
    )
    roi: Optional[Tuple[int, int, int, int]] = Field(
        default=None, description="region of interest [x, y, w, h] in camera pixels; default: the whole frame"
    )
    threshold: Optional[float] = Field(
        default=None,
        description="fixed threshold (normalised); overrides the bundle's and ignores MQTT threshold/set",
    )
    recipe: Optional[str] = Field(
        default=None,
        description="recipe (bundle folder in model.store) this camera runs; default: model.bundle",
    )
    publish_mask: PublishMask = Field(default="anomalous", description="when to publish the PNG defect mask")
    publish_heatmap: bool = Field(default=False, description="also publish a JPEG heatmap overlay")
    decode_on_demand: bool = Field(
        default=True,
        description="MJPEG via FFmpeg: keep frames compressed until scored, decode at the scale the model "
        "needs",
    )
    trigger: Literal["frame", "message"] = Field(
        default="frame",
        description="what opens a part ([[parts]]): 'frame', each scored frame is a part of its own; "
        "'message', a <prefix>/<camera>/trigger message with a part id, the next frame belongs to it",
    )
    warn_band: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="fraction of the threshold below it that reads 'warn' (0.1: scores in [0.9*thr, thr]); "
        "0: off",
    )
    enabled: bool = Field(default=True, description="false: keep the section but do not open the camera")
    regions: List[RegionConfig] = Field(
        default_factory=list,
        description="named regions, each its own inspection <camera>/<region> with its own roi (and "
        "optionally recipe, threshold, warn_band, publish_mask, publish_heatmap); excludes roi",
    )
    secret_params: List[str] = Field(
        default_factory=list,
        max_length=32,
        description="query parameter names in this camera's source whose values are secret, hidden wherever "
        "the source is printed or published (user, pwd, password, token, key, auth, sig, ... always are)",
    )

    @field_validator("name")
    @classmethod
    def _name_topic_safe(cls, value: str) -> str:
        if not is_safe_name(value):  # it becomes a topic level and an evidence folder: never '..'
            raise ValueError(
                f"camera name {value!r} is not topic-safe: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit, no '..' (it becomes part of MQTT topics and folder names)"
            )
        return value

    @field_validator("recipe")
    @classmethod
    def _recipe_is_a_folder_name(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _topic_safe(value, "recipe")

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, value: Optional[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int, int, int]]:
        return _roi_ok(value)

    @field_validator("threshold")
    @classmethod
    def _threshold_finite(cls, value: Optional[float]) -> Optional[float]:
        return _finite_threshold(value)

    @field_validator("regions")
    @classmethod
    def _regions_fit(cls, value: List[RegionConfig], info: ValidationInfo) -> List[RegionConfig]:
        check_regions(value, info.data.get("roi"))  # roi comes before regions: it is validated by now
        return value
