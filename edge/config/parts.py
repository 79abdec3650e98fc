"""[[parts]]: which cameras inspect one part together, how long the line waits for its verdict, and what the
reject gate does when no verdict comes in time."""

from __future__ import annotations

from typing import Dict, List, Literal

from pydantic import Field, field_validator

from edge.config.base import _Section, _topic_safe
from edge.config.cameras import CameraConfig

PartAction = Literal["reject", "pass"]


class PartConfig(_Section):
    """One part: the cameras listed here give one combined verdict on ``<prefix>/part/<name>``."""

    name: str = Field(description="part name, the last level of its topic <prefix>/part/<name>")
    cameras: List[str] = Field(
        min_length=1, max_length=16, description="cameras (by name) whose results make up this part's verdict"
    )
    deadline_ms: float = Field(
        default=150.0,
        gt=0,
        le=60000,
        description="milliseconds from the trigger to the verdict; none by then: no_result, default_action",
    )
    default_action: PartAction = Field(
        default="reject",
        description="what the reject gate is told when no verdict exists at the deadline (fail-safe: reject)",
    )

    @field_validator("name")
    @classmethod
    def _name_topic_safe(cls, value: str) -> str:
        return _topic_safe(value, "part name")

    @field_validator("cameras")
    @classmethod
    def _cameras_unique(cls, value: List[str]) -> List[str]:
        twice = sorted({cam for cam in value if value.count(cam) > 1})
        if twice:
            raise ValueError(f"camera(s) {', '.join(twice)} listed twice in one part")
        return value


def check_parts(parts: List[PartConfig], cameras: List[CameraConfig]) -> None:
    """Names unique; every camera of a part enabled, in one part at most, all of a part on one trigger."""
    by_name = {cam.name: cam for cam in cameras}
    if parts and "part" in by_name:
        raise ValueError("a camera named 'part' would share its topics with <prefix>/part/...: rename it")
    seen_parts: Dict[str, int] = {}
    owner: Dict[str, str] = {}
    for index, part in enumerate(parts):
        if part.name in seen_parts:
            raise ValueError(
                f"parts[{index}].name {part.name!r} is already used by parts[{seen_parts[part.name]}]"
            )
        seen_parts[part.name] = index
        for cam in part.cameras:
            cfg = by_name.get(cam)
            if cfg is None or not cfg.enabled:
                raise ValueError(
                    f"parts[{index}] ({part.name}) names camera {cam!r}, which is not an enabled camera"
                )
            if cam in owner:
                raise ValueError(
                    f"camera {cam!r} is in parts {owner[cam]!r} and {part.name!r}; one part per camera"
                )
            owner[cam] = part.name
        triggers = {by_name[cam].trigger for cam in part.cameras}
        if len(triggers) > 1:
            raise ValueError(
                f"part {part.name!r} mixes trigger = 'frame' and 'message' cameras; use one kind"
            )
