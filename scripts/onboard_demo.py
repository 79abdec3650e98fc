#!/usr/bin/env python3
"""Onboard a new product from the line, end to end on generated parts (see tools/onboard.py).

    python3 scripts/onboard_demo.py [--out onboard-demo] [--epochs 8] [--fresh]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.onboard import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
