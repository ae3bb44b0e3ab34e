"""Service-account tokens from the TokenRequest API, for mesh CAs.

:class:`ServiceAccountTokens` is a :class:`bridge.identity.tokens.TokenSource`:
``await tokens.token("istio-ca")`` returns a JWT for the bridge's own service
account bound to that audience (``POST
/api/v1/namespaces/<ns>/serviceaccounts/<sa>/token``). Each audience's token
is cached and fetched again once ``refresh_fraction`` (80%) of its lifetime
has passed, well before it expires. If the API server cannot be reached at
refresh time a still-valid token is handed out and the next call tries
again; only when none is valid does the call fail with
:class:`bridge.errors.IdentityUnavailable`.

Tokens are :class:`bridge.model.secrets.SecretBytes` from the moment the
response is decoded: never logged, never in an error message, never built
into the client's model classes (the response is read raw).

The clock is injectable (wall-clock seconds, because token expiry is wall
time) so tests can move past the refresh point without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client as k8s_client

from adapters.kubernetes.client import call, read_json
from bridge.errors import IdentityError, IdentityUnavailable, SourceError, SourceUnavailable
from bridge.model.secrets import SecretBytes

log = logging.getLogger(__name__)

# The API server refuses shorter lifetimes (spec.expirationSeconds >= 600).
MIN_EXPIRATION_S = 600


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: SecretBytes
    issued_at: float  # clock seconds
    expires_at: float
    refresh_at: float


class ServiceAccountTokens:
    """TokenRequest client for one service account; see the module docstring."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        service_account: str,
        *,
        expiration_s: int = 3600,
        refresh_fraction: float = 0.8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if expiration_s < MIN_EXPIRATION_S:
            raise ValueError(f"expiration_s must be at least {MIN_EXPIRATION_S}")
        if not 0 < refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        self._api = k8s_client.CoreV1Api(api_client)
        self.namespace = namespace
        self.service_account = service_account
        self._expiration_s = expiration_s
        self._fraction = refresh_fraction
        self._clock = clock
        self._cache: dict[str, IssuedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.requests = 0

    def issued(self, audience: str) -> IssuedToken | None:
        return self._cache.get(audience)

    async def token(self, audience: str) -> SecretBytes:
        cached = self._cache.get(audience)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        lock = self._locks.setdefault(audience, asyncio.Lock())
        async with lock:
            cached = self._cache.get(audience)
            now = self._clock()
            if cached is not None and now < cached.refresh_at:
                return cached.token  # another caller refreshed it meanwhile
            try:
                fresh = await asyncio.to_thread(self._request, audience)
            except SourceError as exc:
                if cached is not None and self._clock() < cached.expires_at:
                    log.warning(
                        "token for audience %s not refreshed (%s); the current one is valid "
                        "for %.0fs more",
                        audience,
                        exc,
                        cached.expires_at - self._clock(),
                    )
                    return cached.token
                err = IdentityUnavailable if isinstance(exc, SourceUnavailable) else IdentityError
                raise err(
                    f"no token for service account {self.namespace}/{self.service_account} "
                    f"with audience {audience}: {exc}"
                ) from exc
            self._cache[audience] = fresh
            log.info(
                "token for %s/%s audience %s issued (fingerprint %s), valid %.0fs",
                self.namespace,
                self.service_account,
                audience,
                fresh.token.fingerprint(),
                fresh.expires_at - fresh.issued_at,
            )
            return fresh.token

    def _request(self, audience: str) -> IssuedToken:
        what = (
            f"TokenRequest for serviceaccount {self.namespace}/{self.service_account} "
            f"audience {audience}"
        )
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": self._expiration_s},
        }
        issued_at = self._clock()
        resp = call(
            what,
            self._api.create_namespaced_service_account_token,
            self.service_account,
            self.namespace,
            body,
            _preload_content=False,
            _request_timeout=(5.0, 30.0),
        )
        data = read_json(what, resp)
        st = data.get("status") or {}
        raw = st.get("token")
        if not isinstance(raw, str) or not raw:
            raise SourceUnavailable(f"{what}: answer holds no token")
        token = SecretBytes(raw)
        del raw, st["token"]  # keep the only copy inside SecretBytes
        # The server may grant a shorter lifetime than asked: trust what it says.
        lifetime = float(self._expiration_s)
        granted = (data.get("spec") or {}).get("expirationSeconds")
        if isinstance(granted, int) and granted > 0:
            lifetime = min(lifetime, float(granted))
        exp = st.get("expirationTimestamp")
        if isinstance(exp, str):
            try:
                until = datetime.fromisoformat(exp.replace("Z", "+00:00")).timestamp()
                lifetime = min(lifetime, max(0.0, until - time.time()))
            except ValueError:
                pass
        self.requests += 1
        return IssuedToken(
            token=token,
            issued_at=issued_at,
            expires_at=issued_at + lifetime,
            refresh_at=issued_at + self._fraction * lifetime,
        )
