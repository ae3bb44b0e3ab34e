"""Fixtures for the Istio CA provider's tests: a running istiod stand-in and fast renewal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.istio.ca import (
    ROOT_CONFIG_MAP,
    ROOT_KEY,
    IstioCaProvider,
    IstioCaSettings,
    IstioRoots,
)
from bridge.identity.rotation import RenewalPolicy
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import K8sConfigMap
from bridge.store import Store
from tests.standins.istiod_ca import IstiodCa
from tests.standins.sa_tokens import FakeTokenRequest

GATEWAY_NS = "edge"
GATEWAY_SA = "meshbridge"
GATEWAY_SPIFFE = f"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}"
# Renewal and retry in fractions of a second, so the loop shows in a short test.
FAST = RenewalPolicy(fraction=0.5, backoff_initial=0.1, backoff_max=0.5, min_interval=0.2)


def root_config_map(pem: str, namespace: str = GATEWAY_NS) -> K8sConfigMap:
    return K8sConfigMap(namespace, ROOT_CONFIG_MAP, FrozenDict({ROOT_KEY: pem}))


def make_provider(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa, **settings: Any
) -> IstioCaProvider:
    base = IstioCaSettings(
        address=ca.address,
        namespace=GATEWAY_NS,
        service_account=GATEWAY_SA,
        validity_s=3600,
        timeout_s=5.0,
        roots_poll_s=0.05,
    )
    return IstioCaProvider(
        store,
        tokens,
        IstioRoots.config_map(store, GATEWAY_NS),
        dataclasses.replace(base, **settings),
        policy=FAST,
    )


@contextlib.asynccontextmanager
async def running(provider: IstioCaProvider) -> AsyncIterator[IstioCaProvider]:
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
async def ca(tokens: FakeTokenRequest) -> AsyncIterator[IstiodCa]:
    async with IstiodCa(tokens) as c:
        yield c


@pytest.fixture
def store(ca: IstiodCa) -> Store:
    s = Store()
    s.upsert("kubernetes", root_config_map(ca.roots_pem))
    return s
