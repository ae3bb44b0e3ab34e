"""The Connect identity provider and the intention check, against the Consul stand-in."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cryptography import x509

from adapters.consul.client import ConsulClient
from adapters.consul.connect import (
    ConnectIdentityProvider,
    IntentionChecker,
    connect_sni,
    connect_spiffe,
)
from bridge.identity import names
from bridge.identity.rotation import CONSUL_POLICY
from bridge.model.consul import ConsulServiceKey
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.model.secrets import PrivateKey
from bridge.store import Store
from tests.consul.conftest import fast_settings
from tests.standins.consul_agent import ConsulAgent
from tests.support.wait import async_wait_for

FAST_POLICY = dataclasses.replace(CONSUL_POLICY, min_interval=0.05, backoff_initial=0.05)
ID = names.identity_secret(Mesh.CONSUL)
TRUST = names.trust_secret(Mesh.CONSUL)


@asynccontextmanager
async def running(provider: ConnectIdentityProvider) -> AsyncIterator[ConnectIdentityProvider]:
    task = asyncio.create_task(provider.run())
    try:
        yield provider
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def secrets(store: Store) -> tuple[IdentitySecret | None, TrustSecret | None]:
    world, _ = store.take()
    ident = world.mesh_secrets.get(ID)
    trust = world.mesh_secrets.get(TRUST)
    assert ident is None or isinstance(ident, IdentitySecret)
    assert trust is None or isinstance(trust, TrustSecret)
    return ident, trust


def uri_sans(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


async def test_leaf_and_roots_reach_the_store(agent: ConsulAgent, client: ConsulClient) -> None:
    store = Store()
    async with running(ConnectIdentityProvider(client, store, policy=FAST_POLICY)) as p:
        await async_wait_for(lambda: all(secrets(store)), what="identity and trust")
        ident, trust = secrets(store)
        assert ident is not None and trust is not None
        assert uri_sans(ident.cert_chain_pem) == [agent.spiffe_id("meshbridge")]
        assert isinstance(ident.private_key, PrivateKey)
        assert "PRIVATE KEY" not in repr(ident)
        assert trust.ca_bundle_pem.strip() == agent.active_root_pem.strip()
        assert trust.trust_domain == agent.trust_domain
        assert p.status().healthy and p.status().trust_domain == agent.trust_domain
    assert store.sync_state()["identity/consul"]


async def test_leaf_rotation_is_a_secret_update(agent: ConsulAgent, client: ConsulClient) -> None:
    store = Store()
    async with running(ConnectIdentityProvider(client, store, policy=FAST_POLICY)):
        await async_wait_for(lambda: secrets(store)[0] is not None)
        first = secrets(store)[0]
        assert first is not None
        agent.rotate_leaf("meshbridge")
        await async_wait_for(lambda: secrets(store)[0] != first, timeout=5, what="the rotated leaf")
        now = secrets(store)[0]
        assert (
            now is not None and now.cert_chain_pem.strip() == agent.leaf_pem("meshbridge").strip()
        )
    leaf_calls = [r for r in agent.requests if r.path.endswith("/leaf/meshbridge")]
    assert all(int(r.query["index"]) >= 1 for r in leaf_calls[1:]), "blocking after the first"


async def test_root_rotation_keeps_old_root_trusted_and_chains_new_leaf(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    store = Store()
    old_root = agent.active_root_pem
    async with running(ConnectIdentityProvider(client, store, policy=FAST_POLICY)):
        await async_wait_for(lambda: secrets(store)[0] is not None)
        agent.rotate_roots()
        new_root = agent.active_root_pem

        def rotated() -> bool:
            ident, trust = secrets(store)
            return bool(
                ident
                and trust
                and new_root.strip() in trust.ca_bundle_pem
                and ident.cert_chain_pem.strip() == (agent.leaf_pem("meshbridge") or "").strip()
            )

        await async_wait_for(rotated, timeout=5, what="new root and re-issued leaf")
        _, trust = secrets(store)
        assert trust is not None and old_root.strip() in trust.ca_bundle_pem
        assert trust.ca_bundle_pem.index(new_root.strip()) < trust.ca_bundle_pem.index(
            old_root.strip()
        ), "active root first"


async def test_unavailable_keeps_current_identity_then_recovers(agent: ConsulAgent) -> None:
    store = Store()
    async with (
        ConsulClient(fast_settings(agent, wait_s=1.0)) as client,
        running(ConnectIdentityProvider(client, store, policy=FAST_POLICY)) as p,
    ):
        await async_wait_for(lambda: secrets(store)[0] is not None)
        before = secrets(store)[0]
        await agent.go_down()
        await async_wait_for(lambda: p.error() != "", timeout=5, what="the failure noticed")
        assert secrets(store)[0] == before, "current certificate stays"
        agent.rotate_leaf("meshbridge")
        await agent.come_up()
        await async_wait_for(lambda: secrets(store)[0] != before, timeout=5)
        await async_wait_for(lambda: p.error() == "")


async def test_acl_denied_leaf_names_the_permission() -> None:
    async with ConsulAgent(acl_tokens={"right"}) as agent:
        store = Store()
        async with (
            ConsulClient(fast_settings(agent)) as client,
            running(
                ConnectIdentityProvider(client, store, policy=FAST_POLICY, service="edge")
            ) as p,
        ):
            await async_wait_for(lambda: p.diagnostics, what="a diagnostic")
            assert "service:write on 'edge'" in p.diagnostics[0].message
            assert p.diagnostics[0].code == "identity.unavailable"


def intention_codes(store: Store) -> list[tuple[str, str]]:
    world, _ = store.take()
    return [(d.ref.name, d.code) for d in world.source_diagnostics]


def match_requests(agent: ConsulAgent) -> int:
    return agent.count("GET", "/v1/connect/intentions/match")


def check_requests(agent: ConsulAgent) -> int:
    return agent.count("GET", "/v1/connect/intentions/check")


@asynccontextmanager
async def checking(checker: IntentionChecker) -> AsyncIterator[None]:
    task = asyncio.create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_intention_deny_is_a_diagnostic_on_the_target(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.intentions[("meshbridge", "billing")] = "deny"
    agent.intentions[("meshbridge", "web")] = "allow"
    web = ConsulServiceKey("dc1", "web", connect=True)
    billing = ConsulServiceKey("dc1", "billing", connect=True)
    plain = ConsulServiceKey("dc1", "legacy")  # not Connect: no intentions apply
    store = Store()
    # A timer far beyond the test: every change below is noticed by the blocking query.
    checker = IntentionChecker(client, store, interval_s=600)
    async with checking(checker):
        checker.check_set([web, billing, plain])
        await async_wait_for(
            lambda: intention_codes(store) == [("billing#connect", "consul.intention_denied")]
        )
        world, _ = store.take()
        assert (
            "consul intention create -allow meshbridge billing" in world.source_diagnostics[0].fix
        )
        agent.intentions[("meshbridge", "billing")] = "allow"
        await async_wait_for(
            lambda: intention_codes(store) == [], timeout=5, what="cleared by the change"
        )
        agent.intentions[("*", "web")] = "deny"  # a wildcard source applies to us too
        del agent.intentions[("meshbridge", "web")]
        await async_wait_for(
            lambda: intention_codes(store) == [("web#connect", "consul.intention_denied")],
            timeout=5,
            what="a wildcard deny noticed without the timer",
        )
    assert not any(
        r.path == "/v1/connect/intentions/check" and r.query["destination"] == "legacy"
        for r in agent.requests
    )
    assert all("index" not in r.query for r in agent.requests if "check" in r.path)


async def test_intentions_steady_state_blocks_and_ignores_other_sources(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    store = Store()
    checker = IntentionChecker(client, store, interval_s=600)
    async with checking(checker):
        await asyncio.sleep(0)
        assert match_requests(agent) == 0  # nothing to check: no request at all
        checker.check_set([ConsulServiceKey("dc1", "web", connect=True)])
        # The watch's second call is the blocking one: the checker is settled.
        await async_wait_for(lambda: match_requests(agent) >= 2, what="blocking match query")
        # Two rounds: the new target, and the watch's first answer.
        await async_wait_for(lambda: check_requests(agent) >= 2, what="first checks")
        checks = check_requests(agent)
        blocked = match_requests(agent)
        agent.intentions[("frontend", "web")] = "deny"  # not our identity
        await async_wait_for(lambda: match_requests(agent) > blocked, what="the watch woke")
        assert intention_codes(store) == []
        agent.intentions[("meshbridge", "web")] = "deny"
        await async_wait_for(
            lambda: intention_codes(store) == [("web#connect", "consul.intention_denied")],
            timeout=5,
        )
        # One re-check, for our own change: the other source's intention cost none.
        assert check_requests(agent) == checks + 1
        last = [r for r in agent.requests if r.path.endswith("/match")][-1]
        assert last.query["by"] == "source" and last.query["name"] == "meshbridge"
        assert int(last.query["index"]) >= 1


async def test_intentions_fall_back_to_the_timer_without_the_match_query(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.intention_match_supported = False
    store = Store()
    checker = IntentionChecker(client, store, interval_s=0.1)
    async with checking(checker):
        checker.check_set([ConsulServiceKey("dc1", "web", connect=True)])
        await async_wait_for(lambda: check_requests(agent) >= 2, what="a timer round")
        agent.intentions[("meshbridge", "web")] = "deny"
        await async_wait_for(
            lambda: intention_codes(store) == [("web#connect", "consul.intention_denied")],
            what="deny noticed by the timer",
        )
    assert match_requests(agent) == 1  # refused once (404), never asked again


def test_sni_and_spiffe_names() -> None:
    td = "11111111-2222-3333-4444-555555555555.consul"
    assert connect_sni(td, "web", "dc1") == f"web.default.dc1.internal.{td}"
    assert connect_sni(td, "web", "dc1", "team", "ap1") == f"web.team.ap1.dc1.internal-v1.{td}"
    assert connect_spiffe(td, "web", "dc1") == f"spiffe://{td}/ns/default/dc/dc1/svc/web"
    assert (
        connect_spiffe(td, "web", "dc1", "team", "ap1")
        == f"spiffe://{td}/ap/ap1/ns/team/dc/dc1/svc/web"
    )
