"""List+watch against the API stand-in: sync, scoping, 410, cuts, outages, bursts."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from typing import Any

import pytest

from adapters.kubernetes.source import KubernetesSource
from bridge.model.k8s import K8sEndpointSlice, Kind, ObjectRef
from bridge.model.world import World
from bridge.store import Store
from tests.kubernetes.conftest import (
    config_map,
    endpoint_slice,
    namespace,
    pod,
    secret,
    service,
)
from tests.standins.kube_api import KubeApiServer
from tests.support.wait import async_wait_for

SVC = Kind.SERVICE


def names(world: World, kind: Kind = SVC) -> set[str]:
    m: Any = {
        Kind.SERVICE: world.services,
        Kind.ENDPOINT_SLICE: world.endpoint_slices,
        Kind.POD: world.pods,
        Kind.CONFIG_MAP: world.config_maps,
        Kind.SECRET: world.secrets,
    }.get(kind)
    if kind is Kind.NAMESPACE:
        return set(world.namespaces)
    return {f"{r.namespace}/{r.name}" for r in m}


def world_of(store: Store) -> World:
    return store.take()[0]


async def until(
    store: Store, cond: Callable[[World], bool], what: str, within: float = 10
) -> World:
    def check() -> World | None:
        w = world_of(store)
        return w if cond(w) else None

    return await async_wait_for(check, within, what=what)


def seed(kube: KubeApiServer, services: list[str], ns: str = "default") -> None:
    kube.apply(namespace(ns))
    for name in services:
        kube.apply(service(ns, name))
        kube.apply(endpoint_slice(ns, f"{name}-abc", name, ["10.1.0.1"]))


class Sampler:
    """Takes a World after every store change, as the pipeline does, and keeps them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.worlds: list[World] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await self.store.wait()
            self.worlds.append(self.store.take()[0])

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_initial_sync_then_watch_events(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["a", "b"])
    kube.apply(pod("default", "a-1", sa="web", labels={"security.istio.io/tlsMode": "istio"}))
    src: KubernetesSource = await source_factory()
    assert not store.synced, "nothing is synced before the first lists"
    await asyncio.wait_for(src.wait_synced(), 10)
    assert store.synced
    w = world_of(store)
    assert names(w) == {"default/a", "default/b"}
    assert w.slices_of("default", "a")[0].endpoints[0].addresses == ("10.1.0.1",)
    assert w.pod("default", "a-1") is not None and w.pod("default", "a-1").service_account == "web"  # type: ignore[union-attr]
    assert "default" in w.namespaces

    kube.apply(service("default", "c", {"meshbridge.io/prefix": "/c"}))
    kube.apply(endpoint_slice("default", "a-abc", "a", ["10.1.0.1", "10.1.0.2"]))
    kube.delete("v1", "Service", "default", "b")
    w = await until(
        store,
        lambda w: (
            names(w) == {"default/a", "default/c"}
            and len(w.slices_of("default", "a")[0].endpoints) == 2
        ),
        "watch events applied",
    )
    assert w.services[ObjectRef(SVC, "default", "c")].annotations["meshbridge.io/prefix"] == "/c"
    stats = src.stats("kubernetes:Service")
    assert stats.lists == 1 and stats.events >= 2


