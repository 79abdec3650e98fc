"""The results markdown is generated from evaluation JSON: every number in it comes from there."""

from __future__ import annotations

from pathlib import Path

from training.results import markdown


def _result(model: str, image: float) -> dict:
    return {
        "model": model,
        "image_auroc": image,
        "pixel_auroc": 0.5,
        "aupro": None,
        "f1_at_good_threshold": {"f1": 0.25},
        "recall_at_fpr": {"0.01": 0.9, "0.001": 0.8},
        "line": {
            "0.01": {"recall": 0.7, "threshold": 1.0, "false_alarm_rate": 0.025},
            "0.001": {"recall": 0.6, "threshold": 2.0},
        },
        "epochs": 3,
        "train_seconds": 90.0,
        "throughput_img_s": 12.5,
        "per_type": {"crack": {"image_auroc": 1.0, "pixel_auroc": 0.75, "aupro": 0.125}},
    }


def test_markdown_rows_come_from_the_results_and_name_the_seed() -> None:
    text = markdown([_result("gtrans", 0.9876), _result("conv-ae", 0.5)], Path("data/bottle"), seed=3)
    assert "# Results on MVTec AD `bottle`" in text and "Seed 3." in text
    rows = [
        line for line in text.splitlines() if line.startswith("| gtrans |") or line.startswith("| conv-ae |")
    ]
    assert rows[0].split(" | ")[2:14] == [
        "0.988",
        "0.500",
        "n/a",
        "0.700",
        "2.5 %",  # the good test images the 1 % line threshold flags
        "0.600",
        "0.900",
        "0.800",
        "0.250",
        "3",
        "1.5 min",
        "12.5 |",
    ]
    assert "| gtrans | crack | 1.000 | 0.750 | 0.125 |" in text
    assert len(rows) == 4  # one summary row and one per-type row per model
    assert "pasted image AUROC" not in text  # results evaluated before edge-eval --pasted existed


def test_pasted_defect_numbers_get_their_own_table() -> None:
    with_pasted = {
        **_result("anovit", 0.9),
        "pasted": {
            "image_auroc": 0.9567,
            "pixel_auroc": 0.875,
            "aupro": None,
            "recall_at_fpr": {"0.01": 0.5, "0.001": 0.25},
            "n_good": 21,
            "n_pasted": 63,
        },
    }
    text = markdown([with_pasted, _result("conv-ae", 0.5)], Path("data/bottle"))
    assert "| anovit | 0.957 | 0.875 | n/a | n/a | n/a | 0.500 | 0.250 | 21 + 63 |" in text
    assert "small image AUROC" not in text  # no row has the small-defect set
    lines = text.splitlines()
    assert any(line.startswith("| conv-ae | conv encoder") for line in lines)  # its main row stays
    assert not any(line.startswith("| conv-ae | 0.") for line in lines)  # and it gets no pasted row
    small = {**with_pasted["pasted"], "image_auroc": 0.625, "line": {"0.01": {"recall": 0.125}}}
    text = markdown([{**with_pasted, "small": small}], Path("data/bottle"))
    assert "| small image AUROC |" in text and "| anovit | 0.625 | 0.875 | n/a | 0.125 | n/a |" in text
    assert "faint image AUROC" not in text
    faint = {**small, "image_auroc": 0.75}
    text = markdown([{**with_pasted, "uneven": faint, "image_cue": 0.25}], Path("data/bottle"))
    assert "| faint image AUROC |" in text and "| anovit | 0.750 | 0.875 | n/a | 0.125 | n/a |" in text
    assert "image cue 0.25 (measured)" in text


def test_rows_before_the_line_protocol_read_n_a_and_presets_have_a_description() -> None:
    old = {k: v for k, v in _result("knn-vit-full", 0.9).items() if k != "line"}
    text = markdown([old], Path("data/bottle"))
    row = next(line for line in text.splitlines() if line.startswith("| knn-vit-full |"))
    assert "plain kNN, ViT-S/14 blocks 5 + 8" in row
    assert row.split(" | ")[5:8] == ["n/a", "n/a", "n/a"]  # line recall, its false alarms: not then
    assert "threshold from" not in row and "held-out good images' scores" in text


def test_an_old_row_reads_its_1_percent_line_recall_from_its_f1_decision_marked() -> None:
    """Same threshold (held-out 99th percentile): the F1 decision's recall is the 1 % line recall."""
    old = {k: v for k, v in _result("gtrans", 0.9).items() if k != "line"}
    old["f1_at_good_threshold"] = {"f1": 0.25, "recall": 0.375, "threshold": 1.0}
    row = next(
        line for line in markdown([old], Path("data/bottle")).splitlines() if line.startswith("| gtrans |")
    )
    assert row.split(" | ")[5:8] == ["0.375*", "n/a", "n/a"]  # no stored false alarms, no 0.1 % decision


def test_merge_keeps_the_rows_of_models_not_run_now(tmp_path: Path, monkeypatch) -> None:
    import json

    import training.results as results

    old = [_result("gtrans", 0.5), _result("anovit", 0.7)]
    (tmp_path / "mvtec-bottle.json").write_text(json.dumps(old))
    monkeypatch.setattr(
        results, "run_all", lambda *a, **k: [_result("patchcore", 0.9), _result("gtrans", 0.99)]
    )
    data = tmp_path / "bottle"
    assert (
        results.main(["--data", str(data), "--out", str(tmp_path), "--models", "gtrans,patchcore", "--merge"])
        == 0
    )
    rows = json.loads((tmp_path / "mvtec-bottle.json").read_text())
    assert [(r["model"], r["image_auroc"]) for r in rows] == [
        ("gtrans", 0.99),
        ("patchcore", 0.9),
        ("anovit", 0.7),
    ]
    assert results.main(["--data", str(data), "--out", str(tmp_path), "--models", "gtrans,patchcore"]) == 0
    assert [r["model"] for r in json.loads((tmp_path / "mvtec-bottle.json").read_text())] == [
        "gtrans",
        "patchcore",
    ]


def test_a_row_says_what_its_run_measured_for_itself() -> None:
    tiled = {
        **_result("patchcore", 0.9),
        "tiling": {"tile": 224, "overlap": 32, "scale": 0.48},
        "vit_weight": 0.5,
    }
    row = [ln for ln in markdown([tiled], Path("d/x")).splitlines() if ln.startswith("| patchcore |")][0]
    assert "224 px tiles at scale 0.48" in row and "ViT weight 0.5 (measured on its held-out images)" in row
    plain = [
        ln for ln in markdown([_result("gtrans", 0.9)], Path("d/x")).splitlines() if ln.startswith("| gtrans")
    ]
    assert "this run" not in plain[0]


def test_a_row_says_which_patches_its_coreset_chose_from() -> None:
    def row(candidates: int) -> str:
        r = {**_result("patchcore", 0.9), "candidates": {"candidates": candidates, "patches": 400}}
        return [ln for ln in markdown([r], Path("d/x")).splitlines() if ln.startswith("| patchcore |")][0]

    assert "EfficientNet coreset from 100 of 400 patches (a turning grid)" in row(100)
    assert "EfficientNet coreset from every patch" in row(400)
