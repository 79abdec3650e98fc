"""Shared fixtures: a real mosquitto broker and generated datasets. Nothing here needs ../shared."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers.broker import Broker, mosquitto_binary
from tests.helpers.sparkplug import Decoder, decode, install_decoder

# Hypothesis's per-example deadline is a timed assertion: on a loaded 2-core CI machine a 0.2 ms example
# can take 300 ms once, and the test fails for the machine, not the code. Behaviour is what tests check.
settings.register_profile("edge-anomaly", deadline=None)
settings.load_profile("edge-anomaly")

REPO = Path(__file__).resolve().parents[1]
MVTEC_BOTTLE = Path(
    os.environ.get("EDGE_MVTEC_BOTTLE", REPO.parent / "shared" / "data" / "mvtec-bottle" / "bottle")
)


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_trt = pytest.mark.skip(
        reason="TensorRT is not installed here (tests marked 'tensorrt' run on a device)"
    )
    skip_mvtec = pytest.mark.skip(
        reason=f"MVTec AD bottle not found at {MVTEC_BOTTLE} (set EDGE_MVTEC_BOTTLE)"
    )
    has_trt = _has_tensorrt()
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "mvtec" in item.keywords and not MVTEC_BOTTLE.is_dir():
            item.add_marker(skip_mvtec)


@pytest.fixture(scope="session", autouse=True)
def state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Daemons started by tests (in process or not) keep their state here, never in /var/lib/edge-anomaly.

    systemd's STATE_DIRECTORY is what the daemon's default honours, and subprocesses inherit it.
    """
    folder = tmp_path_factory.mktemp("edge-state")
    previous = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("STATE_DIRECTORY", None)
    else:
        os.environ["STATE_DIRECTORY"] = previous


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One real mosquitto for the whole session, on a free loopback port."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run `bash scripts/test.sh`, which installs it")
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker only this test uses, so it can be stopped and restarted."""
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tahu() -> Decoder:
    """Eclipse Tahu's JavaScript Sparkplug decoder (tests/node); skips with the reason when node is absent."""
    reason = install_decoder()
    if reason is not None:
        pytest.skip(reason)
    return decode


@pytest.fixture(scope="session")
def mvtec_bottle() -> Path:
    if not MVTEC_BOTTLE.is_dir():
        pytest.skip(f"MVTec AD bottle not found at {MVTEC_BOTTLE} (set EDGE_MVTEC_BOTTLE)")
    return MVTEC_BOTTLE


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout dataset of generated parts (train/good, test/{good,blob,scratch},
    ground_truth)."""
    from training.synthetic import write_mvtec_dataset

    return write_mvtec_dataset(
        tmp_path_factory.mktemp("synthetic") / "parts", n_train=48, n_test_good=8, n_test_defect=8
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own EDGE_* variables must not change the configs a test writes or reads.

    Modules that build configs ask for it with ``pytestmark = pytest.mark.usefixtures("clean_env")``."""
    for key in list(os.environ):
        if key.upper().startswith("EDGE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Subprocesses a test starts; any still running at its end is killed."""
    made: list[subprocess.Popen] = []
    yield made
    for proc in made:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
