"""Secrets: a value that never shows itself, and AES-GCM encryption at rest with key ids for rotation.

`WABRIDGE_SECRET_KEY` holds one or more 32-byte keys, base64, comma separated: the first encrypts, all decrypt.
A ciphertext is `v1:<key id>:<base64 nonce+ciphertext+tag>`; the key id is the first 8 hex digits of the key's
SHA-256, so a rotated database can be re-encrypted row by row while both keys are configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets as _random

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Secret:
    """A string that hides itself from repr, str and logs; `.reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and _random.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # pickling would write the value somewhere we do not control
        raise TypeError("a Secret cannot be pickled")


class SecretKeyError(ValueError):
    pass


def generate_key() -> str:
    """A new key for WABRIDGE_SECRET_KEY: 32 random bytes, base64."""
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class SecretBox:
    """Encrypts with the first key, decrypts with whichever key id the ciphertext names."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no secret key given")
        for key in keys:
            if len(key) != 32:
                raise SecretKeyError("a secret key must be 32 bytes, base64-encoded")
        self._primary = key_id(keys[0])
        self._aead = {key_id(k): AESGCM(k) for k in keys}

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        keys = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                keys.append(base64.b64decode(part, validate=True))
            except (binascii.Error, ValueError):
                raise SecretKeyError("a secret key must be base64 (generate one with `wabridge keygen`)") from None
        return cls(keys)

    @property
    def primary_key_id(self) -> str:
        return self._primary

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        nonce = os.urandom(12)
        sealed = self._aead[self._primary].encrypt(nonce, plaintext.encode(), context.encode() or None)
        return f"v1:{self._primary}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, ciphertext: str, *, context: str = "") -> str:
        try:
            version, kid, blob = ciphertext.split(":", 2)
        except ValueError:
            raise SecretKeyError("not a wabridge ciphertext") from None
        if version != "v1" or kid not in self._aead:
            raise SecretKeyError(f"ciphertext encrypted with unknown key id {kid!r}")
        raw = base64.b64decode(blob)
        return self._aead[kid].decrypt(raw[:12], raw[12:], context.encode() or None).decode()

    def needs_rotation(self, ciphertext: str) -> bool:
        return not ciphertext.startswith(f"v1:{self._primary}:")

    def __repr__(self) -> str:
        return f"SecretBox(primary={self._primary}, keys={len(self._aead)})"
