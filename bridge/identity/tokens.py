"""Service-account tokens that a mesh CA accepts as proof of the gateway's identity.

istiod's CA and Linkerd's identity service both authenticate the caller with
a Kubernetes service-account JWT bound to their own audience (``istio-ca``,
``identity.l5d.io``) and take the workload identity from that token. The
providers ask a :class:`TokenSource` for one per request; what stands behind
it is wired by the CLI: the Kubernetes adapter's TokenRequest client, or
:class:`FileTokenSource` for a projected service-account token volume (the way
istio-agent and the Linkerd proxy read theirs).

:func:`token_subject` reads the ``sub`` claim *without verifying* the
signature: only to name the service account in a request and in diagnostics.
The CA is what verifies the token.

Tokens are :class:`SecretBytes`: never logged, never written anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bridge.errors import IdentityError
from bridge.model.secrets import SecretBytes

ISTIO_CA_AUDIENCE = "istio-ca"
LINKERD_AUDIENCE = "identity.l5d.io"

_SA_PREFIX = "system:serviceaccount:"


class TokenSource(Protocol):
    """Hands out a service-account JWT for an audience (cached or fresh: its choice)."""

    async def token(self, audience: str) -> SecretBytes: ...


@dataclass(frozen=True, slots=True, order=True)
class ServiceAccount:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def token_claims(token: SecretBytes) -> dict[str, Any]:
    """The JWT's payload, decoded but NOT verified; ``{}`` when it is not a JWT."""
    parts = token.reveal().split(b".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + b"=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_subject(token: SecretBytes) -> ServiceAccount | None:
    """The service account a token names (``sub: system:serviceaccount:<ns>:<sa>``), unverified."""
    sub = token_claims(token).get("sub")
    if not isinstance(sub, str) or not sub.startswith(_SA_PREFIX):
        return None
    ns, sep, name = sub[len(_SA_PREFIX) :].partition(":")
    if not sep or not ns or not name or ":" in name:
        return None
    return ServiceAccount(ns, name)


def token_audiences(token: SecretBytes) -> tuple[str, ...]:
    """The ``aud`` claim as a tuple (a JWT may carry one string or a list), unverified."""
    aud = token_claims(token).get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()


class FileTokenSource:
    """A projected service-account token read from a file on every request.

    Kubelet refreshes a projected token in place, so the file is re-read each
    time. ``audience`` is the one the volume was projected for; asking for
    another is an error naming both (a projected token cannot change its
    audience).
    """

    def __init__(self, path: str | Path, audience: str) -> None:
        self.path = Path(path)
        self.audience = audience

    async def token(self, audience: str) -> SecretBytes:
        if audience != self.audience:
            raise IdentityError(
                f"token file {self.path} is projected for audience {self.audience!r}, "
                f"not {audience!r}"
            )
        try:
            data = self.path.read_bytes().strip()
        except OSError as exc:
            raise IdentityError(f"cannot read token file {self.path}: {exc.strerror}") from exc
        if not data:
            raise IdentityError(f"token file {self.path} is empty")
        return SecretBytes(data)
