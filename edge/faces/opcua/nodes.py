"""The address space of the OPC UA face (docs/opcua.md): one ``VisionSystem`` object, after OPC 40100-1.

    Objects/VisionSystem                               ns=<urn:edge-anomaly>;s=VisionSystem
        Trigger(cameraName, partId) -> Message         the <prefix>/<camera>/trigger command
        Cameras/<camera>/LastVerdict, Score, Threshold (writable), PartId, ResultTimestamp, State,
                         RecipeId (writable), LastCommandError
        Parts/<part>/LastVerdict, Action, PartId, Reason, Late, Timestamp, ElapsedMs

Every node id is a string ``VisionSystem.Cameras.<camera>.Score`` in the ``urn:edge-anomaly`` namespace,
so a PLC program can address a value without browsing. May import: asyncua (the caller hands it in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Sequence, Tuple

from edge.config.regions import flat_name

NAMESPACE = "urn:edge-anomaly"
ROOT = "VisionSystem"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# name -> (variant type name, initial value); the writable ones are listed in WRITABLE
CAMERA_VARS: Tuple[Tuple[str, str, Any], ...] = (
    ("LastVerdict", "String", ""),
    ("Score", "Double", 0.0),
    ("Threshold", "Double", 0.0),
    ("PartId", "String", ""),
    ("ResultTimestamp", "DateTime", EPOCH),
    ("State", "String", "offline"),
    ("RecipeId", "String", ""),
    ("LastCommandError", "String", ""),
)
PART_VARS: Tuple[Tuple[str, str, Any], ...] = (
    ("LastVerdict", "String", ""),
    ("Action", "String", ""),
    ("PartId", "String", ""),
    ("Reason", "String", ""),
    ("Late", "Boolean", False),
    ("Timestamp", "DateTime", EPOCH),
    ("ElapsedMs", "Double", 0.0),
)
WRITABLE = ("Threshold", "RecipeId")


def node_id(*path: str) -> str:
    return ".".join((ROOT, *path))


@dataclass
class Tree:
    """The variables of the address space: ``("Cameras", cam, "Score") -> asyncua Node``."""

    idx: int
    vision: Any
    variables: Dict[Tuple[str, str, str], Any] = field(default_factory=dict)
    types: Dict[Tuple[str, str, str], Any] = field(default_factory=dict)  # -> ua.VariantType
    writable: Dict[Any, Tuple[str, str]] = field(default_factory=dict)  # NodeId -> (camera, variable)


async def build(server: Any, ua: Any, cameras: Sequence[str], parts: Sequence[str]) -> Tree:
    """Add VisionSystem, its cameras and parts to ``server``; the Trigger method is added by the caller."""
    idx = await server.register_namespace(NAMESPACE)
    objects = server.nodes.objects
    vision = await objects.add_object(ua.NodeId(ROOT, idx), ua.QualifiedName(ROOT, idx))
    tree = Tree(idx, vision)
    for group, names, spec in (("Cameras", cameras, CAMERA_VARS), ("Parts", parts, PART_VARS)):
        folder = await vision.add_folder(ua.NodeId(node_id(group), idx), ua.QualifiedName(group, idx))
        for name in names:
            flat = flat_name(name)  # a region <camera>/<region> is the object <camera>:<region>
            obj = await folder.add_object(ua.NodeId(node_id(group, flat), idx), ua.QualifiedName(flat, idx))
            for var, vtype, initial in spec:
                nid = ua.NodeId(node_id(group, flat, var), idx)
                node = await obj.add_variable(
                    nid, ua.QualifiedName(var, idx), ua.Variant(initial, getattr(ua.VariantType, vtype))
                )
                tree.variables[(group, name, var)] = node
                tree.types[(group, name, var)] = getattr(ua.VariantType, vtype)
                if group == "Cameras" and var in WRITABLE:
                    await node.set_writable()
                    tree.writable[nid] = (name, var)
    return tree
