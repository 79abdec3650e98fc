"""deploy/install.sh under a scratch root (--root): what it writes, with which modes, and that it is
idempotent.

Nothing here touches the real system: under --root every path is prefixed and system commands (useradd,
chown, systemctl, the engine build) are printed instead of run; --skip-venv leaves pip out, and --python
(this interpreter, which has edge-anomaly installed) verifies each bundle before it replaces anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny_bundle import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"

pytestmark = pytest.mark.timeout(120)

Tree = dict[str, tuple[str, str]]


def snapshot(root: Path) -> Tree:
    """{relative path: (octal mode, sha256 or 'dir')} for everything under root."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = "dir" if stat.S_ISDIR(st.st_mode) else hashlib.sha256(path.read_bytes()).hexdigest()
            tree[str(path.relative_to(root))] = (oct(stat.S_IMODE(st.st_mode)), digest)
    return tree


def run_install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--skip-venv", "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, f"install.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    return make_tiny_bundle(root / "bundle", size=32, precisions=("fp32", "int8"))


@pytest.fixture
def bundle(tmp_path: Path, pristine: Path) -> Path:
    """A real bundle (install.sh verifies it before installing), with an engines/ folder built elsewhere."""
    path = tmp_path / "bundle"
    shutil.copytree(pristine, path)
    (path / "engines").mkdir()
    (path / "engines" / "other-gpu.engine").write_bytes(b"engine built elsewhere")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    text = (DEPLOY / "config.example.toml").read_text(encoding="utf-8")
    path.write_text(text.replace('device_id = "line3-station2"', 'device_id = "press-7"'), encoding="utf-8")
    return path


def test_dry_run_prints_every_action_and_writes_nothing(root: Path, bundle: Path, config: Path) -> None:
    before = snapshot(root)
    proc = run_install(root, "--dry-run", "--bundle", str(bundle), "--config", str(config), "--tensorrt")
    assert snapshot(root) == before == {}
    out = proc.stdout
    for expected in (
        "dry run: nothing is changed",
        "would run: useradd --system",
        "would create /etc/edge-anomaly/ (mode 0750, owner root:edge-anomaly)",
        "would install /etc/edge-anomaly/config.toml (mode 0640, owner root:edge-anomaly)",
        "would install /var/lib/edge-anomaly/bundle/manifest.json (mode 0640, owner root:edge-anomaly)",
        "would install /var/lib/edge-anomaly/bundle/model.int8.onnx (mode 0640, owner root:edge-anomaly)",
        "would create /var/lib/edge-anomaly/ (mode 0755, owner root:root)",
        "would create /var/lib/edge-anomaly/engines/ (mode 0750, owner edge-anomaly:edge-anomaly)",
        "would install /etc/systemd/system/edge-anomaly.service (mode 0644, owner root:root)",
        "would install /etc/systemd/system/edge-anomaly.service.d/10-tensorrt.conf (mode 0644, owner "
        "root:root)",
        "/opt/edge-anomaly/venv/bin/edge-export --build-engine /var/lib/edge-anomaly/bundle "
        "--engine-cache-dir /var/lib/edge-anomaly/engines",
        "would run: systemctl daemon-reload",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    assert "other-gpu.engine" not in out


def test_dry_run_plans_the_venv_with_system_site_packages(root: Path) -> None:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--dry-run", "--system-python", "--source", str(REPO)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (
        f"would run: /usr/bin/python3 -m venv --system-site-packages {root}/opt/edge-anomaly/venv"
        in proc.stdout
    )
    # dependencies only from the hashed lock for this Python, then the package itself without resolving
    assert re.search(
        r"-m pip install --require-hashes -r \S+/deploy/requirements(-py\d+)?\.lock", proc.stdout
    )
    assert f"-m pip install --no-deps {REPO}" in proc.stdout
    assert snapshot(root) == {}


