"""The pipeline: debounce with a cap, nothing before sync, last good snapshot wins."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from bridge.errors import ConsistencyError
from bridge.model.frozen import FrozenDict, freeze
from bridge.model.ir import (
    Discovery,
    Endpoint,
    Ir,
    Listener,
    Resolved,
    Route,
    Upstream,
    UpstreamKey,
    VirtualHost,
)
from bridge.model.k8s import K8sService, Kind, ObjectRef, ServicePort
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.pipeline import Pipeline, SnapshotPublisher
from bridge.server.cache import DEFAULT_GROUP, SnapshotCache
from bridge.store import Store
from bridge.xds.resources import CLUSTER, ENDPOINT, Resources
from bridge.xds.translate import Translation, translate
from tests.support.wait import async_wait_for


def svc(name: str, prefix: str | None = None) -> K8sService:
    ann = {"meshbridge.io/prefix": prefix or f"/{name}"}
    return K8sService("default", name, (ServicePort(80, "http"),), annotations=freeze(ann))


def tiny_resolve(world: World) -> Resolved:
    """A stand-in resolver: one route and one EDS upstream per Service (enough for the loop)."""
    routes, upstreams = [], {}
    for ref, s in sorted(world.services.items()):
        key = UpstreamKey(s.namespace, s.name, "http")
        upstreams[key] = Upstream(key, Discovery.EDS, (Endpoint("127.0.0.1", 9000),))
        routes.append(Route("*", s.annotations["meshbridge.io/prefix"], key, ref))
    ir = Ir(
        listeners=(Listener("http", 8080),),
        virtual_hosts=(VirtualHost("*", tuple(routes)),) if routes else (),
        upstreams=FrozenDict(upstreams),
    )
    return Resolved(services=FrozenDict(), ir=ir)


@dataclass
class Recorder:
    """Records every resolve call; raises while ``fail`` says so."""

    calls: list[frozenset[ObjectRef]] = field(default_factory=list)
    fail: Callable[[World], bool] = lambda w: False

    def __call__(
        self,
        world: World,
        settings: ResolveSettings,
        previous: Resolved | None,
        changed: frozenset[ObjectRef],
    ) -> Resolved:
        self.calls.append(changed)
        if self.fail(world):
            raise RuntimeError("resolver exploded")
        return tiny_resolve(world)


@dataclass
class Harness:
    store: Store
    cache: SnapshotCache
    pipeline: Pipeline
    resolver: Recorder


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = Store()
    cache = SnapshotCache()
    resolver = Recorder()
    pipeline = Pipeline(
        store,
        ResolveSettings(),
        SnapshotPublisher(cache),
        hold_off=0.03,
        max_delay=0.3,
        resolve_fn=resolver,
    )
    task = asyncio.create_task(pipeline.run())
    try:
        yield Harness(store, cache, pipeline, resolver)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait(aw: Awaitable[int]) -> int:
    """Await a pipeline counter with a deadline."""
    async with asyncio.timeout(5.0):
        return await aw


async def test_nothing_is_published_before_every_source_synced(harness: Harness) -> None:
    store, p = harness.store, harness.pipeline
    store.register_source("a")
    store.register_source("b")
    store.upsert("a", svc("web"))
    store.mark_synced("a")
    await wait(p.wait_held(0))
    assert p.published == 0 and p.attempts == 0
    assert harness.cache.snapshot(DEFAULT_GROUP) is None

    store.upsert("b", svc("api"))
    store.mark_synced("b")
    await wait(p.wait_published(0))
    snap = harness.cache.snapshot(DEFAULT_GROUP)
    assert snap is not None
    assert set(snap.entries(CLUSTER)) == {"default/web/http", "default/api/http"}
    # The first build saw every change made while waiting for the sync.
    assert harness.resolver.calls[0] >= {svc("web").ref, svc("api").ref}


async def test_a_burst_is_coalesced_into_few_builds(harness: Harness) -> None:
    store, p = harness.store, harness.pipeline
    store.mark_synced("dir")
    await wait(p.wait_published(0))  # the initial, empty build
    before = p.attempts
    for i in range(300):
        store.upsert("dir", svc(f"s{i}"))
        await asyncio.sleep(0)  # let the pipeline task run between events, as real sources do
    await async_wait_for(
        lambda: p.world is not None and len(p.world.services) == 300,
        timeout=5,
        what="the burst to be published",
    )
    builds = p.attempts - before
    assert 1 <= builds <= 3, builds
    snap = harness.cache.snapshot(DEFAULT_GROUP)
    assert snap is not None and len(snap.entries(CLUSTER)) == 300


async def test_the_max_delay_caps_the_hold_off(harness: Harness) -> None:
    store, p = harness.store, harness.pipeline
    store.mark_synced("dir")
    await wait(p.wait_published(0))
    # Events every 10 ms never leave 30 ms of quiet: only the 300 ms cap can publish.
    sent = 0
    while p.published < 2:
        assert sent < 300, "nothing published during a steady trickle of changes"
        store.upsert("dir", svc(f"t{sent}"))
        sent += 1
        await asyncio.sleep(0.01)  # the pace of the trickle, not a wait for a result
    assert p.world is not None and 0 < len(p.world.services) < sent + 1


async def test_last_good_snapshot_wins_when_resolve_raises(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    store, p, cache = harness.store, harness.pipeline, harness.cache
    store.upsert("dir", svc("web"))
    store.mark_synced("dir")
    await wait(p.wait_published(0))
    good = cache.snapshot(DEFAULT_GROUP)
    good_resolved = p.resolved

    harness.resolver.fail = lambda w: ObjectRef(Kind.SERVICE, "default", "boom") in w.services
    caplog.set_level(logging.ERROR, logger="bridge.pipeline")
    attempts = p.attempts
    store.upsert("dir", svc("boom"))
    await wait(p.wait_attempted(attempts))
    store.upsert("dir", svc("web", "/web2"))  # fails again, same error
    await wait(p.wait_attempted(attempts + 1))
    assert cache.snapshot(DEFAULT_GROUP) is good
    assert p.published == 1 and p.resolved is good_resolved
    assert p.last_error is not None and p.last_error.stage == "resolve"
    assert "resolver exploded" in p.last_error.message
    assert len([r for r in caplog.records if "last good" in r.getMessage()]) == 1  # logged once

    store.delete("dir", ObjectRef(Kind.SERVICE, "default", "boom"))
    await wait(p.wait_published(1))
    assert p.last_error is None
    # The changes of the failed batches were not lost: the next resolve got them too.
    assert harness.resolver.calls[-1] >= {
        ObjectRef(Kind.SERVICE, "default", "boom"),
        ObjectRef(Kind.SERVICE, "default", "web"),
    }
    snap = cache.snapshot(DEFAULT_GROUP)
    assert snap is not None and snap is not good
    assert set(snap.entries(CLUSTER)) == {"default/web/http"}


def _without_endpoints(ir: Ir, previous: Translation | None) -> Translation:
    full = translate(ir, previous)
    by_type = {t: m for t, m in full.resources.by_type.items() if t != ENDPOINT}
    return Translation(Resources(FrozenDict(by_type)))


@pytest.mark.parametrize(
    ("broken_translate", "stage", "error"),
    [
        pytest.param(
            lambda ir, prev: (_ for _ in ()).throw(ValueError("translator bug")),
            "translate",
            "translator bug",
            id="translate-raises",
        ),
        pytest.param(_without_endpoints, "publish", "lacks", id="inconsistent-snapshot"),
    ],
)
async def test_last_good_snapshot_wins_when_translate_or_consistency_fails(
    broken_translate: Callable[[Ir, Translation | None], Translation], stage: str, error: str
) -> None:
    store = Store()
    cache = SnapshotCache()
    use_broken = False

    def translate_fn(ir: Ir, previous: Translation | None) -> Translation:
        return broken_translate(ir, previous) if use_broken else translate(ir, previous)

    p = Pipeline(
        store,
        ResolveSettings(),
        SnapshotPublisher(cache),
        hold_off=0.01,
        resolve_fn=Recorder(),
        translate_fn=translate_fn,
    )
    task = asyncio.create_task(p.run())
    try:
        store.upsert("dir", svc("web"))
        store.mark_synced("dir")
        await wait(p.wait_published(0))
        good = cache.snapshot(DEFAULT_GROUP)
        use_broken = True
        store.upsert("dir", svc("api"))
        await wait(p.wait_attempted(1))
        assert cache.snapshot(DEFAULT_GROUP) is good
        assert p.last_error is not None and p.last_error.stage == stage
        assert error in p.last_error.message
        if stage == "publish":
            assert p.last_error.message.startswith(ConsistencyError.__name__)
        use_broken = False
        store.upsert("dir", svc("api", "/api2"))
        await wait(p.wait_published(1))
        snap = cache.snapshot(DEFAULT_GROUP)
        assert snap is not None and set(snap.entries(CLUSTER)) == {
            "default/web/http",
            "default/api/http",
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_with_the_real_resolver_an_endpoint_change_rebuilds_only_its_service() -> None:
    from bridge.model.k8s import EndpointPort, K8sEndpointSlice, SliceEndpoint

    def slice_of(name: str, ip: str) -> K8sEndpointSlice:
        return K8sEndpointSlice(
            "default",
            f"{name}-1",
            name,
            ports=(EndpointPort(8080, "http"),),
            endpoints=(SliceEndpoint((ip,)),),
        )

    store = Store()
    cache = SnapshotCache()
    p = Pipeline(
        store, ResolveSettings(), SnapshotPublisher(cache), hold_off=0.01, max_delay=0.1
    )  # the real resolve and translate
    task = asyncio.create_task(p.run())
    try:
        for name in ("web", "api"):
            store.upsert("dir", svc(name))
            store.upsert("dir", slice_of(name, "10.0.0.1"))
        store.mark_synced("dir")
        await wait(p.wait_published(0))
        before, snap_before = p.resolved, cache.snapshot(DEFAULT_GROUP)
        assert before is not None and snap_before is not None
        store.upsert("dir", slice_of("web", "10.0.0.2"))
        await wait(p.wait_published(1))
        after, snap = p.resolved, cache.snapshot(DEFAULT_GROUP)
        assert after is not None and snap is not None
        api = ObjectRef(Kind.SERVICE, "default", "api")
        web = ObjectRef(Kind.SERVICE, "default", "web")
        assert after.services[api] is before.services[api]  # not re-resolved
        assert after.services[web] is not before.services[web]
        # Only web's endpoints changed on the wire; its cluster did not.
        assert snap.changed == {ENDPOINT: frozenset({"default/web/http"})}
        assert (
            snap.entries(CLUSTER)["default/web/http"]
            is snap_before.entries(CLUSTER)["default/web/http"]
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Cycle:
    """Cyclic garbage: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _large_build_resolver(
    kept: list[object], cycles: list[weakref.ref[_Cycle]]
) -> Callable[[World, ResolveSettings, Resolved | None, frozenset[ObjectRef]], Resolved]:
    """A resolver that, like a full build of a large World, leaves many new objects behind."""

    def resolve_fn(
        world: World,
        settings: ResolveSettings,
        previous: Resolved | None,
        changed: frozenset[ObjectRef],
    ) -> Resolved:
        kept.append([[] for _ in range(150_000)])
        cycle = _Cycle()
        cycles.append(weakref.ref(cycle))
        return tiny_resolve(world)

    return resolve_fn


