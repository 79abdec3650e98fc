"""Bad input from outside: damaged or foreign bundles, a pickle posing as a bundle, bad config keys, and
hostile threshold/set payloads over the real broker.

A bundle the daemon cannot trust must stop it with exit code 3 *before* it connects to the broker: nothing
is published (no retained ``online`` status that would claim a working station) and the error names the file.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.trust.manifest import MANIFEST_NAME, sha256_file
from tests.faults.conftest import (
    WAIT,
    DaemonProcess,
    Media,
    config_text,
    device_id,
    results,
    stats,
    write_config,
)
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber

EXIT_CONFIG, EXIT_STARTUP = 2, 3


# --- bundles that must be refused ---------------------------------------------------------------------


class TouchOnLoad:
    """Unpickling this creates ``path``: proof of whether anything unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.path,))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(TouchOnLoad(marker))


def test_the_pickle_payload_really_touches_its_file(tmp_path: Path) -> None:
    """Control for the tests below: loading this pickle does create the marker."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle_payload(marker))  # noqa: S301 - that is the point
    assert marker.exists()


def _tamper(bundle: Path, marker: Path) -> str:
    data = bytearray((bundle / "model.fp32.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (bundle / "model.fp32.onnx").write_bytes(bytes(data))
    return "model.fp32.onnx does not match its manifest"


def _truncate(bundle: Path, marker: Path) -> str:
    path = bundle / "model.fp32.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.fp32.onnx does not match its manifest"


def _future_schema(bundle: Path, marker: Path) -> str:
    doc = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    doc["schema_version"] = 99
    (bundle / MANIFEST_NAME).write_text(json.dumps(doc), encoding="utf-8")
    return "schema_version 99"


def _pickle_manifest(bundle: Path, marker: Path) -> str:
    (bundle / MANIFEST_NAME).write_bytes(pickle_payload(marker))
    return "manifest.json is not valid JSON"


def _pickle_model(bundle: Path, marker: Path) -> str:
    """The model file replaced by a pickle *and* the manifest's sha256 updated to match it."""
    model = bundle / "model.fp32.onnx"
    model.write_bytes(pickle_payload(marker))
    doc = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    doc["precisions"]["fp32"]["sha256"] = sha256_file(model)
    (bundle / MANIFEST_NAME).write_text(json.dumps(doc), encoding="utf-8")
    return "onnxruntime cannot load"


BAD_BUNDLES: dict[str, Callable[[Path, Path], str]] = {
    "one-bit-tampered": _tamper,
    "truncated": _truncate,
    "unknown-schema": _future_schema,
    "manifest-is-a-pickle": _pickle_manifest,
    "model-is-a-pickle": _pickle_model,
}


@pytest.mark.parametrize("damage", sorted(BAD_BUNDLES))
def test_untrusted_bundle_exits_3_before_connecting(
    damage: str, broker: Broker, media: Media, tmp_path: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    bundle = Path(shutil.copytree(media.bundle, tmp_path / "bundle"))
    marker = tmp_path / "unpickled-marker"
    expected = BAD_BUNDLES[damage](bundle, marker)
    _refused_before_connecting(bundle, expected, marker, broker, media, tmp_path, spawn)


def test_a_pickle_file_given_as_the_bundle_exits_3(
    broker: Broker, media: Media, tmp_path: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    marker = tmp_path / "unpickled-marker"
    bundle = tmp_path / "bundle.pkl"
    bundle.write_bytes(pickle_payload(marker))
    _refused_before_connecting(bundle, "is not a bundle", marker, broker, media, tmp_path, spawn)


def _refused_before_connecting(
    bundle: Path,
    expected: str,
    marker: Path,
    broker: Broker,
    media: Media,
    tmp_path: Path,
    spawn: Callable[..., DaemonProcess],
) -> None:
    dev = device_id("badbundle")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 20}]
    config = write_config(tmp_path, config_text(dev, broker, bundle, cams))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])  # subscribed before the daemon starts
    try:
        daemon = spawn(config)
        rc = daemon.wait()
        out = daemon.output()
        assert rc == EXIT_STARTUP, out[-3000:]
        assert expected in out, out[-3000:]
        assert str(bundle) in out  # the error names the file or folder to look at
        sub.barrier()
        assert sub.under(prefix) == [], "published although the bundle was refused"
    finally:
        sub.close()
    late = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    try:
        late.barrier()  # retained messages are sent on subscribe, before the barrier comes back
        assert late.under(prefix) == [], "a retained status exists for a daemon that never started"
    finally:
        late.close()
    log = broker.log.read_text(encoding="utf-8", errors="replace")
    assert sub.client_id in log  # the broker does log client ids, so the next line can fail
    assert f"edge-anomaly-{dev}" not in log, "the daemon connected to the broker"
    assert not marker.exists(), "something unpickled the file"