def test_scratch_install_writes_the_expected_files_and_modes(root: Path, bundle: Path, config: Path) -> None:
    run_install(root, "--bundle", str(bundle), "--config", str(config), "--tensorrt", "--jetson")
    tree = snapshot(root)
    modes = {path: mode for path, (mode, _) in tree.items()}
    expected = {
        "etc/edge-anomaly": "0o750",
        "etc/edge-anomaly/config.toml": "0o640",
        "etc/systemd/system/edge-anomaly.service": "0o644",
        "etc/systemd/system/edge-anomaly.service.d/10-tensorrt.conf": "0o644",
        "etc/systemd/system/edge-anomaly.service.d/20-jetson.conf": "0o644",
        "var/lib/edge-anomaly": "0o755",
        "var/lib/edge-anomaly/bundle": "0o750",
        "var/lib/edge-anomaly/bundle/manifest.json": "0o640",
        "var/lib/edge-anomaly/bundle/model.fp32.onnx": "0o640",
        "var/lib/edge-anomaly/bundle/model.int8.onnx": "0o640",
        "var/lib/edge-anomaly/engines": "0o750",
        "var/lib/edge-anomaly/installed-paths": "0o644",
        "var/cache/edge-anomaly": "0o750",
        "opt/edge-anomaly/share/config.example.toml": "0o644",
    }
    for path, mode in expected.items():
        assert modes.get(path) == mode, f"{path}: mode {modes.get(path)}, expected {mode}"
    assert (root / "etc/edge-anomaly/config.toml").read_text() == config.read_text()
    assert (root / "etc/systemd/system/edge-anomaly.service").read_text() == (
        DEPLOY / "edge-anomaly.service"
    ).read_text()
    for name in ("manifest.json", "model.fp32.onnx", "model.int8.onnx"):
        assert (root / "var/lib/edge-anomaly/bundle" / name).read_bytes() == (bundle / name).read_bytes()
    # Engines are tied to one GPU and TensorRT version: never copied from the workstation, and they live in
    # the service's own directory, not in the root-owned bundle.
    assert not (root / "var/lib/edge-anomaly/bundle/engines").exists()
    assert list((root / "var/lib/edge-anomaly/engines").iterdir()) == []
    assert (
        "MemoryDenyWriteExecute=no"
        in (root / "etc/systemd/system/edge-anomaly.service.d/10-tensorrt.conf").read_text()
    )
    # Nothing outside the expected places; the venv is --skip-venv'd.
    assert not (root / "opt/edge-anomaly/venv").exists()
    assert {p.split("/")[0] for p in tree} == {"etc", "opt", "var"}


def test_second_run_changes_nothing(root: Path, bundle: Path, config: Path) -> None:
    args = ("--bundle", str(bundle), "--config", str(config), "--tensorrt", "--jetson")
    first = run_install(root, *args)
    assert "done: 0 change(s)" not in first.stdout
    tree = snapshot(root)
    second = run_install(root, *args)
    assert snapshot(root) == tree
    assert "done: 0 change(s)." in second.stdout
    assert not re.search(r"^(installed|created|removed|chmod) ", second.stdout, re.M), second.stdout
    assert "try-restart" not in second.stdout  # nothing changed, so a running service is left alone
    assert "unchanged /etc/edge-anomaly/config.toml" in second.stdout
    assert "unchanged /var/lib/edge-anomaly/bundle/model.fp32.onnx" in second.stdout


def test_a_changed_file_is_reinstalled_and_its_mode_restored(root: Path, bundle: Path, config: Path) -> None:
    run_install(root, "--bundle", str(bundle), "--config", str(config))
    unit = root / "etc/systemd/system/edge-anomaly.service"
    unit.write_text("tampered\n")
    unit.chmod(0o666)
    proc = run_install(root, "--bundle", str(bundle), "--config", str(config))
    assert "installed /etc/systemd/system/edge-anomaly.service (mode 0644" in proc.stdout
    assert "try-restart edge-anomaly.service" in proc.stdout
    assert unit.read_text() == (DEPLOY / "edge-anomaly.service").read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644