def _synced_store() -> Store:
    store = Store()
    store.upsert("dir", svc("web"))
    store.mark_synced("dir")
    return store


def test_a_large_build_leaves_nothing_frozen_and_its_cyclic_garbage_collectable() -> None:
    kept: list[object] = []
    cycles: list[weakref.ref[_Cycle]] = []
    p = Pipeline(
        _synced_store(),
        ResolveSettings(),
        SnapshotPublisher(SnapshotCache()),
        resolve_fn=_large_build_resolver(kept, cycles),
    )
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert p.build_once()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert cycles[0]() is not None  # made while the collector was paused
    gc.collect()
    assert cycles[0]() is None


def test_objects_frozen_by_someone_else_stay_frozen_across_a_large_build() -> None:
    kept: list[object] = []
    cycles: list[weakref.ref[_Cycle]] = []
    p = Pipeline(
        _synced_store(),
        ResolveSettings(),
        SnapshotPublisher(SnapshotCache()),
        resolve_fn=_large_build_resolver(kept, cycles),
    )
    marker: list[object] = []  # tracked by the collector
    gc.freeze()
    try:
        assert not _in_collector_generations(marker)
        assert p.build_once()
        assert gc.get_freeze_count() > 0
        assert not _in_collector_generations(marker)
        assert gc.isenabled()
    finally:
        gc.unfreeze()
    assert _in_collector_generations(marker)


def _in_collector_generations(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector walks (frozen ones are not)."""
    return any(o is obj for o in gc.get_objects())