def test_unknown_config_keys_exit_2_naming_the_key(
    broker: Broker, media: Media, tmp_path: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    camera = {"name": "line", "source": str(media.video)}
    typo = write_config(
        tmp_path, config_text("cfg", broker, media.bundle, [{**camera, "fsp": 10}]), "typo.toml"
    )
    daemon = spawn(typo)
    assert daemon.wait() == EXIT_CONFIG
    assert "cameras[0].fsp: unknown key" in daemon.output()
    good = write_config(tmp_path, config_text("cfg", broker, media.bundle, [camera]), "good.toml")
    daemon = spawn(good, "--set", "mqtt.prot=1884")
    assert daemon.wait() == EXIT_CONFIG
    assert "mqtt.prot: unknown key" in daemon.output()


# --- hostile threshold/set payloads through the real broker -------------------------------------------------


class Station:
    """One running daemon shared by the threshold tests of this module, and a subscriber to all its topics."""

    def __init__(self, sub: Subscriber, prefix: str, daemon: DaemonProcess) -> None:
        self.sub = sub
        self.prefix = prefix
        self.daemon = daemon
        self.state_topic = f"{prefix}/line/threshold/state"

    def states(self) -> list[dict]:
        return [m.json() for m in self.sub.on(self.state_topic)]

    def set_threshold(self, payload: bytes) -> dict:
        """Publish on threshold/set and return the threshold/state it is answered with."""
        n = len(self.states())
        self.sub.publish(f"{self.prefix}/line/threshold/set", payload)
        assert self.sub.wait_for(lambda m: len(self.states()) > n, WAIT), f"no answer to {payload!r}"
        return self.states()[n]


@pytest.fixture(scope="module")
def station(broker: Broker, media: Media, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    tmp = tmp_path_factory.mktemp("station")
    dev = device_id("thr")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 15, "publish_mask": "never"}]
    config = write_config(tmp, config_text(dev, broker, media.bundle, cams))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    daemon = DaemonProcess(config, log=tmp / "daemon.log")
    station = Station(sub, prefix, daemon)
    try:
        assert sub.wait_for(lambda m: station.states() and results(sub, prefix, "line"), WAIT), (
            daemon.output()
        )
        yield station
        assert daemon.alive(), daemon.output()[-3000:]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


def _small(payload: bytes) -> bool:
    return len(payload) <= 64