async def test_namespace_scope_secrets_and_config_maps_by_name(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["in"], ns="team-a")
    seed(kube, ["out"], ns="team-b")
    kube.apply(config_map("meshbridge", "istio-ca-root-cert", {"root-cert.pem": "PEM"}))
    kube.apply(config_map("meshbridge", "unrelated", {"x": "y"}))
    kube.apply(secret("meshbridge", "consul-token", {"token": base64.b64encode(b"t0k").decode()}))
    kube.apply(secret("meshbridge", "other", {"k": base64.b64encode(b"v").decode()}))
    src: KubernetesSource = await source_factory(
        namespaces=("team-a",),
        config_maps=(("meshbridge", "istio-ca-root-cert"),),
        secrets=(("meshbridge", "consul-token"),),
    )
    await asyncio.wait_for(src.wait_synced(), 10)
    w = world_of(store)
    assert names(w) == {"team-a/in"}
    assert set(w.namespaces) == {"team-a"}
    assert names(w, Kind.CONFIG_MAP) == {"meshbridge/istio-ca-root-cert"}
    assert names(w, Kind.SECRET) == {"meshbridge/consul-token"}
    tok = w.secrets[ObjectRef(Kind.SECRET, "meshbridge", "consul-token")].data["token"]
    assert tok.reveal() == b"t0k" and "t0k" not in repr(w.secrets)

    # Only the scoped requests were made: no cluster-wide list of Secrets or Services.
    paths = {r.path for r in kube.requests if r.method == "GET"}
    assert "/api/v1/secrets" not in paths and "/api/v1/services" not in paths
    assert "/api/v1/namespaces/team-a/services" in paths

    kube.apply(config_map("meshbridge", "istio-ca-root-cert", {"root-cert.pem": "PEM2"}))
    kube.apply(service("team-b", "out2"))
    await until(
        store,
        lambda w: (
            w.config_maps[ObjectRef(Kind.CONFIG_MAP, "meshbridge", "istio-ca-root-cert")].data[
                "root-cert.pem"
            ]
            == "PEM2"
        ),
        "trust root update",
    )
    assert names(world_of(store)) == {"team-a/in"}


async def test_invalid_object_is_a_diagnostic_and_last_good_stays(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["a"])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    bad = service("default", "a")
    bad["spec"]["ports"] = [{"port": "eighty"}]
    kube.apply(bad)
    w = await until(store, lambda w: bool(w.source_diagnostics), "diagnostic for the bad Service")
    (d,) = w.source_diagnostics
    assert d.ref == ObjectRef(SVC, "default", "a") and "port" in d.field
    assert w.services[ObjectRef(SVC, "default", "a")].ports[0].port == 80, "last good kept"
    kube.apply(service("default", "a", port=81))
    w = await until(store, lambda w: not w.source_diagnostics, "diagnostic cleared")
    assert w.services[ObjectRef(SVC, "default", "a")].ports[0].port == 81


async def test_410_mid_watch_relists_without_an_empty_world(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["a", "b", "c"])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    sampler = Sampler(store)
    with sampler:
        # Changes the watch never delivers: only a relist can learn them.
        kube.hold_watches()
        kube.delete("v1", "Service", "default", "a")
        kube.apply(service("default", "b", {"meshbridge.io/prefix": "/b"}))
        kube.apply(service("default", "d"))
        kube.apply(endpoint_slice("default", "c-abc", "c", ["10.9.9.9"]))
        kube.expire_watches()
        w = await until(
            store,
            lambda w: (
                names(w) == {"default/b", "default/c", "default/d"}
                and w.slices_of("default", "c")[0].endpoints[0].addresses == ("10.9.9.9",)
            ),
            "relisted state",
        )
        await sampler.stop()
    assert w.services[ObjectRef(SVC, "default", "b")].annotations == {"meshbridge.io/prefix": "/b"}
    stats = src.stats("kubernetes:Service")
    assert stats.expired >= 1 and stats.lists >= 2
    assert sampler.worlds, "the relist was seen by takes"
    for world in sampler.worlds:
        # Never an empty (or half) world: the unchanged Service is in every take.
        assert ObjectRef(SVC, "default", "c") in world.services
        assert world.slices_of("default", "c"), "the unchanged Service kept its endpoints"
    # And the watch goes on after the relist.
    kube.apply(service("default", "e"))
    await until(store, lambda w: "default/e" in names(w), "watch after relist")


async def test_watch_cut_resumes_from_last_resource_version(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["a"])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    kube.apply(service("default", "b"))
    await until(store, lambda w: "default/b" in names(w), "b seen")
    rv_before_cut = src.stats("kubernetes:Service").resource_version
    watches_before = src.stats("kubernetes:Service").watches

    kube.cut_watches()
    # Changes made while the stream is down must all arrive, without a relist.
    for i in range(20):
        kube.apply(service("default", f"n{i}"))
    kube.delete("v1", "Service", "default", "a")
    expected = {"default/b"} | {f"default/n{i}" for i in range(20)}
    await until(store, lambda w: names(w) == expected, "changes made during the cut")
    stats = src.stats("kubernetes:Service")
    assert stats.lists == 1, "a cut resumes the watch, it does not relist"
    assert stats.watches > watches_before
    resumed = [
        r
        for r in kube.requests_matching("GET", "/api/v1/services")
        if r.query.get("watch") == "true"
    ]
    assert int(resumed[-1].query["resourceVersion"]) >= int(rv_before_cut)
    assert any(r.query["resourceVersion"] == rv_before_cut for r in resumed[1:])


@pytest.mark.parametrize(
    ("mode", "compact"),
    [
        pytest.param("503", False, id="503-resume"),
        pytest.param("reset", True, id="reset-history-lost-relist"),
    ],
)
async def test_api_server_unavailable_then_back(
    kube: KubeApiServer, store: Store, source_factory: Any, mode: str, compact: bool
) -> None:
    seed(kube, ["a", "b"])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    sampler = Sampler(store)
    with sampler:
        kube.set_unavailable(mode)
        errors0 = src.stats("kubernetes:Service").errors
        await async_wait_for(
            lambda: src.stats("kubernetes:Service").errors >= errors0 + 3,
            10,
            what="several failed reconnects",
        )
        # Throughout the outage the store still holds every object.
        w = world_of(store)
        assert names(w) == {"default/a", "default/b"}
        assert w.slices_of("default", "a")
        kube.apply(service("default", "c"))
        kube.delete("v1", "Service", "default", "a")
        if compact:
            kube.compact()
        kube.set_unavailable(None)
        await until(store, lambda w: names(w) == {"default/b", "default/c"}, "resynced")
        await sampler.stop()
    for world in sampler.worlds:
        assert ObjectRef(SVC, "default", "b") in world.services
    stats = src.stats("kubernetes:Service")
    assert stats.lists == (2 if compact else 1)
    assert src.status()["kubernetes:Service"]["state"] == "watching"


async def test_burst_of_endpoint_slice_updates_ends_in_final_state(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, [f"s{i}" for i in range(10)])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    batches0 = src.batches_applied

    def burst() -> None:
        for i in range(1000):
            s = i % 10
            kube.apply(
                endpoint_slice("default", f"s{s}-abc", f"s{s}", [f"10.2.{i // 250}.{i % 250}"])
            )

    t = threading.Thread(target=burst)
    t.start()
    await asyncio.to_thread(t.join, 30)

    def final(w: World) -> bool:
        for s in range(10):
            last = max(i for i in range(1000) if i % 10 == s)
            sl: K8sEndpointSlice = w.slices_of("default", f"s{s}")[0]
            if sl.endpoints[0].addresses != (f"10.2.{last // 250}.{last % 250}",):
                return False
        return True

    await until(store, final, "final state of the burst")
    assert src.stats("kubernetes:EndpointSlice").events >= 1000 - 10
    # The reflector hands events over in batches, not one loop callback each.
    assert src.batches_applied - batches0 < 1000


async def test_stop_ends_every_thread_and_watch(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    seed(kube, ["a"])
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    await async_wait_for(lambda: kube.open_watches >= 4, 5, what="watches open")
    await asyncio.wait_for(src.stop(), 5)
    assert not [t for t in threading.enumerate() if t.name.startswith("reflector ")]
    await async_wait_for(lambda: kube.open_watches == 0, 5, what="watches closed on the server")


async def test_bad_secret_is_a_diagnostic_without_its_value(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    good = secret("meshbridge", "consul-token", {"token": base64.b64encode(b"t0k").decode()})
    kube.apply(good)
    src: KubernetesSource = await source_factory(
        namespaces=("meshbridge",), secrets=(("meshbridge", "consul-token"),)
    )
    await asyncio.wait_for(src.wait_synced(), 10)
    bad = dict(good, data="czNjcjN0LXRva2Vu")  # the value pasted where a mapping belongs
    kube.apply(bad)
    w = await until(store, lambda w: bool(w.source_diagnostics), "diagnostic for the Secret")
    (d,) = w.source_diagnostics
    assert d.ref == ObjectRef(Kind.SECRET, "meshbridge", "consul-token") and d.field == "data"
    assert "czNjcjN0LXRva2Vu" not in f"{d.message} {d.fix} {d!r}"
    tok = w.secrets[ObjectRef(Kind.SECRET, "meshbridge", "consul-token")].data["token"]
    assert tok.reveal() == b"t0k", "the last good Secret stays"
