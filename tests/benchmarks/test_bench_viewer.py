"""``edge-bench pipeline --viewer``: every run serves the live view, a saturated run alternates windows
without and with one viewer polling the page as a browser does, and the report holds pipeline ÷ bare with
and without the viewer, each from the fields it names. Durations are tiny: nothing here asserts a speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cli import EXIT_OK, main
from benchmarks.pipeline_bench import VIEWER_LOAD
from tests.benchmarks.test_bench import QUICK, check_ratio, ratio, read_report
from tests.helpers.tiny_bundle import make_tiny_bundle

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")


def test_pipeline_with_and_without_a_viewer_in_one_run(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    args = ["pipeline", "--bundle", str(bundle), "--cameras", "1", "--duration", "3", "--pipeline-rounds",
            "1", "--slices", "2", "--latency-load", "0", "--viewer", "--out", str(out), *QUICK]  # fmt: skip
    assert main(args) == EXIT_OK
    report = read_report(out)
    pipe = report["pipeline"]
    assert pipe["viewer"] is True
    runs = {r["load"]: r for r in pipe["runs"]}
    assert set(runs) == {"saturated", VIEWER_LOAD}
    assert runs["saturated"]["viewer"] is None  # the page is on but nobody looks
    seen = runs[VIEWER_LOAD]["viewer"]
    assert seen["frames"] >= 1 and seen["requests"] > seen["frames"] and seen["errors"] == 0
    assert all(r["results"] > 0 and len(r["interleaved"]) == 2 for r in runs.values())  # 2 windows each
    assert runs["saturated"]["seconds"] == pytest.approx(runs[VIEWER_LOAD]["seconds"], rel=0.2)
    entry = pipe["by_cameras"]["1"]
    assert entry["viewer_results"] == runs[VIEWER_LOAD]["results"]
    bare = pipe["bare"]["1"]["throughput_ips"]
    check_ratio(ratio(report, "pipeline_vs_bare_1cam"), entry["throughput_rps"], bare)
    with_viewer = ratio(report, "pipeline_with_viewer_vs_bare_1cam")
    check_ratio(with_viewer, entry["viewer_throughput_rps"], bare)
    assert with_viewer["target"] == "≥ 0.85"
    assert "frames the viewer fetched" in (out / "report.md").read_text(encoding="utf-8")
