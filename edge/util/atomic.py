"""The one atomic write of the project: after a power cut a file holds the old content or the new, never
part of either.

The data goes to a temporary file in the same folder (a rename is atomic only within one file system),
is fsynced, renamed over the target, and the folder is fsynced so the new name itself survives. The
temporary name ends in ``.<pid>.tmp``, so a cleaner can tell the leftovers of a dead writer from the
file of a live one (``edge.scoring.backends.tensorrt_engine.clean_stale_temp_files``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Union

TEMP_SUFFIX = ".tmp"

PathLike = Union[str, "os.PathLike[str]"]


def temp_name(path: Path) -> Path:
    """``.<name>.<thread>.<pid>.tmp`` beside ``path``: unique per writer, its pid last."""
    return path.with_name(f".{path.name}.{threading.get_ident()}.{os.getpid()}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable: without it a power cut can lose a just-written file's name."""
    fd = os.open(str(directory), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through; it replaces ``path`` only when the block ends without an
    exception (then nothing changes and the temporary file is gone)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def write_atomically(path: PathLike, data: bytes) -> Path:
    with atomic_file(path) as fh:
        fh.write(data)
    return Path(path)


def write_json_atomically(path: PathLike, doc: object) -> Path:
    """Indented, sorted keys; NaN and infinities are refused (no JSON reader on a device accepts them)."""
    return write_atomically(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False).encode("utf-8"))
