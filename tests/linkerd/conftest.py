"""Fixtures for the Linkerd identity provider's tests: the stand-in (with its Envoy proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.linkerd.identity import (
    TRUST_ROOTS_CONFIG_MAP,
    TRUST_ROOTS_KEY,
    LinkerdIdentityProvider,
    LinkerdIdentitySettings,
    LinkerdRoots,
)
from bridge.identity.rotation import RenewalPolicy
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import K8sConfigMap
from bridge.store import Store
from tests.standins.linkerd_identity import LinkerdIdentity
from tests.standins.sa_tokens import FakeTokenRequest

GATEWAY_NS = "edge"
GATEWAY_SA = "meshbridge"
GATEWAY_ID = f"{GATEWAY_SA}.{GATEWAY_NS}.serviceaccount.identity.linkerd.cluster.local"
FAST = RenewalPolicy(
    fraction=0.7, of_remaining=True, backoff_initial=0.1, backoff_max=0.5, min_interval=0.2
)


def anchors_config_map(pem: str, namespace: str = "linkerd") -> K8sConfigMap:
    return K8sConfigMap(namespace, TRUST_ROOTS_CONFIG_MAP, FrozenDict({TRUST_ROOTS_KEY: pem}))


def make_provider(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity, **settings: Any
) -> LinkerdIdentityProvider:
    base = LinkerdIdentitySettings(
        address=li.address,
        namespace=li.namespace,
        trust_domain=li.trust_domain,
        gateway_namespace=GATEWAY_NS,
        service_account=GATEWAY_SA,
        timeout_s=5.0,
        roots_poll_s=0.05,
    )
    return LinkerdIdentityProvider(
        store,
        tokens,
        LinkerdRoots.config_map(store, li.namespace),
        dataclasses.replace(base, **settings),
        policy=FAST,
    )


@contextlib.asynccontextmanager
async def running(provider: LinkerdIdentityProvider) -> AsyncIterator[LinkerdIdentityProvider]:
    task = asyncio.create_task(provider.run())
    try:
        yield provider
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def tokens() -> FakeTokenRequest:
    return FakeTokenRequest(namespace=GATEWAY_NS, service_account=GATEWAY_SA)


@pytest.fixture
async def li(tokens: FakeTokenRequest) -> AsyncIterator[LinkerdIdentity]:
    async with LinkerdIdentity(tokens) as s:
        yield s


@pytest.fixture
def store(li: LinkerdIdentity) -> Store:
    s = Store()
    s.upsert("kubernetes", anchors_config_map(li.bundle_pem))
    return s
