"""A hostile or broken manifest stops the daemon with exit 3 and one clear line, and opens nothing outside
the bundle: path entries, symlinks, NaN/inf/huge/boolean numbers, size, nesting and schema versions.

Every case goes through ``edge-run`` itself (in-process): once as a start and once as ``--check-config``.
Files opened are recorded with a hook on ``os.open`` and ``builtins.open`` that resolves each new descriptor
through /proc/self/fd, so a file reached through ``..``, an absolute path or a link is seen by its real path.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.service.cli import EXIT_STARTUP, main
from edge.trust.manifest import FILE_NAME, MAX_MANIFEST_BYTES, BundleError, verify_bundle
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("pristine") / "bundle", size=32, precisions=("fp32", "int8")
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pristine: Path) -> dict[str, Path]:
    """A bundle copy to mutate, a sentinel model outside it with a real hash, and a config naming them."""
    root = tmp_path_factory.mktemp("site")
    bundle = root / "bundle"
    shutil.copytree(pristine, bundle)
    outside = root / "outside"
    outside.mkdir()
    sentinel = outside / "secret.onnx"
    shutil.copy(pristine / "model.fp32.onnx", sentinel)  # same bytes: a matching hash must not help
    video = root / "parts.avi"
    write_video(video, part_sequence(2, 2, size=32, seed=1)[0])  # --check-config opens it and reads a frame
    config = root / "edge.toml"
    config.write_text(
        f'device_id = "trust"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n[model]\nbundle = "{bundle}"\n'
        f'[[cameras]]\nname = "a"\nsource = "{video}"\n',
        encoding="utf-8",
    )
    return {"root": root, "bundle": bundle, "sentinel": sentinel, "config": config, "pristine": pristine}


def pristine_doc(site: dict[str, Path]) -> dict[str, Any]:
    return json.loads((site["pristine"] / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(site: dict[str, Path], text: str) -> None:
    bundle = site["bundle"]
    for name in ("model.fp32.onnx", "model.int8.onnx"):  # undo a planted link from an earlier example
        path = bundle / name
        if path.is_symlink():
            path.unlink()
            shutil.copy(site["pristine"] / name, path)
    (bundle / "manifest.json").write_text(text, encoding="utf-8")


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """Real paths of every file opened through os.open, builtins.open or io.open (pathlib) in the block."""
    seen: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def record(fd: int) -> None:
        with contextlib.suppress(OSError):
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = real_os_open(path, flags, mode, dir_fd=dir_fd)
        record(fd)
        return fd

    def open_(file: Any, *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, *args, **kwargs)
        with contextlib.suppress(Exception):
            record(fh.fileno())
        return fh

    os.open, builtins.open, io.open = os_open, open_, open_  # type: ignore[assignment]
    try:
        yield seen
    finally:
        os.open, builtins.open, io.open = real_os_open, real_open, real_open  # type: ignore[assignment]


def run_cli(site: dict[str, Path], *extra: str) -> tuple[int, str, list[str]]:
    err = io.StringIO()
    with opened_files() as seen, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--config", str(site["config"]), *extra])
    return rc, err.getvalue(), seen


def assert_refused(site: dict[str, Path]) -> str:
    """Both a start and --check-config exit 3 with one bundle line, no traceback, nothing opened outside."""
    allowed = (str(site["bundle"]), str(site["config"]))
    for extra in ((), ("--check-config",)):
        rc, err, seen = run_cli(site, *extra)
        assert rc == EXIT_STARTUP, err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if "model.bundle: " in line]
        assert len(lines) == 1, err
        outside = [
            p
            for p in seen
            if p.startswith(str(site["root"])) and not p.startswith(allowed[0] + os.sep) and p not in allowed
        ]
        assert outside == [], f"opened outside the bundle: {outside}"
        assert str(site["sentinel"]) not in seen
    with pytest.raises(BundleError) as exc:
        verify_bundle(site["bundle"])
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_the_pristine_bundle_passes(site: dict[str, Path]) -> None:
    write_manifest(site, (site["pristine"] / "manifest.json").read_text(encoding="utf-8"))
    rc, err, _ = run_cli(site, "--check-config")
    assert rc == 0, err
    assert "ok      model.bundle" in err


# ---- file entries ------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../outside/secret.onnx",
    "../../etc/passwd",
    "/etc/passwd",
    "{sentinel}",
    "sub/model.fp32.onnx",
    "..\\outside\\secret.onnx",
    "C:\\model.onnx",
    "model.fp32.onnx\x00.txt",
    "..",
    ".",
    "",
    ".hidden.onnx",
    "manifest.json",
    "manifest.sig",
    "model.fp16.onnx",  # a plain name, but not the fp32 model's name
]
name_strategy = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(alphabet=st.sampled_from(list("./\\\x00ab~:")), max_size=24).filter(
        lambda s: not FILE_NAME.match(s)
    ),
)


@FUZZ
@given(name=name_strategy, where=st.sampled_from(["fp32", "files"]))
def test_file_entries_must_be_plain_names_in_the_bundle(site: dict[str, Path], name: str, where: str) -> None:
    doc = pristine_doc(site)
    name = name.replace("{sentinel}", str(site["sentinel"]))
    sha = doc["precisions"]["fp32"]["sha256"]  # the sentinel's real hash
    if where == "fp32":
        doc["precisions"]["fp32"]["file"] = name
    else:
        doc["files"] = {name: sha}
    write_manifest(site, json.dumps(doc))
    message = assert_refused(site)
    assert sha[:8] not in message  # no hash bits leak


@pytest.mark.parametrize("target", ["sentinel", "dangling", "directory"])
def test_a_symlink_in_place_of_a_model_is_refused(site: dict[str, Path], target: str) -> None:
    write_manifest(site, (site["pristine"] / "manifest.json").read_text(encoding="utf-8"))
    model = site["bundle"] / "model.fp32.onnx"
    model.unlink()
    dest = {"sentinel": site["sentinel"], "dangling": site["root"] / "nowhere", "directory": site["root"]}[
        target
    ]
    model.symlink_to(dest)
    try:
        message = assert_refused(site)
        assert "symbolic link" in message
    finally:
        model.unlink()
        shutil.copy(site["pristine"] / "model.fp32.onnx", model)


def test_a_symlinked_manifest_is_refused(site: dict[str, Path]) -> None:
    outside = site["root"] / "evil-manifest.json"
    outside.write_text((site["pristine"] / "manifest.json").read_text(encoding="utf-8"), encoding="utf-8")
    manifest = site["bundle"] / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(outside)
    try:
        assert "symbolic link" in assert_refused(site)
    finally:
        manifest.unlink()
        write_manifest(site, outside.read_text(encoding="utf-8"))


def test_a_mismatch_names_the_file_but_no_hash_bits(site: dict[str, Path]) -> None:
    doc = pristine_doc(site)
    real = doc["precisions"]["fp32"]["sha256"]
    doc["precisions"]["fp32"]["sha256"] = "0" * 64
    write_manifest(site, json.dumps(doc))
    message = assert_refused(site)
    assert "model.fp32.onnx" in message and "sha256 differs" in message
    assert real[:6] not in message and "0000" not in message


# ---- numbers -----------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# each field with values that must be refused: non-finite, out of the calibrated range, booleans, strings
BAD_NUMBERS: dict[tuple[Any, ...], list[Any]] = {
    ("threshold", "default"): [NAN, INF, -INF, 999.0, 1e300, -5.0, True, False, "4.0", None],
    ("normalization", "offset"): [NAN, INF, -INF, 1e300, True, "0.1", None],
    ("normalization", "scale"): [NAN, INF, 0.0, -1.0, 1e-300, 1e300, True, "1"],
    ("normalization", "n_images"): [-1, 1e300, True, 2.5, "16"],
    ("threshold", "false_alarm_rate"): [NAN, 0.0, 0.7, -0.1, True, INF],
    ("input", "height"): [0, 8, 10**9, True, 32.5, NAN, "32"],
    ("input", "max_batch"): [0, -1, 10**7, True, INF],
    ("input", "mean", 0): [NAN, INF, 1e9, True, "0"],
    ("input", "std", 1): [NAN, 0.0, -255.0, INF, False],
    ("opset",): [True, 0, 10**6, NAN, "17"],
    ("schema_version",): [True, 1.0, 2, 0, -1, "1", None, NAN],
}
bad_number = st.sampled_from(sorted(BAD_NUMBERS, key=str)).flatmap(
    lambda path: st.tuples(st.just(path), st.sampled_from(BAD_NUMBERS[path]))
)


def set_path(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@FUZZ
@given(case=bad_number)
def test_every_number_is_typed_finite_and_in_range(site: dict[str, Path], case: tuple[Any, Any]) -> None:
    path, value = case
    doc = pristine_doc(site)
    set_path(doc, path, value)
    write_manifest(site, json.dumps(doc, allow_nan=True))  # NaN/Infinity tokens, as a hand edit would write
    assert_refused(site)


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_number_literals_that_overflow_or_are_not_numbers(site: dict[str, Path], literal: str) -> None:
    doc = pristine_doc(site)
    doc["model"]["config"]["blur_sigma"] = "@@"  # numbers anywhere, even in free-form config
    write_manifest(site, json.dumps(doc).replace('"@@"', literal))
    assert_refused(site)


def test_threshold_range_follows_the_calibration(site: dict[str, Path]) -> None:
    """0 is the median good part and 1 the worst 1 %: a threshold of 0.5 runs, -0.1 and 101 do not."""
    doc = pristine_doc(site)
    doc["threshold"]["default"] = 0.5
    write_manifest(site, json.dumps(doc))
    verify_bundle(site["bundle"])
    for value in (-0.1, 101.0):
        doc["threshold"]["default"] = value
        write_manifest(site, json.dumps(doc))
        assert "threshold.default" in assert_refused(site)


# ---- size, nesting, duplicate keys, schema -----------------------------------------------------------------


@FUZZ
@given(depth=st.integers(min_value=33, max_value=200_000), kind=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_one_line_not_a_traceback(site: dict[str, Path], depth: int, kind: str) -> None:
    doc = pristine_doc(site)
    doc["model"]["config"] = {"deep": "@@"}
    close = "]" if kind == "[" else "}"
    nested = kind * depth + "1" + close * depth
    text = json.dumps(doc).replace('"@@"', nested)
    write_manifest(site, text)
    message = assert_refused(site)
    assert "nested" in message or "larger than" in message


def test_an_oversized_manifest_is_refused_before_it_is_parsed(site: dict[str, Path]) -> None:
    doc = pristine_doc(site)
    doc["model"]["config"]["pad"] = "x" * MAX_MANIFEST_BYTES
    write_manifest(site, json.dumps(doc))
    assert "larger than" in assert_refused(site)


def test_duplicate_keys_are_refused(site: dict[str, Path]) -> None:
    """Two parsers could read a duplicated key differently (first vs last wins): refuse it."""
    text = (site["pristine"] / "manifest.json").read_text(encoding="utf-8")
    write_manifest(site, text.replace('"threshold": {', '"threshold": {"default": 999.0, ', 1))
    assert "twice" in assert_refused(site)


@FUZZ
@given(junk=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_garbage_is_one_line(site: dict[str, Path], junk: bytes) -> None:
    write_manifest(site, "")
    (site["bundle"] / "manifest.json").write_bytes(junk)
    assert_refused(site)


@pytest.mark.parametrize("value", [math.pi, 1e-9])
def test_values_inside_the_ranges_still_load(site: dict[str, Path], value: float) -> None:
    doc = pristine_doc(site)
    doc["threshold"]["default"] = value
    write_manifest(site, json.dumps(doc))
    assert verify_bundle(site["bundle"]).threshold.default == value


def test_an_fp32_model_listed_as_int8_is_refused(site: dict[str, Path]) -> None:
    """A model cannot be reported as a precision it is not: the int8 entry must hold a Q/DQ graph."""
    doc = pristine_doc(site)
    int8 = site["bundle"] / "model.int8.onnx"
    shutil.copy(site["pristine"] / "model.fp32.onnx", int8)
    doc["precisions"]["int8"]["sha256"] = doc["precisions"]["fp32"]["sha256"]
    del doc["precisions"]["fp32"]
    write_manifest(site, json.dumps(doc))
    try:
        with pytest.raises(BundleError, match="no Q/DQ"):
            verify_bundle(site["bundle"])
    finally:
        shutil.copy(site["pristine"] / "model.int8.onnx", int8)


# ---- tiling ------------------------------------------------------------------------------------------------

BAD_TILINGS: list[tuple[Any, str]] = [
    ({"tile": 64, "overlap": 0, "scale": 1.0}, "differs from the model input"),  # the bundle's input is 32
    ({"tile": 32, "overlap": 17, "scale": 1.0}, "more than half the tile"),
    ({"tile": 32, "overlap": -1, "scale": 1.0}, "tiling.overlap"),
    ({"tile": 32, "overlap": 0, "scale": 0.0}, "tiling.scale"),
    ({"tile": 32, "overlap": 0, "scale": 1e300}, "tiling.scale"),
    ({"tile": 32, "overlap": 0, "scale": "1"}, "tiling.scale"),
    ({"tile": True, "overlap": 0, "scale": 1.0}, "tiling.tile"),
    ({"tile": 8, "overlap": 0, "scale": 1.0}, "tiling.tile"),
    ({"tile": 32, "overlap": 0, "scale": 1.0, "pad": 4}, "tiling.pad"),
    ("32", "input.tiling"),
]


@pytest.mark.parametrize(("tiling", "named"), BAD_TILINGS)
def test_hostile_tiling_values_are_refused(site: dict[str, Path], tiling: Any, named: str) -> None:
    doc = pristine_doc(site)
    doc["input"]["tiling"] = tiling
    write_manifest(site, json.dumps(doc))
    assert named in assert_refused(site)


def test_a_valid_tiling_loads_and_changes_the_bundle_id(site: dict[str, Path]) -> None:
    doc = pristine_doc(site)
    assert "tiling" not in doc["input"]  # a whole-image bundle's manifest is what it was before tiling
    write_manifest(site, json.dumps(doc))
    whole = verify_bundle(site["bundle"])
    doc["input"]["tiling"] = {"tile": 32, "overlap": 8, "scale": 0.5}
    write_manifest(site, json.dumps(doc))
    tiled = verify_bundle(site["bundle"])
    pre = tiled.input.preprocess()
    assert pre.tiling is not None and (pre.tiling.tile, pre.tiling.overlap, pre.tiling.scale) == (32, 8, 0.5)
    assert whole.input.preprocess().tiling is None
    assert tiled.model_id() != whole.model_id()
