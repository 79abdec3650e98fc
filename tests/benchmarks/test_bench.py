"""edge-bench end to end on a real tiny bundle, a generated MVTec dataset, a real mosquitto and the real
daemon.

Durations are tiny, so the numbers are noise; the tests check that every number is a measurement (positive,
consistent with its own counts), that every ratio is computed from the fields it names, and that the
report files are written. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import EXIT_INPUT, EXIT_OK, main
from benchmarks.model_bench import MAX_SAMPLES, latency_summary
from benchmarks.pipeline_bench import MAX_CAMERA_FPS, offered_fps, pipeline_batch
from benchmarks.soak import growth
from tests.helpers.tiny_bundle import make_tiny_bundle

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--warmup", "0.05", "--quiet"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bench") / "bundle", precisions=("fp32", "fp16", "int8"))


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def cell(report: dict, engine: str, precision: str, batch: int) -> dict:
    found = [
        c
        for c in report["model"]["cells"]
        if (c["engine"], c["precision"], c["batch"]) == (engine, precision, batch)
    ]
    assert len(found) == 1, f"expected one {engine}/{precision}/b{batch} cell, found {len(found)}"
    return found[0]


def ratio(report: dict, name: str) -> dict:
    found = [r for r in report["ratios"] if r["name"] == name]
    assert len(found) == 1, f"ratio {name} missing; have {[r['name'] for r in report['ratios']]}"
    return found[0]


def check_ratio(r: dict, numerator: float, denominator: float) -> None:
    """The ratio's inputs are the report's own fields, and its value is their quotient."""
    assert r["numerator"]["value"] == numerator
    assert r["denominator"]["value"] == denominator
    assert r["value"] == pytest.approx(numerator / denominator, rel=1e-12)


def check_cell(c: dict, rounds: int, min_calls: int = 3) -> None:
    assert c["calls"] >= rounds * min_calls and c["warmup_calls"] >= min_calls
    assert c["images"] == c["calls"] * c["batch"]
    assert c["seconds"] > 0 and c["throughput_ips"] == pytest.approx(c["images"] / c["seconds"])
    assert len(c["throughput_per_round_ips"]) == rounds and all(v > 0 for v in c["throughput_per_round_ips"])
    lat = c["latency_ms"]
    assert lat["n"] == c["calls"] and 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    if c["calls"] <= MAX_SAMPLES:  # every sample is kept for the plots, so they add up to the measured time
        assert sum(c["samples_ms"]) / 1000.0 == pytest.approx(c["seconds"])
    else:
        assert len(c["samples_ms"]) == MAX_SAMPLES


def test_all_end_to_end(bundle: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "all",
            "--bundle",
            str(bundle),
            "--data",
            str(synthetic_dataset),
            "--batch",
            "1,2,4",
            "--duration",
            "0.4",
            "--rounds",
            "2",
            "--pipeline-rounds",
            "1",
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert rc == EXIT_OK
    report = read_report(out)
    assert report["schema"] == 1 and report["scenario"] == "all"

    env = report["environment"]
    assert env["cpu"] and env["cores"]["logical"] >= 1 and env["python"] and env["os"]
    assert env["gpu"] == "none" or isinstance(env["gpu"], list)
    assert env["libraries"]["numpy"] == np.__version__ and env["libraries"]["onnxruntime"]
    flags = env["cpu_int8_flags"]
    assert flags is None or (
        set(flags) >= {"avx2", "avx512_vnni", "asimddp"} and all(isinstance(v, bool) for v in flags.values())
    )
    assert "CPU int8 features" in (out / "report.md").read_text()

    files = report["bundle"]["files"]
    assert set(files) == {"fp32", "fp16", "int8"}
    assert all(f["bytes"] == (bundle / f["file"]).stat().st_size for f in files.values())
    assert report["bundle"]["export_time"] == "not recorded" and report["bundle"]["export_time_s"] is None

    # bare backend: every precision at every batch, interleaved in 2 rounds
    assert len(report["model"]["cells"]) == 9
    for c in report["model"]["cells"]:
        check_cell(c, rounds=2)
    for precision in ("fp32", "fp16", "int8"):
        mem = report["memory"][f"onnxruntime/{precision}"]
        assert "error" not in mem, mem
        assert 0 < mem["baseline_rss_mb"] < mem["peak_rss_mb"] and mem["engine_rss_mb"] > 0

    # pipeline: 1 and 4 cameras, saturated and paced, with the bare slices of the same rounds
    pipe = report["pipeline"]
    assert {(r["cameras"], r["load"]) for r in pipe["runs"]} == {
        (1, "saturated"),
        (1, "paced"),
        (4, "saturated"),
        (4, "paced"),
    }
    for run in pipe["runs"]:
        assert run["results"] > 0 and run["throughput_rps"] == pytest.approx(run["results"] / run["seconds"])
        assert sum(run["per_camera_results"].values()) == run["results"]
        assert run["latency_ms"]["total"]["n"] == run["results"] and run["latency_ms"]["total"]["p50"] > 0
        assert run["batch_mean"] is not None and 1 <= run["batch_mean"] <= run["batch_expected"]
        assert run["bad_payloads"] == 0 and run["errors"]["inference"] == 0
        if run["load"] == "saturated":  # bare slices alternate with the windows; the frozen daemon resumes
            slices = run["interleaved"]
            assert len(slices) == pipe["slices_per_saturated_run"] == 5
            assert all(s["bare_ips"] > 0 for s in slices) and sum(s["pipeline_rps"] for s in slices[1:]) > 0
        else:
            assert "interleaved" not in run
    assert set(pipe["runs"][2]["per_camera_results"]) <= {"cam0", "cam1", "cam2", "cam3"}
    for cams, batch in (("1", 1), ("4", 4)):
        entry = pipe["by_cameras"][cams]
        sat = [r for r in pipe["runs"] if r["cameras"] == int(cams) and r["load"] == "saturated"]
        assert entry["batch"] == batch
        assert entry["throughput_rps"] == pytest.approx(
            sum(r["results"] for r in sat) / sum(r["seconds"] for r in sat)
        )
        assert pipe["bare"][str(batch)]["throughput_ips"] > 0

    # accuracy per precision; the tiny model separates generated defects from good parts
    acc = report["accuracy"]["engines"]
    assert set(acc) == {"onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8"}
    assert acc["onnxruntime/fp32"]["metrics"]["image_auroc"] >= 0.9
    for label in ("onnxruntime/fp16", "onnxruntime/int8"):
        drift = acc[label]["vs_fp32"]
        expected = (
            acc[label]["metrics"]["image_auroc"] - acc["onnxruntime/fp32"]["metrics"]["image_auroc"]
        ) * 100
        assert drift["image_auroc_delta_pt"] == pytest.approx(expected)
        assert drift["score_correlation"] > 0.9

    # ratios are the quotients of the fields they name
    r = ratio(report, "pipeline_vs_bare_1cam")
    check_ratio(r, pipe["by_cameras"]["1"]["throughput_rps"], pipe["bare"]["1"]["throughput_ips"])
    assert r["passed"] == (r["value"] >= 0.90)
    r = ratio(report, "cams4_vs_cams1")
    check_ratio(r, pipe["by_cameras"]["4"]["throughput_rps"], pipe["by_cameras"]["1"]["throughput_rps"])
    assert r["passed"] == (r["value"] >= 1.2)
    r = ratio(report, "latency_p99_vs_backend_p99_1cam")
    check_ratio(
        r, pipe["by_cameras"]["1"]["paced_latency_total_ms"]["p99"], pipe["bare"]["1"]["latency_ms"]["p99"]
    )
    assert r["passed"] == (r["value"] <= 2.0)
    best = max((cell(report, "onnxruntime", "fp32", b) for b in (1, 2, 4)), key=lambda c: c["throughput_ips"])
    for precision in ("int8", "fp16"):
        r = ratio(report, f"{precision}_vs_fp32")
        check_ratio(
            r, cell(report, "onnxruntime", precision, best["batch"])["throughput_ips"], best["throughput_ips"]
        )
        assert r["image_auroc"] == acc[f"onnxruntime/{precision}"]["metrics"]["image_auroc"]
    r = ratio(report, "int8_vs_fp32")
    assert r["passed"] == (r["value"] >= 1.3 and abs(r["image_auroc_delta_pt"]) <= 0.5)

    # people's side: markdown with every plot, and real PNGs
    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in (
        "## Ratios",
        "## Bare backend",
        "## Peak memory",
        "## Full pipeline",
        "## Accuracy",
        "## Environment",
    ):
        assert heading in md
    assert f"{ratio(report, 'cams4_vs_cams1')['value']:.3f}" in md
    assert set(report["plots"]) == {"latency", "throughput", "roc", "pipeline_latency"}
    for name in report["plots"].values():
        assert f"]({name})" in md
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random conv-ae checkpoint: enough for the torch-eager plumbing (it is not the bundle's
    source)."""
    from edge.capture.preprocess import Preprocess
    from training.checkpoint import build_model, save_checkpoint

    config = {
        "image_size": 64,
        "widths": (4, 8),
        "latent_dim": 8,
        "decoder_widths": (4, 4, 4, 4),
        "sigma": 1.0,
    }
    model = build_model("conv-ae", config)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "conv-ae", model, Preprocess(64, 64))