def test_existing_config_is_kept_unless_forced(
    root: Path, bundle: Path, config: Path, tmp_path: Path
) -> None:
    run_install(root, "--config", str(config))
    installed = root / "etc/edge-anomaly/config.toml"
    installed.write_text(installed.read_text() + "\n# local edit\n")
    edited = installed.read_text()
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace("press-7", "press-8"))

    kept = run_install(root, "--config", str(other))
    assert installed.read_text() == edited
    assert "kept /etc/edge-anomaly/config.toml" in kept.stdout and "--force-config" in kept.stdout
    no_config = run_install(root)
    assert installed.read_text() == edited and "unchanged /etc/edge-anomaly/config.toml" in no_config.stdout

    run_install(root, "--config", str(other), "--force-config")
    assert installed.read_text() == other.read_text()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640


def test_first_install_without_config_uses_the_example(root: Path) -> None:
    proc = run_install(root)
    assert (root / "etc/edge-anomaly/config.toml").read_text() == (DEPLOY / "config.example.toml").read_text()
    assert "Edit /etc/edge-anomaly/config.toml before starting" in proc.stdout


def test_bundle_update_replaces_files_removes_stale_ones_and_keeps_engines(
    root: Path, bundle: Path, config: Path, tmp_path: Path
) -> None:
    run_install(root, "--bundle", str(bundle), "--config", str(config))
    installed = root / "var/lib/edge-anomaly/bundle"
    engines = root / "var/lib/edge-anomaly/engines"
    (engines / "orin-trt10.3-int8-abc.engine").write_bytes(b"built on this device")
    new = make_tiny_bundle(tmp_path / "bundle-v2", size=16)  # fp32 only

    proc = run_install(root, "--bundle", str(new), "--config", str(config))
    assert sorted(p.name for p in installed.iterdir()) == ["manifest.json", "model.fp32.onnx"]
    assert (installed / "model.fp32.onnx").read_bytes() == (new / "model.fp32.onnx").read_bytes()
    assert "removed /var/lib/edge-anomaly/bundle/model.int8.onnx" in proc.stdout
    assert (engines / "orin-trt10.3-int8-abc.engine").read_bytes() == b"built on this device"


def test_prefix_is_carried_into_the_unit(root: Path) -> None:
    run_install(root, "--prefix", "/srv/anomaly")
    unit = (root / "etc/systemd/system/edge-anomaly.service").read_text()
    assert "ExecStart=/srv/anomaly/venv/bin/edge-run --config /etc/edge-anomaly/config.toml" in unit
    assert "/opt/edge-anomaly" not in unit
    assert (root / "srv/anomaly/share/config.example.toml").is_file()


def test_uninstall_keeps_state_and_config_and_purge_removes_them(
    root: Path, bundle: Path, config: Path
) -> None:
    run_install(root, "--bundle", str(bundle), "--config", str(config), "--tensorrt")
    # A file install.sh did not create (the venv is --skip-venv'd): it must survive the uninstall.
    (root / "opt/edge-anomaly/venv/bin").mkdir(parents=True)
    (root / "opt/edge-anomaly/venv/bin/edge-run").write_text("#!/bin/sh\n")

    dry = run_install(root, "--uninstall", "--dry-run")
    assert "would remove /etc/systemd/system/edge-anomaly.service" in dry.stdout
    assert (root / "etc/systemd/system/edge-anomaly.service").exists()

    proc = run_install(root, "--uninstall")
    assert "skipped under --root: systemctl disable --now edge-anomaly.service" in proc.stdout
    assert not (root / "etc/systemd/system/edge-anomaly.service").exists()
    assert not (root / "etc/systemd/system/edge-anomaly.service.d").exists()
    assert not (root / "opt/edge-anomaly/share").exists()  # what install.sh put there is gone
    assert (root / "opt/edge-anomaly/venv/bin/edge-run").exists()  # what it did not make is not
    assert "kept /opt/edge-anomaly" in proc.stdout
    assert (root / "etc/edge-anomaly/config.toml").read_text() == config.read_text()
    assert (root / "var/lib/edge-anomaly/bundle/manifest.json").read_bytes() == (
        bundle / "manifest.json"
    ).read_bytes()

    purge = run_install(root, "--uninstall", "--purge")
    assert "skipped under --root: userdel edge-anomaly" in purge.stdout
    left = [p for p, (_, digest) in snapshot(root).items() if digest != "dir"]
    # only the file install.sh did not make, and the record that still lists the directory holding it
    assert sorted(left) == ["opt/edge-anomaly/venv/bin/edge-run", "var/lib/edge-anomaly/installed-paths"]
    record = (root / "var/lib/edge-anomaly/installed-paths").read_text().splitlines()
    assert sorted(record) == ["D /opt/edge-anomaly", "D /var/lib/edge-anomaly"]
    for gone in ("etc/edge-anomaly", "var/lib/edge-anomaly/bundle", "var/cache/edge-anomaly"):
        assert not (root / gone).exists()


