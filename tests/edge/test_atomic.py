"""The one atomic write: the target holds the old content or the new one, never part of either."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edge.util.atomic import TEMP_SUFFIX, atomic_file, write_atomically, write_json_atomically


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_file(target) as fh:
        fh.write(b"ne")
        raise OSError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_replaces_the_file_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "engine.bin"
    assert write_atomically(target, b"new bytes") == target
    assert target.read_bytes() == b"new bytes"
    assert not any(p.name.endswith(TEMP_SUFFIX) for p in target.parent.iterdir())


def test_json_is_sorted_and_nan_is_refused_without_touching_the_file(tmp_path: Path) -> None:
    target = tmp_path / "thresholds.json"
    write_json_atomically(target, {"b": 1, "a": 2.5})
    assert json.loads(target.read_text()) == {"a": 2.5, "b": 1}
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    with pytest.raises(ValueError):
        write_json_atomically(target, {"a": math.nan})
    assert json.loads(target.read_text()) == {"a": 2.5, "b": 1}