def test_model_with_torch_eager_reference(bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "model",
            "--bundle",
            str(bundle),
            "--precision",
            "fp32,int8",
            "--batch",
            "1,2",
            "--checkpoint",
            str(tiny_checkpoint),
            "--torch-device",
            "cpu",
            "--duration",
            "0.2",
            "--rounds",
            "2",
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert rc == EXIT_OK
    report = read_report(out)
    assert {(c["engine"], c["precision"]) for c in report["model"]["cells"]} == {
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("torch-eager", "fp32"),
    }
    for c in report["model"]["cells"]:
        check_cell(c, rounds=2)
    assert cell(report, "torch-eager", "fp32", 1)["device"] == "cpu"
    for precision in ("fp32", "int8"):
        check_ratio(
            ratio(report, f"onnxruntime_{precision}_vs_torch_b1"),
            cell(report, "onnxruntime", precision, 1)["throughput_ips"],
            cell(report, "torch-eager", "fp32", 1)["throughput_ips"],
        )
        best = max(
            (cell(report, "onnxruntime", precision, b) for b in (1, 2)), key=lambda c: c["throughput_ips"]
        )
        check_ratio(
            ratio(report, f"onnxruntime_{precision}_vs_torch_best"),
            best["throughput_ips"],
            cell(report, "torch-eager", "fp32", best["batch"])["throughput_ips"],
        )
    mem = report["memory"]["torch-eager/fp32"]
    assert "error" not in mem and mem["peak_rss_mb"] > mem["baseline_rss_mb"] > 0
    ref = report["torch_reference"]
    assert ref["matches_bundle"] is False and "not the one this bundle was exported from" in ref["note"]
    assert "pipeline" not in report and "accuracy" not in report  # only what was asked for is measured


def test_soak_samples_the_daemon(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak"
    rc = main(
        [
            "soak",
            "--bundle",
            str(bundle),
            "--precision",
            "fp32",
            "--cameras",
            "2",
            "--camera-fps",
            "20",
            "--duration",
            "3",
            "--interval",
            "0.5",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == EXIT_OK
    soak = read_report(out)["soak"]
    assert soak["cameras"] == 2 and len(soak["samples"]) >= 4
    for s in soak["samples"]:
        assert s["rss_mb"] > 10 and s["threads"] >= 2 and s["fds"] >= 3
    results = [s["results"] for s in soak["samples"]]
    assert results == sorted(results) and results[-1] > results[0]
    g = soak["growth"]
    expected = (g["rss_last_median_mb"] - g["rss_first_median_mb"]) / g["rss_first_median_mb"] * 100
    assert g["rss_growth_pct"] == pytest.approx(expected)
    assert (g["threads_first"], g["threads_last"]) == (
        soak["samples"][0]["threads"],
        soak["samples"][-1]["threads"],
    )
    assert soak["frames_scored"] > 0 and soak["results_received"] == soak["frames_scored"]
    assert soak["results_missing"] == 0 and soak["errors"]["inference"] == 0
    assert (out / "soak.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model", "--batch", "16"], "exceeds the bundle's max_batch 8"),
        (["accuracy"], "needs --data"),
        (["model", "--precision", "fp64"], "fp64"),
        (["model", "--duration", "0"], "--duration must be positive"),
        (["soak", "--cameras", "1,4"], "one --cameras value"),
    ],
)
def test_unusable_input_is_exit_2_with_a_reason(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main([*args, "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == EXIT_INPUT
    assert message in capsys.readouterr().err


def test_precision_missing_from_bundle_names_what_it_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_fp32 = make_tiny_bundle(tmp_path / "b", size=32, precisions=("fp32",))
    rc = main(
        ["model", "--bundle", str(only_fp32), "--precision", "int8", "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert rc == EXIT_INPUT
    assert "has: fp32" in capsys.readouterr().err


def test_latency_summary_percentiles() -> None:
    s = latency_summary(list(range(1, 101)))
    assert (s["n"], s["min"], s["max"], s["mean"]) == (100, 1.0, 100.0, 50.5)
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert latency_summary([])["p99"] is None


def test_growth_compares_first_and_last_window_medians() -> None:
    samples = [
        {"t_s": float(t), "rss_mb": 100.0 + (10.0 if t >= 90 else 0.0), "threads": 10 + (t >= 90), "fds": 20}
        for t in range(0, 121, 5)
    ]
    g = growth(samples, window_s=30.0)
    assert g["rss_first_median_mb"] == 100.0 and g["rss_last_median_mb"] == 110.0
    assert g["rss_growth_pct"] == pytest.approx(10.0)
    assert (g["threads_first"], g["threads_last"], g["fds_first"], g["fds_last"]) == (10, 11, 20, 20)


def test_offered_rates() -> None:
    assert offered_fps(100.0, 4, 1.5) == pytest.approx(37.5)
    assert offered_fps(1e6, 1, 1.5) == MAX_CAMERA_FPS and offered_fps(0.1, 4, 0.5) == 1.0
    assert [pipeline_batch(c, 4) for c in (1, 2, 4, 8)] == [1, 2, 4, 4]
    assert math.isfinite(offered_fps(50.0, 1, 0.5))


def test_compare_measures_another_bundle_in_the_same_rounds(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["model", "--bundle", str(bundle), "--precision", "fp32", "--batch", "1", "--compare", str(bundle)]
    rc = main([*args, "--duration", "0.2", "--rounds", "2", "--out", str(out), *QUICK])
    assert rc == EXIT_OK
    report = read_report(out)
    engines = {c["engine"] for c in report["model"]["cells"]}
    kind = json.loads((bundle / "manifest.json").read_text())["model"]["kind"]
    assert engines == {"onnxruntime", f"onnxruntime[{kind}]"}
    r = ratio(report, f"onnxruntime[{kind}]_fp32_vs_onnxruntime_fp32_b1_latency")
    check_ratio(
        r,
        cell(report, f"onnxruntime[{kind}]", "fp32", 1)["latency_ms"]["p50"],
        cell(report, "onnxruntime", "fp32", 1)["latency_ms"]["p50"],
    )
