"""The OPC UA face's user accounts: one file, one line per user, salted PBKDF2-SHA256 hashes.

    # comment lines and blank lines are ignored
    plc1:pbkdf2-sha256:200000:<salt hex>:<hash hex>

``python -m edge.faces.opcua.users NAME`` asks for a password twice and prints the line to append.
May import: the standard library only.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SCHEME = "pbkdf2-sha256"
ITERATIONS = 200_000
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file and the line."""


def hash_line(name: str, password: str, iterations: int = ITERATIONS, salt: Optional[bytes] = None) -> str:
    """The users-file line of ``name`` with ``password`` (a fresh 16-byte salt unless one is given)."""
    if not _NAME.match(name):
        raise UsersFileError(f"user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{name}:{SCHEME}:{iterations}:{salt.hex()}:{digest.hex()}"


def read_users(path: Path) -> Dict[str, Tuple[int, bytes, bytes]]:
    """name -> (iterations, salt, hash); :class:`UsersFileError` for an unreadable file or a bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"cannot read OPC UA users file {path}: {exc.strerror or exc}") from exc
    users: Dict[str, Tuple[int, bytes, bytes]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            name, scheme, iterations, salt, digest = fields
            if scheme != SCHEME or not _NAME.match(name):
                raise ValueError
            users[name] = (int(iterations), bytes.fromhex(salt), bytes.fromhex(digest))
        except ValueError:
            raise UsersFileError(
                f"{path}:{number}: expected 'name:{SCHEME}:<iterations>:<salt hex>:<hash hex>' "
                "(python -m edge.faces.opcua.users NAME prints one)"
            ) from None
    if not users:
        raise UsersFileError(f"OPC UA users file {path} holds no user")
    return users


def check(users: Dict[str, Tuple[int, bytes, bytes]], name: Optional[str], password: Optional[str]) -> bool:
    """True when ``name`` is a user and ``password`` is theirs (constant-time compare)."""
    if not name or password is None or name not in users:
        return False
    iterations, salt, digest = users[name]
    got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, digest)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Print an OPC UA users-file line (docs/opcua.md).")
    parser.add_argument("name", help="user name the OPC UA client logs in with")
    args = parser.parse_args(argv)
    password = getpass.getpass(f"password for {args.name}: ")
    if password != getpass.getpass("again: "):
        print("the passwords differ; nothing printed", file=sys.stderr)
        return 1
    print(hash_line(args.name, password))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
