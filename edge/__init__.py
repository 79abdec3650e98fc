"""edge-anomaly runtime: the part that runs next to the line.

This package is the lowest layer: it never imports torch, ``training``, ``export``, ``calibration``,
``benchmarks`` or ``tools``, so a device needs only the bundle and the runtime dependencies. Shared types
(the bundle manifest, the preprocessing definition) live here so the upper layers can import them.

Stages, one folder each, lowest floor first (docs/architecture.md; a stage imports only lower floors):
``util`` and ``commands.py``, ``config``, ``capture``, ``trust``, ``results``, ``scoring``, ``stores`` and
``faces``, ``service``. Frames flow capture -> scoring -> results -> faces/stores.
"""

__version__ = "0.1.0"
