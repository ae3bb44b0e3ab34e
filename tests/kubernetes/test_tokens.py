"""TokenRequest: audience-bound tokens for the bridge's service account, refreshed early."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from adapters.kubernetes.tokens import ServiceAccountTokens
from bridge.errors import IdentityError, IdentityUnavailable
from bridge.identity.tokens import token_audiences, token_subject
from tests.standins.kube_api import KubeApiServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_token_per_audience_cached_and_refreshed_at_80_percent(
    kube: KubeApiServer, api_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kube.add_service_account("meshbridge", "gateway")
    clock = FakeClock()
    tokens = ServiceAccountTokens(
        api_client, "meshbridge", "gateway", expiration_s=600, clock=clock
    )
    istio = await tokens.token("istio-ca")
    claims = kube.verify_token(istio.reveal().decode(), "istio-ca")
    assert claims["sub"] == "system:serviceaccount:meshbridge:gateway"
    assert token_audiences(istio) == ("istio-ca",)
    assert str(token_subject(istio)) == "meshbridge/gateway"
    assert await tokens.token("istio-ca") == istio and tokens.requests == 1

    linkerd = await tokens.token("identity.l5d.io")
    assert token_audiences(linkerd) == ("identity.l5d.io",) and linkerd != istio
    body = kube.requests_matching("POST", "/serviceaccounts/gateway/token")[-1].body
    assert body["spec"] == {"audiences": ["identity.l5d.io"], "expirationSeconds": 600}

    clock.now += 0.79 * 600
    assert await tokens.token("istio-ca") == istio, "not refreshed before 80% of its life"
    clock.now += 0.02 * 600
    fresh = await tokens.token("istio-ca")
    assert fresh != istio and tokens.requests == 3
    kube.verify_token(fresh.reveal().decode(), "istio-ca")

    # Past the refresh point with the API server down: the still-valid token is used.
    clock.now += 0.85 * 600
    with kube.unavailable("503"):
        assert await tokens.token("istio-ca") == fresh
        clock.now += 0.2 * 600  # now past its expiry
        with pytest.raises(IdentityUnavailable, match="meshbridge/gateway"):
            await tokens.token("istio-ca")
    assert (await tokens.token("istio-ca")) != fresh

    for t in (istio, linkerd, fresh):
        assert t.reveal().decode() not in caplog.text
        assert t.reveal().decode() not in repr(tokens.issued("istio-ca"))


async def test_unknown_service_account_is_an_identity_error(
    kube: KubeApiServer, api_client: Any
) -> None:
    tokens = ServiceAccountTokens(api_client, "meshbridge", "missing")
    with pytest.raises(IdentityError, match="missing") as info:
        await tokens.token("istio-ca")
    assert not isinstance(info.value, IdentityUnavailable)
    assert info.value.__cause__ is not None
