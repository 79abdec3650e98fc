"""edge/ is the device runtime: it must never load torch or the training/export/calibration packages,
and inside it the stage folders import one way only (docs/architecture.md, each stage's ``__init__``
docstring)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.edge.test_daemon_e2e import config_toml
from tests.helpers.broker import Broker
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "training", "export", "calibration", "benchmarks", "tools")
REPORT = (
    f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
    "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
)


def run_python(script: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_edge_module_imports_the_training_stack() -> None:
    """Static: no import statement in edge/ names a forbidden package (lazy imports included)."""
    offenders = []
    for path in sorted((REPO / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_daemon_loads_nothing_heavy() -> None:
    report = run_python("import json, sys\nimport edge.service.daemon, edge.service.cli\nrc = 0\n" + REPORT)
    assert report == {"rc": 0, "heavy": []}


def test_running_the_daemon_loads_nothing_heavy(broker: Broker, tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=96)
    frames, _ = part_sequence(12, 3, size=96, seed=3)
    video = write_video(tmp_path / "parts.avi", frames, fps=10)
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(video), "fps": 20}]
    cfg.write_text(config_toml(f"imp-{uuid.uuid4().hex[:8]}", broker, bundle, cams), encoding="utf-8")
    script = (
        "import json, sys\nimport edge.service.cli\n"
        f"rc = edge.service.cli.main(['--config', {str(cfg)!r}, '--max-frames', '3'])\n" + REPORT
    )
    assert run_python(script) == {"rc": 0, "heavy": []}


# The floors of edge/, lowest first: a module may import its own stage and any stage on a lower floor, never
# one on its floor or above. Same order as docs/architecture.md.
FLOORS = (
    ("util", "commands"),
    ("config",),
    ("capture",),
    ("trust",),
    ("results",),
    ("scoring",),
    ("stores", "faces"),
    ("service",),
)
FLOOR = {stage: level for level, stages in enumerate(FLOORS) for stage in stages}
# config validates a model.backend name against the backend table (a dict of strings; nothing is loaded)
EXCEPTIONS = {("config", "edge.scoring.backends")}
# each face keeps its own internals; the MQTT ones share mqtt_session
FACES = ("mqtt_json", "sparkplug", "opcua", "web")


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edge"


def _edge_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module]
    return [n for n in names if n.startswith("edge.")]


def test_every_edge_module_lives_in_a_stage_folder() -> None:
    loose = [p.name for p in (REPO / "edge").glob("*.py") if p.name not in ("__init__.py", "commands.py")]
    assert loose == []
    stages = {p.name for p in (REPO / "edge").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == set(FLOOR) - {"commands"}
    for stage in stages:
        assert ast.get_docstring(ast.parse((REPO / "edge" / stage / "__init__.py").read_text())), stage


def test_stages_import_one_way_only() -> None:
    """capture never imports faces, results never imports scoring, nothing imports the service, ..."""
    offenders = []
    for path in sorted((REPO / "edge").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        here = _stage(module)
        if here == "__init__":
            continue
        for name in _edge_imports(path):
            there = _stage(name)
            if there == here or (here, name) in EXCEPTIONS:
                continue
            if here not in FLOOR or there not in FLOOR or FLOOR[there] >= FLOOR[here]:
                offenders.append(f"{module} ({here}) imports {name} ({there})")
    assert offenders == []


def test_faces_do_not_import_each_other() -> None:
    offenders = []
    for face in FACES:
        for path in sorted((REPO / "edge" / "faces" / face).rglob("*.py")):
            for name in _edge_imports(path):
                other = [f for f in FACES if f != face and name.startswith(f"edge.faces.{f}")]
                if other:
                    offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []
