"""Small things that made the product look unfinished (issue 30, item 7): payload float noise, "signed by
unsigned", the trusted-keys WARNING at every start of an unsigned set-up, overlay text over the part."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge.config import load_config
from edge.results.payload_numbers import tidy, tidy_float
from edge.results.payloads import ThresholdStatePayload
from edge.service.checks import check_bundle, verified_manifest
from edge.trust.signing import SIGNATURE_NAME
from tests.helpers.tiny_bundle import make_tiny_bundle
from tools.demo import annotated_overlay

pytestmark = pytest.mark.usefixtures("clean_env")


def test_payload_floats_are_rounded_in_to_bytes() -> None:
    doc = ThresholdStatePayload(
        camera="a", threshold=1.4999999999999996, source="manifest", set_at=None, range=(0.1 + 0.2, 3.0)
    )
    wire = doc.to_bytes()
    assert b'"threshold":1.5,' in wire and b'"range":[0.3,3.0]' in wire
    assert json.loads(wire) == {
        **json.loads(doc.model_dump_json(by_alias=True)),
        "threshold": 1.5,
        "range": [0.3, 3.0],
    }


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (1.4999999999999996, 1.5),
        (1796000000.123456, 1796000000.123456),  # an epoch timestamp keeps its microseconds
        (2.3456789012345e-7, 2.34567890123e-7),  # small numbers keep 12 significant digits
        (-0.30000000000000004, -0.3),
        (0.0, 0.0),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_tidy_float(raw: float, shown: float | None) -> None:
    assert tidy_float(raw) == shown


def test_tidy_leaves_other_values_alone() -> None:
    assert tidy({"a": [1, True, "x", None, 2.0000000000000004]}) == {"a": [1, True, "x", None, 2.0]}


def config_for(tmp_path: Path, bundle: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'device_id = "p"\n[model]\nbundle = "{bundle}"\n[[cameras]]\nname = "a"\nsource = "0"\n')
    return path


def test_check_line_reads_as_a_sentence_and_unsigned_is_info_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    config = load_config(config_for(tmp_path, bundle))
    caplog.set_level(logging.INFO, logger="edge.checks")
    check = check_bundle(config)
    verified_manifest(config.model)  # a second verification (a changeover, --check-config then start)
    assert check.ok and "signed by unsigned" not in check.detail
    assert check.detail.endswith("fp32, signature not checked (no trusted keys)")
    notes = [r for r in caplog.records if "trusted_keys is empty" in r.getMessage()]
    assert [r.levelname for r in notes] == ["INFO"]  # once, and not a WARNING


def test_a_signed_bundle_with_no_trusted_keys_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    (bundle / SIGNATURE_NAME).write_text("{}")  # signed, but nothing on this device checks it
    caplog.set_level(logging.INFO, logger="edge.checks")
    verified_manifest(load_config(config_for(tmp_path, bundle)).model)
    notes = [r for r in caplog.records if "trusted_keys is empty" in r.getMessage()]
    assert [r.levelname for r in notes] == ["WARNING"] and "is signed, but" in notes[0].getMessage()


def test_demo_overlay_text_is_in_a_banner_not_on_the_part() -> None:
    frame = np.full((64, 64, 3), 100, np.uint8)
    out = annotated_overlay(
        frame,
        np.zeros((64, 64), np.uint8),
        {"frame_id": 3, "score": 1.0, "threshold": 2.0, "anomalous": False},
    )
    assert out.shape[0] > 64 and out.shape[1] == 64
    assert np.array_equal(out[-64:], frame)
