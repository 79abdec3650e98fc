"""``--check-config`` runs exactly the checks a start runs, for every camera's recipe: a recipe that is
unknown, unsigned or signed by a key the config does not trust fails the check (exit 3) as it fails a start
(exit 3). Before, the check verified model.bundle only and passed what a start refused."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.service.cli import EXIT_OK, EXIT_STARTUP, main
from edge.trust.manifest import MANIFEST_NAME
from edge.trust.signing import SIGNATURE_NAME, load_private_key, signature_document
from export.keygen import main as keygen_main
from tests.helpers.tiny_bundle import make_tiny_bundle

pytestmark = pytest.mark.usefixtures("clean_env")
REPO = Path(__file__).resolve().parents[2]


def sign(bundle: Path, key: Path) -> None:
    doc = signature_document(load_private_key(key), (bundle / MANIFEST_NAME).read_bytes())
    (bundle / SIGNATURE_NAME).write_bytes(doc)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recipes-check")
    with contextlib.redirect_stdout(io.StringIO()):
        assert keygen_main(["--out", str(root / "line")]) == 0
        assert keygen_main(["--out", str(root / "stranger")]) == 0
    base = make_tiny_bundle(root / "base", size=32)
    store = root / "store"
    for name, key in (("A", "line"), ("good", "line"), ("unsigned", None), ("foreign", "stranger")):
        shutil.copytree(base, store / name)
        if key is not None:
            sign(store / name, root / f"{key}.key")
    video = root / "parts.avi"
    video.write_bytes(b"x")
    return {"root": root, "store": store, "video": video}


def config(tmp_path: Path, setup: dict, recipe: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device_id = "rcp"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        f'[model]\nbundle = "{setup["store"] / "A"}"\n'
        f'store = "{setup["store"]}"\ntrusted_keys = ["{setup["root"] / "line.pub"}"]\n'
        f'[[cameras]]\nname = "a"\nsource = "{setup["video"]}"\nrecipe = "{recipe}"\n',
        encoding="utf-8",
    )
    return path


def check(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--config", str(path), "--check-config", "--no-camera-open"])  # the video is a stub
    return rc, err.getvalue()


def start(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.service.cli", "--config", str(path), "--max-frames", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_good_recipe_passes(tmp_path: Path, setup: dict) -> None:
    rc, err = check(config(tmp_path, setup, "good"))
    assert rc == EXIT_OK, err
    assert "ok      cameras[0].recipe (a): good" in err


@pytest.mark.parametrize(
    ("recipe", "why"),
    [("nope", "no recipe 'nope'"), ("unsigned", "not signed"), ("foreign", "trusted")],
)
def test_check_config_refuses_what_a_start_refuses(
    tmp_path: Path, setup: dict, recipe: str, why: str
) -> None:
    path = config(tmp_path, setup, recipe)
    rc, err = check(path)
    assert rc == EXIT_STARTUP, err
    failed = [line for line in err.splitlines() if line.startswith("FAILED  cameras[0].recipe (a)")]
    assert failed and why in failed[0], err
    started = start(path)
    assert started.returncode == EXIT_STARTUP, started.stdout[-2000:] + started.stderr[-2000:]