def test_uninstall_keeps_local_overrides(root: Path) -> None:
    run_install(root, "--tensorrt")
    override = root / "etc/systemd/system/edge-anomaly.service.d/override.conf"
    override.write_text("[Service]\nEnvironment=EDGE_LOG_LEVEL=DEBUG\n")
    proc = run_install(root, "--uninstall")
    assert override.exists()
    assert not (override.parent / "10-tensorrt.conf").exists()
    assert "holds local overrides" in proc.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b: (b / "manifest.json").unlink(), "has no manifest.json"),
        (lambda b: [p.unlink() for p in b.glob("model.*.onnx")], "has no model.*.onnx"),
    ],
    ids=["no-manifest", "no-models"],
)
def test_an_incomplete_bundle_is_refused_before_anything_is_written(
    root: Path, bundle: Path, make, message: str
) -> None:
    make(bundle)
    proc = run_install(root, "--bundle", str(bundle), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert snapshot(root) == {}


def test_unknown_option_and_purge_without_uninstall_are_errors(root: Path) -> None:
    for args in (("--bundel", "x"), ("--purge",)):
        proc = run_install(root, *args, check=False)
        assert proc.returncode != 0 and "error:" in proc.stderr, proc.stderr
    assert snapshot(root) == {}


def test_example_config_is_valid_for_the_daemon(tmp_path: Path) -> None:
    """config.example.toml, with its commented-out keys switched on too, loads with edge.config."""
    config_mod = pytest.importorskip("edge.config")
    try:
        from edge.scoring.backends import BACKENDS  # noqa: F401  (the backend name check needs the registry)
    except ImportError:
        pytest.skip("edge.scoring.backends.BACKENDS does not exist yet; the backend name cannot be checked")
    text = (DEPLOY / "config.example.toml").read_text(encoding="utf-8")
    loaded = config_mod.load_config(DEPLOY / "config.example.toml")
    assert loaded.model.bundle == Path("/var/lib/edge-anomaly/bundle")
    assert loaded.topic_prefix == f"edge-anomaly/{loaded.device_id}"

    uncommented = re.sub(r"^# (\[\[cameras\]\]|[a-z_]+ = .*)$", r"\1", text, flags=re.M)
    assert uncommented.count("\n[[cameras]]") == 2
    full = tmp_path / "full.toml"
    full.write_text(uncommented, encoding="utf-8")
    every_key = config_mod.load_config(full)
    assert [cam.name for cam in every_key.cameras] == ["cam0", "csi0"]
    assert every_key.cameras[1].source.startswith("nvarguscamerasrc")


# ---- fail closed (issue 14) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    [
        "var/lib/edge-anomaly/bundle",
        "var/lib/edge-anomaly/bundle/model.fp32.onnx",
        "var/lib/edge-anomaly/engines",
        "etc/edge-anomaly/config.toml",
        "var/lib/edge-anomaly",
    ],
)
def test_a_symlink_planted_in_a_managed_path_is_refused(
    root: Path, bundle: Path, config: Path, tmp_path: Path, planted: str
) -> None:
    """As root, following a planted link would chmod/chown/overwrite its target: refuse instead."""
    args = ("--bundle", str(bundle), "--config", str(config))
    run_install(root, *args)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "shadow").write_text("root's secret\n")
    victim.chmod(0o700)
    path = root / planted
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(victim if planted != "var/lib/edge-anomaly/bundle/model.fp32.onnx" else victim / "shadow")
    before = snapshot(victim)
    proc = run_install(root, *args, "--force-config", check=False)
    assert proc.returncode != 0
    assert "is a symbolic link" in proc.stderr and "never follows links" in proc.stderr
    assert snapshot(victim) == before and stat.S_IMODE(victim.stat().st_mode) == 0o700
    uninstall = run_install(root, "--uninstall", "--purge", check=False)
    assert snapshot(victim) == before  # nor does uninstall reach through it
    assert uninstall.returncode != 0 or (victim / "shadow").exists()


