"""A bundle directory read without leaving it: every file opened relative to the directory's descriptor,
never through a symbolic link, regular files only, names checked. :mod:`edge.trust.manifest` reads and
verifies bundles through it; :class:`BundleError` is the one error of both."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Optional, Tuple

from edge.trust.signing import SIGNATURE_NAME

MANIFEST_NAME = "manifest.json"
# A plain file name: starts with a letter or digit (so never '.', '..' or hidden), then letters, digits, '.',
# '_' or '-'. No separators of any platform, no NUL, no drive letters.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVED_NAMES = (MANIFEST_NAME, SIGNATURE_NAME)
QDQ_MARKER = b"DequantizeLinear"  # op type string every explicitly quantized (int8) ONNX graph contains


class BundleError(RuntimeError):
    """A bundle is missing, corrupt, tampered with, unsigned where a signature is required, or of an unknown
    schema. The message is one line naming what is wrong and what to do."""


# ---- reading files without leaving the bundle --------------------------------------------------------------

_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


class BundleDir:
    """A bundle directory held open, so every file is opened relative to it and never through a link."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(
                self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
            )
        except OSError as exc:
            raise BundleError(
                f"{self.path} is not a bundle directory ({exc.strerror or exc}); make one with edge-export"
            ) from None

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def open(self, name: str, missing_ok: bool = False) -> Optional[int]:
        """A descriptor of the regular file ``name`` inside the bundle, or BundleError."""
        if name not in RESERVED_NAMES and not FILE_NAME.match(name):  # callers pass validated names
            raise BundleError(
                f"bundle file entry {name[:80]!r} is not a plain file name; re-export the bundle"
            )
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                if missing_ok:
                    return None
                raise BundleError(
                    f"bundle file {name} is missing from {self.path} (listed in {MANIFEST_NAME}); copy the "
                    f"whole "
                    "bundle again"
                ) from None
            if exc.errno == errno.ELOOP:
                raise BundleError(
                    f"bundle file {name} in {self.path} is a symbolic link; a bundle holds plain files only "
                    "(copy the bundle with cp -rL or re-export it)"
                ) from None
            raise BundleError(
                f"cannot open bundle file {name} in {self.path}: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleError(
                f"bundle file {name} in {self.path} is not a regular file; re-export the bundle"
            )
        return fd

    def read(self, name: str, limit: int, missing_ok: bool = False) -> Optional[bytes]:
        fd = self.open(name, missing_ok)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"bundle file {name} is larger than {limit} bytes; it is not a {name}")
        return data

    def digest(self, name: str) -> Tuple[str, bool]:
        """(sha256 hex, whether the file contains the int8 Q/DQ marker) of the regular file ``name``."""
        fd = self.open(name)
        digest, found, tail = hashlib.sha256(), False, b""
        with os.fdopen(fd, "rb") as fh:  # type: ignore[arg-type]
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                if not found:
                    found = QDQ_MARKER in tail + chunk
                    tail = chunk[-len(QDQ_MARKER) :]
        return digest.hexdigest(), found
