"""The report: ratios computed from the measured numbers (:mod:`benchmarks.ratios`), JSON for machines,
markdown (:mod:`benchmarks.report_sections`) + PNG plots (:mod:`benchmarks.plots`) for people.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.plots import write_plots
from benchmarks.report_sections import markdown

REPORT_SCHEMA = 1


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the JSON report")


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(
        json.dumps(_finite(json.loads(json.dumps(report, default=_jsonable))), indent=1) + "\n",
        encoding="utf-8",
    )
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and the PNG plots in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out_dir)
    report["plots"] = plots
    json_path = write_json(report, out_dir / "report.json")
    md_path = out_dir / "report.md"
    md_path.write_text(markdown(report, plots), encoding="utf-8")
    return {"json": json_path, "markdown": md_path, **{k: out_dir / v for k, v in plots.items()}}
