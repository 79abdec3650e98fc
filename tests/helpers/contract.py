"""The published contract, as tests check it: every JSON payload a test reads is validated against the JSON
Schema committed in docs/schemas (not against the models that generated it), then parsed with the model.

:func:`check` is called by :meth:`tests.helpers.mqtt.Received.json`, so every payload any test reads from
the broker goes through it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from edge.faces.mqtt_json.topics import SCHEMA_MODELS, topic_name_of

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def kind_of(topic: str) -> str | None:
    """The API topic name of a full topic, trying every split into prefix and suffix (prefixes vary)."""
    parts = topic.split("/")
    for start in range(1, len(parts)):
        name = topic_name_of("/".join(parts[start:]))
        if name is not None:
            return name
    return None


def check(topic: str, doc: Any) -> Any:
    """Validate ``doc`` against the published schema of its topic (if it is one of ours); returns ``doc``."""
    name = kind_of(topic)
    if name is None or name not in SCHEMA_MODELS:
        return doc
    validator(name).validate(doc)
    SCHEMA_MODELS[name].model_validate(doc)
    return doc
