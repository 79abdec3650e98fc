"""Checkpoints are plain data: ``{"format", "kind", "config", "state_dict", "preprocess", "data", ...}``.

They are read with ``torch.load(weights_only=True)``, so a checkpoint can never run code, and the model is
rebuilt from its config and loaded strictly, so a checkpoint from another architecture fails loudly.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.capture.preprocess import Preprocess
from edge.trust.manifest import sha256_file
from edge.util.atomic import atomic_file

FORMAT = "edge-anomaly-checkpoint"
FORMAT_VERSION = 1

# kind -> (module, config class, model class). Adding a model touches its own file and one row here.
MODEL_KINDS: dict[str, tuple[str, str, str]] = {
    "gtrans": ("training.models.gtrans", "GTransConfig", "GTrans"),
    "anovit": ("training.models.anovit", "AnoViTConfig", "AnoViT"),
    "conv-ae": ("training.models.conv_ae", "ConvAEConfig", "ConvAE"),
    "patchcore": ("training.models.patchcore", "PatchCoreConfig", "PatchCore"),
    "gtrans-knn": ("training.models.gtrans_knn", "GTransKNNConfig", "GTransKNN"),
}


class CheckpointError(ValueError):
    """The file is not a usable edge-anomaly checkpoint; the message says why and what to do."""


@dataclass
class Checkpoint:
    kind: str
    config: dict[str, Any]
    model: nn.Module
    preprocess: Preprocess
    data: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None


def _model_module(kind: str) -> Any:
    """The module that holds ``kind``'s model, its config and its declarations (``FIELDS_ADDED_SINCE``...)."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}")
    return importlib.import_module(MODEL_KINDS[kind][0])


def _model_classes(kind: str) -> tuple[type, type]:
    module = _model_module(kind)  # raises for an unknown kind
    _, cfg_name, model_name = MODEL_KINDS[kind]
    return getattr(module, cfg_name), getattr(module, model_name)


def nest_dotted(config: dict[str, Any]) -> dict[str, Any]:
    """``{"gtrans.dim": 64}`` -> ``{"gtrans": {"dim": 64}}``: a kind made of other kinds' configs
    (``gtrans-knn``) takes ``--set part.key=value``; other keys pass unchanged."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        head, dot, rest = key.partition(".")
        if not dot:
            out[key] = (
                {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
            )
            continue
        sub = out.setdefault(head, {})
        if not isinstance(sub, dict):
            raise CheckpointError(f"config key {key!r}: {head!r} is not a table of settings")
        sub.update(nest_dotted({rest: value}))
    return out


def model_class(kind: str) -> type:
    """The model class of ``kind`` (its class attributes, e.g. ``training_free``, without building one)."""
    return _model_classes(kind)[1]


def model_settings(kind: str, config: dict[str, Any] | None = None) -> Any:
    """``kind``'s config dataclass: its defaults with ``config`` (``--set``) over them."""
    cfg_cls, _ = _model_classes(kind)
    config = nest_dotted(config or {})
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{kind} config has unknown keys {unknown}; known: {sorted(known)}")
    return cfg_cls(**config)


