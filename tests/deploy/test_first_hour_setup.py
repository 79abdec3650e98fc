"""scripts/setup.sh ends with the one line that puts the commands on PATH (issue 30, item 1).

The script runs in a copy of the repository's scripts with a stamp that says pip already ran, and stub
``mosquitto``/``npm`` on PATH, so nothing is installed and it takes a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".edge-anomaly-installed").write_text(digest + "\n")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("mosquitto", "npm"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    return root


def _setup(root: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    full = {**base, "PATH": f"{tmp_path / 'stubs'}:{os.environ['PATH']}", **env}
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh")], env=full, capture_output=True, text=True, timeout=60
    )


def test_setup_ends_with_the_activate_line(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    done = _setup(root, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pip" not in done.stderr.split("up to date", 1)[1]  # the stamp skipped the install
    last = done.stderr.strip().splitlines()[-1].strip()
    assert last == f"source {root.resolve()}/.venv/bin/activate"
    assert "on PATH" in done.stderr.strip().splitlines()[-2]


def test_setup_with_python_names_that_interpreters_scripts_folder(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    shim = tmp_path / "pybin"
    shim.mkdir()
    # a PYTHON whose pip step is a no-op: the hint must still name where its commands live
    fake = shim / "python"
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-m" ] && exit 0\nexec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    done = _setup(root, tmp_path, PYTHON=str(fake))
    assert done.returncode == 0, done.stderr
    last = done.stderr.strip().splitlines()[-1].strip()
    assert last == f'export PATH="{sysconfig.get_path("scripts")}:$PATH"'
