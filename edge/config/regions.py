"""``regions`` of a [[cameras]] section: several named inspections of one camera's frames.

One source (one capture, one decode) feeds every region; each region is an inspection unit of its own,
named ``<camera>/<region>``: its own ROI, recipe, threshold, warn band, mask and result topics
(``<prefix>/<camera>/<region>/result``). :func:`units_of` expands a camera section into those units at
config load, so everything downstream (thresholds, models, publish, parts, faces) treats a region as it
treats a camera. A camera without ``regions`` is its own one unit, unchanged.

Faces whose names cannot hold a '/' (Sparkplug device ids, OPC UA browse names, evidence folders) use
:func:`flat_name`, ``<camera>:<region>`` (':' is in no camera or region name, so the mapping is one to one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from pydantic import Field, field_validator

from edge.config.base import PublishMask, _finite_threshold, _roi_ok, _Section, _topic_safe
from edge.util.names import is_safe_name

if TYPE_CHECKING:
    from edge.config.cameras import CameraConfig

REGION_SEP = "/"  # in unit names and MQTT topics: <camera>/<region>
FLAT_SEP = ":"  # where '/' cannot go: Sparkplug device ids, OPC UA names, evidence folders
MAX_REGIONS = 16

# Every fixed level of the MQTT topic table (and of the web page's /cam/<camera>/... routes): a region with
# one of these names would make <prefix>/<camera>/<region>/... read as a topic of the camera itself.
RESERVED = frozenset(
    {"availability", "result", "mask", "heatmap", "threshold", "set", "state", "model", "trigger", "status",
     "stats", "part", "frame", "frame.jpg", "latest"}
)  # fmt: skip


class RegionConfig(_Section):
    """One named region; a key left out takes the camera section's value."""

    name: str = Field(
        description="region name, the topic level after the camera's (<prefix>/<camera>/<name>/result): a "
        "letter or digit, then letters, digits, '_', '-', '.'; not a topic level such as 'result'"
    )
    roi: Tuple[int, int, int, int] = Field(description="the region [x, y, w, h] in camera pixels")
    recipe: Optional[str] = Field(default=None, description="recipe this region runs; default: the camera's")
    threshold: Optional[float] = Field(default=None, description="fixed threshold; default: the camera's")
    warn_band: Optional[float] = Field(default=None, ge=0.0, lt=1.0, description="default: the camera's")
    publish_mask: Optional[PublishMask] = Field(default=None, description="default: the camera's")
    publish_heatmap: Optional[bool] = Field(default=None, description="default: the camera's")

    @field_validator("name")
    @classmethod
    def _name_safe(cls, value: str) -> str:
        if not is_safe_name(value):
            raise ValueError(
                f"region name {value!r} is not topic-safe: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit, no '..'"
            )
        if value.lower() in RESERVED:
            raise ValueError(
                f"region name {value!r} is reserved: <camera>/{value} is already a topic or route of the "
                f"camera; not one of {', '.join(sorted(RESERVED))}"
            )
        return value

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, value: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
        _roi_ok(value)
        return value

    @field_validator("recipe")
    @classmethod
    def _recipe_is_a_folder_name(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _topic_safe(value, "recipe")

    @field_validator("threshold")
    @classmethod
    def _threshold_finite(cls, value: Optional[float]) -> Optional[float]:
        return _finite_threshold(value)


def check_regions(regions: List[RegionConfig], roi: Optional[Tuple[int, int, int, int]]) -> None:
    """Unique names, at most MAX_REGIONS, and no camera-level ``roi`` beside them (which would it be?)."""
    if not regions:
        return
    if roi is not None:
        raise ValueError("regions and roi exclude each other: give each region its own roi instead")
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions per camera, got {len(regions)}")
    seen = set()
    for region in regions:
        if region.name in seen:
            raise ValueError(f"region name {region.name!r} is used twice in this camera")
        seen.add(region.name)


def units_of(camera: CameraConfig) -> List[CameraConfig]:
    """The inspection units of one camera section: itself, or one unit per region named
    ``<camera>/<region>`` with the region's ROI and the camera's settings where the region sets none."""
    if not camera.regions:
        return [camera]
    units = []
    for region in camera.regions:
        update = {"name": unit_name(camera.name, region.name), "roi": region.roi, "regions": []}
        for key in ("recipe", "threshold", "warn_band", "publish_mask", "publish_heatmap"):
            value = getattr(region, key)
            if value is not None:
                update[key] = value
        units.append(camera.model_copy(update=update))  # no validation: the unit's name holds a '/'
    return units


def unit_name(camera: str, region: str) -> str:
    return f"{camera}{REGION_SEP}{region}"


def flat_name(unit: str) -> str:
    """``cam0/label`` -> ``cam0:label`` for names that cannot hold a '/'; a camera's name is unchanged."""
    return unit.replace(REGION_SEP, FLAT_SEP)


def unit_of_flat(name: str) -> str:
    """The inverse of :func:`flat_name`."""
    return name.replace(FLAT_SEP, REGION_SEP)