@pytest.mark.parametrize(
    "prefix", ["/usr", "/", "/opt", "/usr/lib", "/etc/edge", "/var/lib", "opt/edge", "/opt/../usr", "/edge"]
)
def test_a_hostile_prefix_is_refused(root: Path, prefix: str) -> None:
    run_install(root)
    for system in ("usr/bin", "opt/vendor"):
        (root / system).mkdir(parents=True, exist_ok=True)
        (root / system / "keep").write_text("not ours\n")
    before = snapshot(root)
    for action in (("--uninstall",), ("--uninstall", "--purge"), ()):
        proc = run_install(root, *action, "--prefix", prefix, check=False)
        assert proc.returncode != 0, proc.stdout
        assert "--prefix" in proc.stderr
    assert snapshot(root) == before


def test_uninstall_removes_only_what_install_recorded(root: Path, config: Path) -> None:
    """A prefix that exists but was not installed by install.sh is left alone, file by file."""
    run_install(root, "--config", str(config))
    data = root / "srv/data"
    data.mkdir(parents=True)
    (data / "share").mkdir()
    (data / "share/README.md").write_text("the operator's own file\n")
    proc = run_install(root, "--uninstall", "--prefix", "/srv/data")
    assert (data / "share/README.md").read_text() == "the operator's own file\n"
    assert "nothing under --prefix /srv/data was installed by install.sh" in proc.stdout
    assert (root / "opt/edge-anomaly/share/README.md").exists()  # not the prefix being uninstalled


