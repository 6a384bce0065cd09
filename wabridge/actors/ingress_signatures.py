"""The signature checks of the ingress: Meta's X-Hub-Signature-256 (hex) and Genesys's (base64 or hex), in constant
time, over the raw body."""

from __future__ import annotations

import base64
import hmac
from hashlib import sha256


def _signature_ok(secret: str, body: bytes, header: str) -> bool:
    if not header.isascii():
        return False  # compare_digest takes ASCII text only; no HMAC of ours is anything else
    expected = "sha256=" + hmac.new(secret.encode(), body, sha256).hexdigest()
    return hmac.compare_digest(expected, header.lower())  # Meta sends lowercase hex; case is not part of the proof


def _genesys_signature_ok(secret: str, body: bytes, header: str) -> bool:
    """`sha256=<digest>`: Genesys's own sample encodes the HMAC in base64, one peer in hex (reference.md §3). Both are
    the same proof, so either is taken; both are compared, in constant time, whichever matches."""
    scheme, _, digest = header.partition("=")  # the first `=`: base64's padding stays in the digest
    digest = digest.strip()
    if scheme.strip().lower() != "sha256" or not digest or not digest.isascii():
        return False  # compare_digest takes ASCII text only
    mac = hmac.new(secret.encode(), body, sha256).digest()
    as_base64 = hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    as_hex = hmac.compare_digest(mac.hex(), digest.lower())
    return as_base64 | as_hex
