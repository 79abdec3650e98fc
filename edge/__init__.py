"""edge-anomaly runtime: the part that runs next to the line.

This package is the lowest layer: it never imports torch, ``training``, ``export`` or ``calibration``,
so a device needs only the bundle and the runtime dependencies. Shared types (the bundle manifest,
the preprocessing definition) live here so the upper layers can import them.
"""

__version__ = "0.1.0"
