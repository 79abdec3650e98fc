"""``edge-keygen``: make the Ed25519 key pair that signs bundles.

    edge-keygen --out keys/line3            # writes keys/line3.key (private, 0600) and keys/line3.pub

Keep the ``.key`` on the workstation that exports (``edge-export --sign-key keys/line3.key``); copy only the
``.pub`` to devices and name it in ``[model] trusted_keys``. The fingerprint printed here is what devices
report as ``signer`` in their ``status`` and ``result`` messages.

Exit codes: 0 written; 2 bad arguments, an existing file (never overwritten) or a missing dependency.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge.trust.signing import fingerprint
from edge.util.deps import MissingDependency, require

EXIT_OK, EXIT_INPUT = 0, 2


def write_key_pair(out: Path) -> tuple[Path, Path, str]:
    """``out``.key (PKCS#8 PEM, mode 0600) and ``out``.pub (SubjectPublicKeyInfo PEM); never overwrites."""
    require("cryptography", "signing", "making a signing key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key_path, pub_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; keys are never overwritten (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: no race with another writer, no following a planted link; 0600 from the first byte
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(public_pem)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_path, pub_path, fingerprint(raw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-keygen",
        description="Make an Ed25519 key pair for signing bundles (edge-export --sign-key).",
        epilog="Exit codes: 0 written, 2 bad input or an existing file.",
    )
    p.add_argument("--out", type=Path, required=True, help="path prefix: writes OUT.key and OUT.pub")
    args = p.parse_args(argv)
    try:
        key_path, pub_path, fp = write_key_pair(args.out)
    except (OSError, MissingDependency) as exc:
        print(f"edge-keygen: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"private key: {key_path} (keep it on the export workstation; never copy it to a device)")
    print(f"public key:  {pub_path} (copy to devices; name it in [model] trusted_keys)")
    print(f"fingerprint: {fp}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
