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

from cryptography.exceptions import InvalidTag
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


class UndecryptableSecret(SecretKeyError):
    """A stored secret this key ring cannot open. Almost always a wrong WABRIDGE_SECRET_KEY (or its old key dropped
    before re-encrypting), so the message says that, in one line an operator can act on; it names the key ids and
    where the secret belongs (tenant and field), never anything of the secret itself."""

    def __init__(self, held: list[str], context: str, problem: str) -> None:
        where = f" ({context})" if context else ""
        super().__init__(
            f"cannot decrypt tenant secrets with WABRIDGE_SECRET_KEY (key id {', '.join(held)}): a secret{where} "
            f"{problem}: wrong key? see `wabridge migrate --reencrypt-secrets`"
        )


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
        """The plaintext; UndecryptableSecret (never a bare InvalidTag) when this ring cannot open it."""
        version, kid, blob = [*ciphertext.split(":", 2), "", ""][:3]
        if version != "v1" or not kid:
            raise UndecryptableSecret(list(self._aead), context, "is not a wabridge ciphertext")
        if kid not in self._aead:
            raise UndecryptableSecret(list(self._aead), context, f"was sealed with key id {kid}")
        try:
            raw = base64.b64decode(blob, validate=True)
            return self._aead[kid].decrypt(raw[:12], raw[12:], context.encode() or None).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise UndecryptableSecret(list(self._aead), context, f"does not open with key id {kid}") from None

    def needs_rotation(self, ciphertext: str) -> bool:
        return not ciphertext.startswith(f"v1:{self._primary}:")

    def __repr__(self) -> str:
        return f"SecretBox(primary={self._primary}, keys={len(self._aead)})"