def build_model(kind: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A model with random (or architecture-default) weights; pretrained parts are loaded by the trainer."""
    return _model_classes(kind)[1](model_settings(kind, config))


def _plain(value: Any) -> Any:
    """A config value as JSON has it (tuples are lists), so a saved and an asked setting compare equal."""
    return json.loads(json.dumps(value))


def settings_changed(kind: str, saved: Any, asked: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """``key: saved -> asked`` for each setting of a run's model that the new command (its defaults and
    ``--set``) asks otherwise. Fields the model measures while training (its module's ``MEASURED_FIELDS``)
    and ``skip`` do not count: the run chose those itself."""
    new_settings = model_settings(kind, asked)
    measured = set(getattr(_model_module(kind), "MEASURED_FIELDS", ())) | set(skip)
    old, new = _plain(asdict(saved)), _plain(asdict(new_settings))
    return [f"{k}: {old[k]} -> {new[k]}" for k in new if k not in measured and old.get(k) != new[k]]


def saved_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the fields it predates filled with what the code then did.

    A model module may declare ``FIELDS_ADDED_SINCE`` (field -> the value that reproduces the earlier
    behaviour), so a new default never changes what an old checkpoint computes; ``NESTED_KINDS`` (config
    field -> kind) applies each part's own to a kind made of other kinds.
    """
    if kind not in MODEL_KINDS:
        return config
    module = _model_module(kind)
    added = getattr(module, "FIELDS_ADDED_SINCE", {})
    filled = {**{k: v for k, v in added.items() if k not in config}, **config}
    for name, part_kind in getattr(module, "NESTED_KINDS", {}).items():  # a kind made of other kinds
        if isinstance(filled.get(name), dict):
            filled[name] = saved_config(part_kind, filled[name])
    return filled


def model_config(model: nn.Module) -> dict[str, Any]:
    return asdict(model.config)  # type: ignore[arg-type]


def save_checkpoint(
    path: Path,
    kind: str,
    model: nn.Module,
    preprocess: Preprocess,
    data: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": model_config(model),
        "state_dict": model.state_dict(),
        "preprocess": {**preprocess.to_dict(), "mean": list(preprocess.mean), "std": list(preprocess.std)},
        "data": data or {},
        "train_state": train_state or {},
    }
    with atomic_file(path) as fh:
        torch.save(payload, fh)
    return path


_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _unreadable_reason(exc: Exception) -> str:
    """Why torch could not read the file, in this project's words (torch's own text advises an unsafe load).

    Only the name of a refused Python class is taken from torch's message; nothing else of it is shown.
    """
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        what = f" (it contains a {found.group(1)} object)"
        return (
            f"holds Python objects, not only plain data{what}. edge-anomaly reads checkpoints as data "
            "(tensors, numbers, strings, lists, dicts) and never runs code from a file, so it will not load "
            "this one. Use the checkpoint.pt that edge-train wrote, or train again."
        )
    if "central directory" in text or isinstance(exc, EOFError) or "zip archive" in text:
        return (
            "cannot be read: it is truncated or damaged (an interrupted copy?). Copy it again from the "
            "training machine, or use the checkpoint.pt that edge-train wrote."
        )
    return (
        "cannot be read as an edge-anomaly checkpoint: it is not a file written by edge-train, or it is "
        "damaged. Use the checkpoint.pt in the edge-train --out folder."
    )


def _state_dict_mismatch(model: nn.Module, state: Any) -> str:
    """``2 missing, 1 unexpected, 1 of another shape (first: decoder.0.weight)`` for a failed strict load."""
    if not isinstance(state, dict):
        return "state_dict is not a table of tensors"
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shape = [k for k in want if k in state and getattr(state[k], "shape", None) != want[k].shape]
    parts = [
        f"{len(v)} {what}"
        for v, what in ((missing, "missing"), (extra, "unexpected"), (shape, "of another shape"))
        if v
    ]
    first = (missing + extra + shape)[:1]
    return ", ".join(parts or ["tensors that do not load"]) + (f"; first: {first[0]}" if first else "")


def load_checkpoint(path: Path, expect_kind: str | None = None) -> Checkpoint:
    """Load and rebuild the model in eval mode; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol advice is not for our users
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise CheckpointError(f"{path} {_unreadable_reason(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edge-anomaly checkpoint (no '{FORMAT}' format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}; this code reads "
            f"{FORMAT_VERSION}"
        )
    kind = payload.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, expected {expect_kind!r}")
    model = build_model(str(kind), saved_config(str(kind), payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{path}: weights do not fit the {kind} architecture its config describes "
            f"({_state_dict_mismatch(model, payload['state_dict'])}); the file was changed after edge-train "
            "wrote it, or written by another version of this code. Train again or use the original file."
        ) from None
    model.eval()
    return Checkpoint(
        kind=str(kind),
        config=dict(payload["config"]),
        model=model,
        preprocess=Preprocess.from_dict(payload["preprocess"]),
        data=dict(payload.get("data") or {}),
        train_state=dict(payload.get("train_state") or {}),
        sha256=sha256_file(path),
        path=path,
    )
