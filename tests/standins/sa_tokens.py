"""A fake TokenRequest: HS256-signed service-account JWTs, and their check.

Plays the Kubernetes API server's part for the mesh CA stand-ins: it issues
tokens shaped like real bound service-account tokens (``sub:
system:serviceaccount:<ns>:<sa>``, ``aud`` a list, ``exp``/``iat``/``nbf``,
``kubernetes.io`` claims) and verifies them as a TokenReview would. HS256
with a per-instance key stands in for the API server's RS256 key: the CA
stand-ins verify the signature, so a forged or foreign token is refused.

Also a :class:`bridge.identity.tokens.TokenSource` for the providers under
test, with knobs to hand out a wrong audience or another service account.

:class:`ApiServerTokenReview` is the other way a CA stand-in can check a
token, the way istiod does it in a cluster: a ``TokenReview`` sent to the
(stand-in) API server with the real ``kubernetes`` client, so a token from
that server's TokenRequest is accepted and anything else is not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client as k8s_client

from bridge.model.secrets import SecretBytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(ValueError):
    """A token that a TokenReview would not authenticate."""


class TokenReviewer(Protocol):
    """What a CA stand-in asks to authenticate a token (blocking: call it in a thread)."""

    def review(self, token: str, audience: str) -> tuple[str, str]:
        """(namespace, service account) of a valid token for ``audience``; TokenError if not."""
        ...


@dataclass
class FakeTokenRequest:
    """Issues and reviews service-account JWTs; also a TokenSource for one account."""

    namespace: str = "edge"
    service_account: str = "meshbridge"
    lifetime_s: int = 3600
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # Test knobs: issue for this audience instead of the one asked for.
    audience_override: str | None = None
    issued: list[str] = field(default_factory=list)  # audiences asked for, in order

    def issue(self, namespace: str, service_account: str, audiences: list[str]) -> str:
        now = int(time.time())
        claims = {
            "aud": audiences,
            "exp": now + self.lifetime_s,
            "iat": now,
            "nbf": now,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "0f0c0ffe"},
            },
        }
        header = {"alg": "HS256", "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(sig)}"

    def review(self, token: str, audience: str) -> tuple[str, str]:
        """(namespace, service account) of a valid token for ``audience``; TokenError if not."""
        try:
            h, p, s = token.split(".")
        except ValueError:
            raise TokenError("not a JWT") from None
        want = hmac.new(self.key, f"{h}.{p}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _unb64(s)):
            raise TokenError("token signature does not verify")
        claims: dict[str, Any] = json.loads(_unb64(p))
        if claims.get("exp", 0) <= time.time():
            raise TokenError("token expired")
        auds = claims.get("aud")
        auds = [auds] if isinstance(auds, str) else list(auds or [])
        if audience not in auds:
            raise TokenError(f"token audiences {auds} do not include {audience!r}")
        sub = str(claims.get("sub", ""))
        parts = sub.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise TokenError(f"subject {sub!r} is not a service account")
        return parts[2], parts[3]

    async def token(self, audience: str) -> SecretBytes:
        self.issued.append(audience)
        aud = self.audience_override if self.audience_override is not None else audience
        return SecretBytes(self.issue(self.namespace, self.service_account, [aud]))


class ApiServerTokenReview:
    """Reviews tokens as istiod does: ``TokenReview`` to the API server, then its checks.

    istiod (``pkg/kube/tokenreview``) sends the token with the audiences it
    accepts, and refuses the caller unless the review is authenticated
    without error, the user is in group ``system:serviceaccounts``, and the
    username is ``system:serviceaccount:<ns>:<sa>``.
    """

    def __init__(self, api_url: str) -> None:
        configuration = k8s_client.Configuration()
        configuration.host = api_url
        self._api = k8s_client.AuthenticationV1Api(k8s_client.ApiClient(configuration))
        self.reviews = 0

    def review(self, token: str, audience: str) -> tuple[str, str]:
        self.reviews += 1
        body = k8s_client.V1TokenReview(
            spec=k8s_client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        try:
            result = self._api.create_token_review(body, _request_timeout=5)
        except (k8s_client.ApiException, OSError) as exc:
            raise TokenError(f"TokenReview failed: {exc}") from exc
        st = result.status
        if st is None or st.error:
            raise TokenError(
                f"the service account authentication returns an error: {st and st.error}"
            )
        if not st.authenticated:
            raise TokenError("the token is not authenticated")
        user = st.user
        if user is None or "system:serviceaccounts" not in (user.groups or []):
            raise TokenError("the token is not a service account")
        parts = str(user.username or "").split(":")
        if len(parts) != 4:
            raise TokenError("invalid username field in the token review result")
        return parts[2], parts[3]
