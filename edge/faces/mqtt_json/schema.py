"""The JSON Schemas of the payloads, as committed under docs/schemas (one per JSON topic of the table).

Regenerate them after changing a payload model::

    python3 -m edge.faces.mqtt_json.schema --write-schemas docs/schemas
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from edge.faces.mqtt_json.topics import SCHEMA_MODELS


def json_schema(name: str) -> Dict[str, object]:
    """The JSON Schema of one payload, as committed under docs/schemas/."""
    model = SCHEMA_MODELS[name]
    doc = model.model_json_schema(by_alias=True, mode="serialization")
    doc["$id"] = f"https://edge-anomaly.invalid/schemas/{name}.schema.json"
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return doc


def schema_text(name: str) -> str:
    return json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMA_MODELS:
        path = folder / f"{name}.schema.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m edge.faces.mqtt_json.schema", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write-schemas", type=Path, metavar="DIR", required=True)
    args = parser.parse_args(argv)
    for path in write_schemas(args.write_schemas):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
