"""What a bundle id covers: everything that changes what the bundle does.

``Manifest.model_id()`` is ``<model name>@<first 12 hex of behaviour_digest>``. The digest covers the model
(checkpoint, kind, config), every precision's weights, the input geometry and preprocessing, the outputs, the
score normalisation (the calibration) and the threshold, so a bundle re-exported from the same checkpoint
with another calibration, threshold or geometry is a new id: a reload (SIGHUP) or ``model/set`` applies it and
``model/state`` names it. It leaves out what only describes the export (time, exporter versions, gate report,
other files), so exporting the same thing twice gives the same id.

May import: the standard library (the manifest module calls it).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.trust.manifest import Manifest


def behaviour_digest(manifest: Manifest) -> str:
    """sha256 hex of the canonical JSON of every behaviour-changing part of ``manifest``."""
    doc = {
        "model": manifest.model.model_dump(mode="json"),
        "input": manifest.input.model_dump(mode="json"),
        "outputs": manifest.outputs.model_dump(mode="json"),
        "normalization": manifest.normalization.model_dump(mode="json"),
        "threshold": manifest.threshold.model_dump(mode="json"),
        "weights": {precision: entry.sha256 for precision, entry in manifest.precisions.items()},
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