numbers = st.one_of(st.integers(-10, 10), st.floats(-10, 10, allow_nan=False))
BAD_PAYLOADS = st.one_of(
    st.binary(min_size=65, max_size=300),  # oversized
    st.builds(lambda n: (" " * 64 + repr(float(n))).encode(), numbers),  # a valid number, but > 64 bytes
    st.binary(max_size=40).map(lambda b: b"\xff" + b),  # not UTF-8
    st.builds(lambda n: b"1" + bytes([0xC0 | (n % 32)]), st.integers(0, 31)),  # truncated multi-byte sequence
    st.sampled_from(
        [
            b"nan",
            b"NaN",
            b"-nan",
            b"inf",
            b"-inf",
            b"Infinity",
            b"-Infinity",
            b"1e999",
            b"-1e400",
            b'{"threshold": NaN}',
            b'{"threshold": Infinity}',
            b'{"threshold": -Infinity}',
            b'{"threshold": 1e999}',
            b"[1.0]",
            b'{"threshold": "1.0"}',
            b'{"threshold": null}',
            b'{"threshold": true}',
            b"true",
            b"null",
            b"",
            b"   ",
            b"1,5",
            b"0x10",
            b"1.0.0",
            b"+-1",
        ]
    ),  # fmt: skip
    st.sampled_from([b"+", b"#", b"+/#", b"1/#", b"line/+", b"*", b"$SYS", b"1.0#", b"+1#"]),  # wildcard-ish
    st.dictionaries(
        st.text(min_size=1, max_size=6).filter(lambda k: k != "threshold"), numbers, min_size=1, max_size=2
    )
    .map(lambda extra: json.dumps({"threshold": 1.0, **extra}).encode())
    .filter(_small),  # extra keys
    st.floats(allow_nan=False, allow_infinity=False)
    .filter(lambda x: abs(x) > 1000)
    .map(lambda x: repr(x).encode()),  # outside any sensible range
    st.sampled_from(
        [b"-1", b"-0.5", b"-1e-3", b"0.49", b"5e-324", b"12.5", b"101", b'{"threshold": -2}']
    ),  # outside the calibrated [0.5, 12] (bundle threshold 4: min(0.5, 4), max(3 x 4, 4 + 5))
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=BAD_PAYLOADS)
def test_bad_threshold_payloads_are_answered_with_an_error_and_change_nothing(
    station: Station, payload: bytes
) -> None:
    state = station.set_threshold(payload)
    assert state.get("error"), f"{payload!r} was accepted: {state}"
    assert state["threshold"] == 4.0 and state["source"] == "manifest", state
    assert state["range"] == [0.5, 12.0]  # from the bundle's calibration (default threshold 4)


def test_threshold_set_for_an_unknown_camera_is_ignored_and_counted(station: Station) -> None:
    sub, prefix = station.sub, station.prefix
    sub.publish(f"{prefix}/ghost/threshold/set", b"1.0")
    assert sub.wait_for(
        lambda m: any(s["commands"]["rejected_unknown_camera"] >= 1 for s in stats(sub, prefix)), WAIT
    )
    sub.barrier()
    assert sub.on(f"{prefix}/ghost/threshold/state") == []
    assert station.states()[-1]["threshold"] == 4.0  # the real camera's threshold is untouched


def test_verdicts_never_changed_and_a_valid_value_still_works(station: Station) -> None:
    """Runs after the hostile payloads: every verdict so far used the bundle's threshold."""
    sub, prefix = station.sub, station.prefix
    got = results(sub, prefix, "line")
    assert got and {(r["threshold"], r["threshold_source"]) for r in got} == {(4.0, "manifest")}
    assert all(r["anomalous"] == (r["score"] > 4.0) for r in got)
    # Every refusal was counted, and no error answer was retained (the retained state is the one in force).
    assert sub.wait_for(
        lambda m: any(s["commands"]["rejected_invalid"] >= 10 for s in stats(sub, prefix)), WAIT
    )
    late = Subscriber(sub.client.host, sub.client.port, [station.state_topic])
    try:
        late.barrier()
    finally:
        late.close()
    kept = late.on(station.state_topic)
    assert len(kept) == 1 and kept[0].retain and kept[0].json()["error"] is None
    # The channel works (so the refusals above are refusals, not a deaf subscriber).
    state = station.set_threshold(b"0.5")  # the lowest the calibration allows
    assert (state["threshold"], state["source"], state["error"]) == (0.5, "mqtt", None) and state["set_at"]
    assert sub.wait_for(lambda m: any(r["threshold"] == 0.5 for r in results(sub, prefix, "line")), WAIT)
    assert all(
        r["anomalous"] == (r["score"] > 0.5) for r in results(sub, prefix, "line") if r["threshold"] == 0.5
    )