def test_purge_keeps_operator_secrets_unless_named(root: Path, bundle: Path, config: Path) -> None:
    run_install(root, "--bundle", str(bundle), "--config", str(config))
    etc = root / "etc/edge-anomaly"
    (etc / "tls").mkdir()
    (etc / "tls/client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (etc / "mqtt-password").write_text("hunter2\n")

    proc = run_install(root, "--uninstall", "--purge")
    assert not (etc / "config.toml").exists()  # install.sh's own file
    assert (etc / "tls/client.key").exists() and (etc / "mqtt-password").exists()
    assert "kept /etc/edge-anomaly" in proc.stdout
    assert not (root / "var/lib/edge-anomaly/bundle").exists()

    bad = run_install(root, "--uninstall", "--purge", "--purge-also", "/var/lib/other", check=False)
    assert bad.returncode != 0 and "only operator files under /etc/edge-anomaly" in bad.stderr
    run_install(root, "--uninstall", "--purge", "--purge-also", "/etc/edge-anomaly/mqtt-password")
    assert not (etc / "mqtt-password").exists() and (etc / "tls/client.key").exists()


def test_force_config_backs_up_the_replaced_config(root: Path, config: Path, tmp_path: Path) -> None:
    run_install(root, "--config", str(config))
    installed = root / "etc/edge-anomaly/config.toml"
    installed.write_text(installed.read_text() + "# local edit\n")
    edited = installed.read_text()
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace("press-7", "press-8"))

    proc = run_install(root, "--config", str(other), "--force-config")
    backups = list(installed.parent.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == edited
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o640
    assert f"backed up /etc/edge-anomaly/config.toml to /etc/edge-anomaly/{backups[0].name}" in proc.stdout
    assert installed.read_text() == other.read_text()
    run_install(root, "--config", str(other), "--force-config")  # same content: nothing to back up
    assert len(list(installed.parent.glob("config.toml.bak-*"))) == 1


def test_an_old_layout_is_closed_on_update(root: Path, bundle: Path, config: Path) -> None:
    """Before issue 14 the state directory was the service's and engines lived inside the bundle."""
    run_install(root, "--bundle", str(bundle), "--config", str(config))
    state = root / "var/lib/edge-anomaly"
    (state / "bundle/engines").mkdir()
    (state / "bundle/engines/old.engine").write_bytes(b"written by the service")
    state.chmod(0o750)
    proc = run_install(root, "--bundle", str(bundle), "--config", str(config))
    assert not (state / "bundle/engines").exists()
    assert "removed /var/lib/edge-anomaly/bundle/engines" in proc.stdout
    assert stat.S_IMODE(state.stat().st_mode) == 0o755


def test_lock_files_pin_and_hash_every_dependency() -> None:
    locks = sorted(DEPLOY.glob("requirements*.lock"))
    assert locks, "no deploy/requirements*.lock; run deploy/lock-requirements.sh"
    for lock in locks:
        text = lock.read_text(encoding="utf-8")
        assert re.search(r"^# python: \d+$", text, re.M), lock
        names = set()
        for block in re.split(r"\n(?=[A-Za-z0-9])", text):
            head = block.strip().splitlines()[0] if block.strip() else ""
            if not head or head.startswith("#"):
                continue
            assert re.match(r"^[A-Za-z0-9_.-]+==[^ ;]+( ; [^\\]+)? \\$", head), (
                f"{lock.name}: not pinned: {head}"
            )
            assert "--hash=sha256:" in block, f"{lock.name}: no hash for {head}"
            names.add(head.split("==")[0].lower())
        assert {"numpy", "paho-mqtt", "pydantic", "onnxruntime", "cryptography"} <= names, lock.name


def test_without_a_fitting_lock_the_install_refuses_unless_allowed(root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(root),
            "--dry-run",
            "--source",
            str(REPO),
            "--extras",
            "nosuchextra",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "no hashed lock file" in proc.stderr
    allowed = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(root),
            "--dry-run",
            "--source",
            str(REPO),
            "--extras",
            "nosuchextra",
            "--allow-unpinned",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "WITHOUT a hashed lock file" in allowed.stderr


# The real (non --root) code paths: useradd, chown, ownership drift, userdel. They run as root inside a
# private mount namespace in which /etc is a copy and /opt, /var/lib, /var/cache are empty tmpfs, so the
# host's files and users are never touched. systemctl is a stub on PATH (there is no systemd to talk to
# in a test).
NAMESPACE_SCRIPT = r"""
set -euo pipefail
cp -a /etc "$WORK/etc"
mkdir -p "$WORK/bin"
mount --bind "$WORK/etc" /etc
for d in /opt /var/lib /var/cache; do mount -t tmpfs tmpfs "$d"; done
for d in /etc /opt /var/lib /var/cache; do mountpoint -q "$d" || exit 97; done
printf '#!/bin/sh\necho "[stub] systemctl $*"\n' >"$WORK/bin/systemctl"
chmod +x "$WORK/bin/systemctl"
export PATH="$WORK/bin:$PATH"
ARGS=(--skip-venv --python "$PYTHON_BIN")
echo "=== first"; bash "$INSTALL" "${ARGS[@]}" --bundle "$BUNDLE" --config "$CONFIG" --jetson
echo "=== owners"; find /etc/edge-anomaly /var/lib/edge-anomaly -printf '%u:%g %m %p\n'
echo "=== user"; getent passwd edge-anomaly; getent group render
echo "=== second"; bash "$INSTALL" "${ARGS[@]}" --bundle "$BUNDLE" --config "$CONFIG" --jetson
chown root:root /etc/edge-anomaly/config.toml
echo "=== drift"; bash "$INSTALL" "${ARGS[@]}" --bundle "$BUNDLE" --config "$CONFIG" --jetson
echo "=== purge"; bash "$INSTALL" --uninstall --purge
echo "=== after"; getent passwd edge-anomaly || echo "no user"
ls /etc/edge-anomaly /var/lib/edge-anomaly 2>&1 || true
"""


def _sections(output: str) -> dict[str, str]:
    parts = re.split(r"^=== (\w+)$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_real_install_sets_owners_creates_the_user_and_purges(
    tmp_path: Path, bundle: Path, config: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (for a private mount namespace); the --root tests cover the rest")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    if (
        Path("/etc/edge-anomaly").exists()
        or subprocess.run(["getent", "passwd", "edge-anomaly"], capture_output=True).returncode == 0
    ):
        pytest.skip("edge-anomaly is really installed on this machine; not testing over it")
    env = {
        **os.environ,
        "WORK": str(tmp_path / "ns"),
        "INSTALL": str(INSTALL),
        "BUNDLE": str(bundle),
        "CONFIG": str(config),
        "PYTHON_BIN": sys.executable,
    }
    (tmp_path / "ns").mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = _sections(proc.stdout)
    assert "run: useradd --system --user-group --home-dir /var/lib/edge-anomaly" in out["first"]
    owners = {
        line.split()[2]: (line.split()[0], line.split()[1]) for line in out["owners"].split("\n") if line
    }
    assert owners["/etc/edge-anomaly"] == ("root:edge-anomaly", "750")
    assert owners["/etc/edge-anomaly/config.toml"] == ("root:edge-anomaly", "640")
    assert owners["/var/lib/edge-anomaly"] == ("root:root", "755")  # the service cannot swap the bundle
    assert owners["/var/lib/edge-anomaly/bundle"] == ("root:edge-anomaly", "750")
    assert owners["/var/lib/edge-anomaly/bundle/model.fp32.onnx"] == ("root:edge-anomaly", "640")
    assert owners["/var/lib/edge-anomaly/engines"] == ("edge-anomaly:edge-anomaly", "750")
    assert owners["/var/lib/edge-anomaly/installed-paths"] == ("root:root", "644")
    assert ":/usr/sbin/nologin" in out["user"] and out["user"].count("\n") >= 2  # user and render group
    assert "done: 0 change(s)." in out["second"] and "try-restart" not in out["second"]
    assert "run: chown -h root:edge-anomaly /etc/edge-anomaly/config.toml" in out["drift"]
    assert "[stub] systemctl try-restart edge-anomaly.service" in out["drift"]
    assert "run: userdel edge-anomaly" in out["purge"]
    assert "no user" in out["after"] and "No such file" in out["after"]
    # And the host saw none of it.
    assert not Path("/etc/edge-anomaly").exists()
    assert subprocess.run(["getent", "passwd", "edge-anomaly"], capture_output=True).returncode != 0


def test_a_tampered_bundle_is_refused_before_the_installed_one_is_replaced(
    root: Path, bundle: Path, config: Path, tmp_path: Path
) -> None:
    """Before, install.sh copied the bundle and only then ran the config check (not at all under --root): a
    tampered bundle installed with exit 0 and the next restart failed."""
    run_install(root, "--bundle", str(bundle), "--config", str(config))
    installed = root / "var/lib/edge-anomaly/bundle"
    before = snapshot(installed)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    onnx = tampered / "model.fp32.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    proc = run_install(root, "--bundle", str(tampered), "--config", str(config), check=False)
    assert proc.returncode != 0, proc.stdout
    assert "failed verification" in proc.stderr and "left in place" in proc.stderr
    assert "does not match its manifest" in proc.stdout + proc.stderr
    assert snapshot(installed) == before
