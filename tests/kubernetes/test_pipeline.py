"""The adapter feeding the real pipeline: bursts coalesce, changes re-resolve only their own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.kubernetes.source import KubernetesSource
from bridge.model.ir import Resolved
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.pipeline import Pipeline, SnapshotPublisher
from bridge.resolve import resolve
from bridge.server.cache import SnapshotCache
from bridge.store import Store
from tests.kubernetes.conftest import endpoint_slice, namespace, service
from tests.standins.kube_api import KubeApiServer
from tests.support.wait import async_wait_for

N = 10


def addresses(resolved: Resolved | None, ns: str, name: str) -> tuple[str, ...]:
    if resolved is None:
        return ()
    for key, up in resolved.ir.upstreams.items():
        if key.namespace == ns and key.service == name:
            return tuple(e.address for e in up.endpoints)
    return ()


class Calls:
    """The real resolver, recording the changed refs of each call."""

    def __init__(self) -> None:
        self.changed: list[frozenset[ObjectRef]] = []

    def __call__(self, world: Any, settings: Any, previous: Any, changed: Any) -> Resolved:
        self.changed.append(changed)
        return resolve(world, settings, previous, changed)


@pytest.fixture
async def pipeline(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> AsyncIterator[tuple[Pipeline, Calls, KubernetesSource]]:
    for ns in ("a", "b"):
        kube.apply(namespace(ns))
        for i in range(N):
            kube.apply(service(ns, f"s{i}", {"meshbridge.io/prefix": f"/{ns}/s{i}"}))
            kube.apply(endpoint_slice(ns, f"s{i}-abc", f"s{i}", ["10.0.0.1"]))
    calls = Calls()
    p = Pipeline(
        store,
        ResolveSettings(),
        SnapshotPublisher(SnapshotCache()),
        hold_off=0.05,
        max_delay=0.5,
        resolve_fn=calls,
    )
    src: KubernetesSource = await source_factory()
    task = asyncio.create_task(p.run())
    try:
        await asyncio.wait_for(p.wait_published(0), 10)
        yield p, calls, src
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_burst_of_1000_endpoint_slice_updates_is_few_builds(
    kube: KubeApiServer, pipeline: tuple[Pipeline, Calls, KubernetesSource]
) -> None:
    p, _, src = pipeline
    attempts0 = p.attempts

    def burst() -> None:
        for u in range(1000):
            i = u % N
            kube.apply(endpoint_slice("a", f"s{i}-abc", f"s{i}", [f"10.1.{u // 250}.{u % 250}"]))

    t = threading.Thread(target=burst)
    t.start()
    await asyncio.to_thread(t.join, 60)

    def final() -> bool:
        for i in range(N):
            last = max(u for u in range(1000) if u % N == i)
            if addresses(p.resolved, "a", f"s{i}") != (f"10.1.{last // 250}.{last % 250}",):
                return False
        return True

    await async_wait_for(final, 20, what="the burst's final state in the published IR")
    builds = p.attempts - attempts0
    assert src.stats("kubernetes:EndpointSlice").events >= 990
    assert 1 <= builds <= 60, f"{builds} builds for 1000 updates"
    assert p.last_error is None


async def test_annotation_and_mesh_marker_changes_touch_only_their_services(
    kube: KubeApiServer, pipeline: tuple[Pipeline, Calls, KubernetesSource]
) -> None:
    p, calls, _ = pipeline
    before = p.resolved
    assert before is not None
    n0 = p.published

    kube.apply(service("a", "s3", {"meshbridge.io/prefix": "/a/s3", "meshbridge.io/timeout": "5s"}))
    await asyncio.wait_for(p.wait_published(n0), 10)
    assert calls.changed[-1] == {ObjectRef(Kind.SERVICE, "a", "s3")}
    after = p.resolved
    assert after is not None
    for ref, res in before.services.items():
        if ref != ObjectRef(Kind.SERVICE, "a", "s3"):
            assert after.services[ref] is res, f"{ref} was re-resolved"

    # A mesh marker on namespace b: only that Namespace changed, only its Services move.
    n1 = p.attempts
    marked = namespace("b", {"istio-injection": "enabled"})
    kube.apply(marked)
    await asyncio.wait_for(p.wait_attempted(n1), 10)
    assert calls.changed[-1] == {ObjectRef(Kind.NAMESPACE, "", "b")}
    last = p.resolved
    assert last is not None
    for ref, res in after.services.items():
        if ref.namespace == "a":
            assert last.services[ref] is res, f"{ref} in another namespace was re-resolved"
