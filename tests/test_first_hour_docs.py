"""docs/troubleshooting.md's exit status table is edge-run's own (issue 30, item 9): every EXIT_* constant of
edge/service/cli.py has a row, and no row names a status edge-run does not use."""

from __future__ import annotations

import re
from pathlib import Path

import edge.service.cli

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "troubleshooting.md"


def edge_run_table() -> dict[int, str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Exit status", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in ("|" + section).splitlines() if re.match(r"\| \d+ \|", line)]
    return {int(row.split("|")[1]): row for row in rows}


def test_every_exit_status_of_edge_run_has_a_row() -> None:
    codes = {v for k, v in vars(edge.service.cli).items() if k.startswith("EXIT_") and isinstance(v, int)}
    table = edge_run_table()
    assert set(table) == codes == {0, 1, 2, 3, 4}
    assert (
        "broker" in table[edge.service.cli.EXIT_UNDELIVERED]
        and "configuration" in table[edge.service.cli.EXIT_CONFIG]
    )


def test_help_points_at_the_troubleshooting_page() -> None:
    epilog = edge.service.cli.parser().epilog or ""
    assert "docs/troubleshooting.md" in epilog and "4 results not delivered" in epilog


def test_the_errors_table_names_each_first_hour_fix() -> None:
    text = DOC.read_text(encoding="utf-8")
    for fix in (
        "source .venv/bin/activate",
        "--keep-running",
        "--no-camera-open",
        "--save-overlays",
        "--verbose",
    ):
        assert fix in text, fix
