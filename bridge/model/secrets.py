"""Key material in types that never print their bytes.

``repr``/``str``/``format`` of these types show ``[redacted]``; the bytes are
reachable only through :meth:`reveal`, which the few places that must hand
them to Envoy or a TLS stack call explicitly. Private keys live in memory
only: nothing in meshbridge writes them to disk.
"""

from __future__ import annotations

import hashlib
from typing import Any


class SecretBytes:
    """Opaque bytes (a private key, a token) that refuse to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible id for logs (first 12 hex of SHA-256)."""
        return hashlib.sha256(self._value).hexdigest()[:12]

    def __repr__(self) -> str:
        return "SecretBytes([redacted])"

    def __str__(self) -> str:
        return "[redacted]"

    def __format__(self, spec: str) -> str:
        return "[redacted]"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretBytes):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("SecretBytes cannot be pickled")


class PrivateKey(SecretBytes):
    """A PEM private key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PrivateKey([redacted])"
