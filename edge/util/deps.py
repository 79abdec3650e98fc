"""One place that imports heavy optional dependencies, so a missing one names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an error that tells the user how to get it.

    Nothing is ever installed at run time: the user decides what goes on the device.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs the Python module '{module}', which is not importable ({exc}). "
            f"Install it with: pip install 'edge-anomaly[{extra}]' (or your platform's package, e.g. "
            f"JetPack)."
        ) from exc
