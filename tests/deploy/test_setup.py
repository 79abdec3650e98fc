"""scripts/setup.sh's apt-get waits for the dpkg lock with a message instead of failing at once.

A fake ``apt-get`` on PATH reports the lock for its first calls, as apt does while unattended-upgrades runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APT_LIB = REPO / "scripts" / "lib" / "apt.sh"

FAKE_APT = """#!/usr/bin/env bash
n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"
if [ "$n" -lt {busy} ]; then
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 123 (unattended-upgr)" >&2
  exit 100
fi
if [ "{fail}" = 1 ]; then echo "E: Unable to locate package nosuch" >&2; exit 100; fi
echo "installed: $*"
"""


def run_apt(
    tmp_path: Path, busy: int, fail: bool = False, wait_s: int = 60
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "apt-get"
    fake.write_text(FAKE_APT.format(count=tmp_path / "calls", busy=busy, fail=int(fail)))
    fake.chmod(0o755)
    script = f'SUDO=" " . "{APT_LIB}"; apt_get install -y mosquitto'
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APT_LOCK_RETRY_S": "0", "APT_LOCK_WAIT_S": str(wait_s)}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_waits_while_the_lock_is_held_then_installs(tmp_path: Path) -> None:
    done = run_apt(tmp_path, busy=3)
    assert done.returncode == 0, done.stderr
    assert "installed: -o DPkg::Lock::Timeout=0 install -y mosquitto" in done.stdout
    assert done.stderr.count("waiting for it") == 3
    assert (tmp_path / "calls").read_text().strip() == "4"


def test_other_errors_fail_at_once_with_apts_message(tmp_path: Path) -> None:
    done = run_apt(tmp_path, busy=0, fail=True)
    assert done.returncode != 0
    assert "Unable to locate package" in done.stderr and "waiting" not in done.stderr


def test_gives_up_with_a_clear_line_when_the_lock_stays(tmp_path: Path) -> None:
    done = run_apt(tmp_path, busy=1000, wait_s=0)
    assert done.returncode != 0
    assert "still held" in done.stderr and "Run this again" in done.stderr
