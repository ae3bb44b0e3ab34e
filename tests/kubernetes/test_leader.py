"""Leader election on a Lease: one writer at any time, handover on loss and on release."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.kubernetes.client import api_client_for
from adapters.kubernetes.leader import LeaseElector, LeaseSettings
from tests.standins.kube_api import KubeApiServer, RequestInfo
from tests.support.wait import async_wait_for

FAST = {"lease_duration_s": 1.0, "renew_deadline_s": 0.6, "retry_period_s": 0.1}


@pytest.fixture
def clients(kube: KubeApiServer) -> Iterator[dict[str, Any]]:
    out = {n: api_client_for(kube.url, user_agent=f"meshbridge/{n}") for n in ("a", "b")}
    yield out
    for c in out.values():
        c.close()


@contextlib.asynccontextmanager
async def running(elector: LeaseElector) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(elector.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def cut_off(agent: str) -> Any:
    def predicate(r: RequestInfo) -> int | None:
        if "/leases" in r.path and r.headers.get("User-Agent") == f"meshbridge/{agent}":
            return 503
        return None

    return predicate


async def test_two_replicas_race_exactly_one_writer(
    kube: KubeApiServer, clients: dict[str, Any]
) -> None:
    a = LeaseElector(clients["a"], LeaseSettings("meshbridge", identity="a", **FAST))
    b = LeaseElector(clients["b"], LeaseSettings("meshbridge", identity="b", **FAST))
    electors = {"a": a, "b": b}
    both: list[float] = []

    async def sample() -> None:
        while True:
            if a.is_leader and b.is_leader:
                both.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        async with running(a) as stop_a, running(b) as stop_b:
            stops = {"a": stop_a, "b": stop_b}
            await async_wait_for(lambda: a.is_leader or b.is_leader, 5, what="a leader")
            first, second = ("a", "b") if a.is_leader else ("b", "a")
            # The leader can no longer reach the API server: it must stop before the other leads.
            kube.fail_when(cut_off(first))
            await async_wait_for(lambda: electors[second].is_leader, 5, what="takeover")
            assert not electors[first].is_leader
            kube.fail_when(None)
            # Back in touch, the old leader sees the new holder and stays a follower.
            await async_wait_for(
                lambda: len(kube.requests_matching("PUT", "/leases")) > 20, 5, what="renewals"
            )
            assert electors[second].is_leader and not electors[first].is_leader
            # The new leader shuts down and releases: the first one takes over at once.
            stops[second].set()
            await asyncio.wait_for(electors[first].wait_leader(), 5)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    assert not both, f"two writers at once at {both[:5]}"
    lease = kube.get("coordination.k8s.io/v1", "Lease", "meshbridge", "meshbridge-catalog-sync")
    assert lease is not None
    assert not lease["spec"].get("holderIdentity"), "released on shutdown"
    assert lease["spec"]["leaseTransitions"] >= 1


async def test_release_on_shutdown_hands_over_at_once(
    kube: KubeApiServer, clients: dict[str, Any]
) -> None:
    slow = {"lease_duration_s": 30.0, "renew_deadline_s": 20.0, "retry_period_s": 0.1}
    a = LeaseElector(clients["a"], LeaseSettings("meshbridge", identity="a", **slow))
    b = LeaseElector(clients["b"], LeaseSettings("meshbridge", identity="b", **slow))
    async with running(a) as stop_a:
        await asyncio.wait_for(a.wait_leader(), 5)
        async with running(b):
            await async_wait_for(
                lambda: (
                    sum(
                        r.headers.get("User-Agent") == "meshbridge/b"
                        for r in kube.requests_matching("GET", "/leases")
                    )
                    >= 3
                ),
                5,
                what="b campaigning against a live lease",
            )
            assert not b.is_leader
            stop_a.set()
            # Far sooner than the 30 s lease: a cleared the holder.
            await asyncio.wait_for(b.wait_leader(), 5)
            assert not a.is_leader


async def test_leader_stops_at_renew_deadline_by_its_own_clock(
    kube: KubeApiServer, clients: dict[str, Any]
) -> None:
    now = [0.0]
    a = LeaseElector(
        clients["a"],
        LeaseSettings(
            "meshbridge",
            identity="a",
            lease_duration_s=15,
            renew_deadline_s=10,
            retry_period_s=0.05,
        ),
        clock=lambda: now[0],
    )
    async with running(a):
        await asyncio.wait_for(a.wait_leader(), 5)
        kube.fail_when(cut_off("a"))
        await async_wait_for(
            lambda: len(kube.requests_matching("GET", "/leases")) > 3, 5, what="failed renews"
        )
        now[0] += 9.9
        assert a.is_leader, "still within the renew deadline"
        now[0] += 0.2
        assert not a.is_leader, "stops the moment the renew deadline passes, before the lease can"
        kube.fail_when(None)
        await asyncio.wait_for(a.wait_leader(), 5)
