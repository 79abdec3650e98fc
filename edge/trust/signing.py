"""Ed25519 signatures over a bundle's ``manifest.json``: who may give this device a model.

The manifest lists the sha256 of every model file, so a signature over the manifest's exact bytes covers
the whole bundle. Anyone who can write the bundle could otherwise rewrite manifest and hashes together.

The signature lives in a sidecar file, ``manifest.sig``, next to the manifest (so the manifest's bytes,
and the sums of existing bundles, do not change when a bundle is signed)::

    {"schema": 1, "algorithm": "ed25519", "key": "SHA256:<fingerprint>", "signature": "<base64, 64 bytes>"}

``key`` only says which key to try and what to report; trust comes from the signature verifying under a
public key the device config names (``[model] trusted_keys``). Key files are PEM: the private key PKCS#8
(written 0600 by ``edge-keygen``), the public key SubjectPublicKeyInfo. A key's fingerprint is
``SHA256:`` + unpadded base64 of the sha256 of its 32 raw public bytes (OpenSSH's style, so it reads
like the fingerprints operators already compare).

``cryptography`` is imported only when a key is loaded or a signature checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edge.util.deps import require

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_SCHEMA = 1
ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096  # a signature file is ~200 bytes; anything bigger is not one
MAX_KEY_FILE_BYTES = 16384


class SignatureError(RuntimeError):
    """A key or signature cannot be read, or a signature does not verify; the message says what to do."""


def _crypto() -> Tuple[Any, Any]:
    """(ed25519 module, serialization module) from ``cryptography``, or MissingDependency naming it."""
    require("cryptography", "signing", "checking bundle signatures")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519, serialization


def fingerprint(raw_public: bytes) -> str:
    """``SHA256:<base64>`` of the 32 raw public-key bytes."""
    digest = base64.b64encode(hashlib.sha256(raw_public).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _raw_public(public_key: Any) -> bytes:
    _, serialization = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SignatureError(
            f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes; it is not a PEM key"
        )
    return data


class TrustedKeys:
    """The public keys a device accepts bundle signatures from, by fingerprint.

    An empty set means the operator configured none: unsigned bundles are then accepted (with a warning
    from the caller), and a signature is not checked because nothing could make it trusted.
    """

    def __init__(self, keys: Optional[Dict[str, Any]] = None) -> None:
        self._keys: Dict[str, Any] = dict(keys or {})

    @classmethod
    def load(cls, paths: Sequence[Path]) -> TrustedKeys:
        """Read PEM public keys (Ed25519 only); a missing, unreadable or non-Ed25519 file raises."""
        keys: Dict[str, Any] = {}
        if not paths:
            return cls(keys)
        ed25519, serialization = _crypto()
        for path in paths:
            data = _read_key_file(Path(path))
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as exc:
                raise SignatureError(
                    f"trusted key {path} is not a PEM public key; give the .pub file edge-keygen wrote"
                ) from exc
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise SignatureError(f"trusted key {path} is not an Ed25519 key; make one with edge-keygen")
            keys[fingerprint(_raw_public(key))] = key
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def fingerprints(self) -> List[str]:
        return sorted(self._keys)

    def verify(self, manifest_bytes: bytes, signature_file: Optional[bytes]) -> str:
        """The fingerprint of the trusted key that signed ``manifest_bytes``, or SignatureError."""
        if signature_file is None:
            raise SignatureError(
                f"the bundle is not signed ({SIGNATURE_NAME} is missing) but model.trusted_keys is set; "
                "sign it with edge-export --sign-key KEY"
            )
        key_id, signature = parse_signature(signature_file)
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError(
                f"the bundle is signed by key {key_id}, which is not in model.trusted_keys "
                f"({', '.join(self.fingerprints)}); sign it with a trusted key or add that key's .pub file"
            )
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise SignatureError(
                f"the signature in {SIGNATURE_NAME} does not match manifest.json (key {key_id}): the "
                f"manifest "
                "was changed after signing; copy the bundle again from the signed export"
            ) from None
        return key_id


def parse_signature(data: bytes) -> Tuple[str, bytes]:
    """(key fingerprint, 64 signature bytes) from a ``manifest.sig`` file, or SignatureError."""
    bad = f"{SIGNATURE_NAME} is not a bundle signature"
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{bad} (larger than {MAX_SIGNATURE_BYTES} bytes); sign the bundle again")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError(f"{bad} (not JSON); sign the bundle again") from None
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SIGNATURE_SCHEMA
        or doc.get("algorithm") != ALGORITHM
    ):
        raise SignatureError(
            f"{bad} (schema {SIGNATURE_SCHEMA}, algorithm {ALGORITHM} expected); sign it again"
        )
    key_id, sig_text = doc.get("key"), doc.get("signature")
    if not isinstance(key_id, str) or not key_id.startswith("SHA256:") or len(key_id) > 64:
        raise SignatureError(f"{bad} (no key fingerprint); sign the bundle again")
    try:
        signature = base64.b64decode(sig_text, validate=True) if isinstance(sig_text, str) else b""
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise SignatureError(f"{bad} (the signature is not 64 base64 bytes); sign the bundle again")
    return key_id, signature


# ---- the signing side (workstation): used by export/, kept here so both sides share one format ---------


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from an unencrypted PKCS#8 PEM file (as edge-keygen writes it)."""
    ed25519, serialization = _crypto()
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"signing key {path} is not an unencrypted PEM private key ({exc}); make one with edge-keygen"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is not an Ed25519 key; make one with edge-keygen")
    return key


def public_fingerprint(private_key: Any) -> str:
    return fingerprint(_raw_public(private_key.public_key()))


def signature_document(private_key: Any, manifest_bytes: bytes) -> bytes:
    """The ``manifest.sig`` contents for ``manifest_bytes`` signed with ``private_key``."""
    doc = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": ALGORITHM,
        "key": public_fingerprint(private_key),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
