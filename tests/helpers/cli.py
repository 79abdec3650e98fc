"""``edge-run`` in this process with its stdout and stderr captured: one helper for the CLI tests."""

from __future__ import annotations

import contextlib
import io

from edge.service.cli import main


def run_edge(*argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``edge-run ARGV``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()
