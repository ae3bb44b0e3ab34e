"""Catalog sync: shapes and annotations (pure), and the syncers against the Consul stand-in."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from adapters.consul.client import ConsulClient
from adapters.consul.sync import (
    OWNER_LABEL,
    OWNER_VALUE,
    CatalogSyncSettings,
    ExternalNameService,
    ToConsulSyncer,
    ToKubernetesSyncer,
    desired_registrations,
    namespace_allowed,
    node_addresses,
    plan_sync,
    registrations_for,
    split_tags,
)
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import K8sNode, K8sService, Kind, ObjectRef
from bridge.store import Store
from tests.consul.conftest import fast_settings
from tests.consul.worlds import SOURCE, endpoints, fill, service, world_of
from tests.standins.consul_agent import ConsulAgent
from tests.support.wait import async_wait_for

S = CatalogSyncSettings(debounce_s=0.05)


@asynccontextmanager
async def running(syncer: ToConsulSyncer | ToKubernetesSyncer) -> AsyncIterator[None]:
    task = asyncio.create_task(syncer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def txns(agent: ConsulAgent) -> int:
    return agent.count("PUT", "/v1/txn")


def names_on(agent: ConsulAgent, node: str = "k8s-sync") -> set[str]:
    return {s["Service"] for s in agent.services_on(node).values()}


# -- pure: annotations and shapes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        pytest.param("a,b", ("a", "b"), id="plain"),
        pytest.param(r"a\,b, c ,", ("a,b", "c"), id="escaped-comma"),
        pytest.param("", (), id="empty"),
    ],
)
def test_split_tags(text: str, tags: tuple[str, ...]) -> None:
    assert split_tags(text) == tags


def test_namespace_deny_wins_over_allow_and_annotation() -> None:
    s = CatalogSyncSettings(allow_namespaces=("team-*", "default"), deny_namespaces=("team-x",))
    assert namespace_allowed("team-a", s) and namespace_allowed("default", s)
    assert not namespace_allowed("team-x", s) and not namespace_allowed("other", s)
    svc = service("web", "team-x", annotations={"consul.hashicorp.com/service-sync": "true"})
    assert registrations_for(svc, [endpoints("web", ["10.0.0.1"], "team-x")], s) == []


def test_cluster_ip_shape_annotations_and_readiness_check() -> None:
    svc = service(
        "web",
        "shop",
        annotations={
            "consul.hashicorp.com/service-tags": r"v1,blue\,green",
            "consul.hashicorp.com/service-meta-owner": "team-a",
            "consul.hashicorp.com/service-weight": "5",
        },
    )
    s = CatalogSyncSettings(prefix="k-", namespace_suffix=True)
    regs = registrations_for(
        svc,
        [endpoints("web", ["10.0.0.1", "10.0.0.2"], "shop", not_ready=frozenset({"10.0.0.2"}))],
        s,
    )
    assert [(r.name, r.address, r.port, r.status) for r in regs] == sorted(
        [("k-web-shop", "10.0.0.1", 8080, "passing"), ("k-web-shop", "10.0.0.2", 8080, "critical")],
        key=lambda t: next(r.id for r in regs if r.address == t[1]),
    )
    r = regs[0]
    assert r.tags == ("k8s", "v1", "blue,green")
    assert r.weight == 5
    assert r.meta["external-source"] == "kubernetes"
    assert r.meta["external-k8s-ns"] == "shop"
    assert r.meta["port-http"] == "80"
    assert r.meta["owner"] == "team-a"
    assert r.meta["external-k8s-ref-kind"] == "Pod"
    assert r.check_id == f"shop/{r.id}"
    chk = r.check_body("k8s-sync")
    assert (chk["Name"], chk["Type"]) == ("Kubernetes Readiness Check", "kubernetes-readiness")


def test_service_name_annotation_skips_prefix_and_port_by_name() -> None:
    svc = K8sService(
        namespace="default",
        name="web",
        ports=(
            service("x").ports[0],
            dataclasses.replace(service("x").ports[0], port=9090, name="admin"),
        ),
        annotations=FrozenDict(
            {
                "consul.hashicorp.com/service-name": "frontend",
                "consul.hashicorp.com/service-port": "admin",
            }
        ),
    )
    sl = dataclasses.replace(
        endpoints("web", ["10.0.0.1"]),
        ports=(
            *endpoints("web", []).ports,
            dataclasses.replace(endpoints("web", []).ports[0], name="admin", port=9091),
        ),
    )
    (r,) = registrations_for(svc, [sl], CatalogSyncSettings(prefix="p-", namespace_suffix=True))
    assert (r.name, r.port) == ("frontend", 9091)


def test_sync_annotation_false_and_default_sync_off() -> None:
    eps = [endpoints("web", ["10.0.0.1"])]
    off = service("web", annotations={"consul.hashicorp.com/service-sync": "false"})
    assert registrations_for(off, eps, S) == []
    quiet = CatalogSyncSettings(default_sync=False)
    assert registrations_for(service("web"), eps, quiet) == []
    on = service("web", annotations={"consul.hashicorp.com/service-sync": "true"})
    assert len(registrations_for(on, eps, quiet)) == 1


def node(name: str, internal: str = "", *external: str) -> K8sNode:
    addrs = [("Hostname", name)]
    addrs += [("InternalIP", internal)] if internal else []
    addrs += [("ExternalIP", e) for e in external]
    return K8sNode(name=name, addresses=tuple(addrs))


@pytest.mark.parametrize(
    ("mode", "n", "expect"),
    [
        pytest.param("ExternalOnly", node("a", "10.1.0.1", "203.0.113.1"), ("203.0.113.1",)),
        pytest.param("ExternalOnly", node("a", "10.1.0.1"), (), id="ExternalOnly-none"),
        pytest.param("InternalOnly", node("a", "10.1.0.1", "203.0.113.1"), ("10.1.0.1",)),
        pytest.param("ExternalFirst", node("a", "10.1.0.1", "203.0.113.1"), ("203.0.113.1",)),
        pytest.param("ExternalFirst", node("a", "10.1.0.1"), ("10.1.0.1",), id="fallback"),
        pytest.param(
            "ExternalOnly",
            node("a", "", "203.0.113.1", "203.0.113.2"),
            ("203.0.113.1", "203.0.113.2"),
        ),
    ],
)
def test_node_port_sync_type_picks_node_addresses(
    mode: str, n: K8sNode, expect: tuple[str, ...]
) -> None:
    assert node_addresses(n, mode) == expect


def test_nodeport_loadbalancer_external_ips_shapes() -> None:
    eps = [endpoints("web", ["10.0.0.1", "10.0.0.2"], not_ready=frozenset({"10.0.0.2"}))]
    nodes = {"node-a": node("node-a", "192.168.0.1", "203.0.113.1")}
    np = service("web", type_="NodePort", node_port=30080)
    (r,) = registrations_for(np, eps, S, nodes)  # both pods on one node: one instance
    assert (r.address, r.port, r.status) == ("203.0.113.1", 30080, "passing")
    assert r.meta["external-k8s-node-name"] == "node-a"
    internal = dataclasses.replace(S, node_port_sync_type="InternalOnly")
    assert registrations_for(np, eps, internal, nodes)[0].address == "192.168.0.1"
    # An endpoint on a node meshbridge does not know registers nothing (and is logged).
    assert registrations_for(np, eps, S, {}) == []
    lb = service("web", type_="LoadBalancer", lb=("198.51.100.7", "lb.example.com"))
    assert {(r.address, r.port) for r in registrations_for(lb, eps, S)} == {
        ("198.51.100.7", 80),
        ("lb.example.com", 80),
    }
    ext = service("web", type_="LoadBalancer", lb=("198.51.100.7",), external_ips=("1.2.3.4",))
    assert [(r.address, r.status) for r in registrations_for(ext, eps, S)] == [
        ("1.2.3.4", "passing")
    ]
    # Readiness for every type: no ready endpoint → the LB instance is critical.
    none_ready = [endpoints("web", ["10.0.0.1"], not_ready=frozenset({"10.0.0.1"}))]
    assert registrations_for(lb, none_ready, S)[0].status == "critical"
    assert registrations_for(service("n", type_="ExternalName"), eps, S) == []


# -- Kubernetes → Consul against the stand-in ----------------------------------------------------


async def test_initial_sync_batches_then_change_within_a_second_then_zero_writes(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    store = Store()
    fill(store, 100, 2)  # 200 instances: 400 operations → 4 transactions (+ the node)
    syncer = ToConsulSyncer(client, S)
    async with running(syncer):
        syncer.update(store.take()[0], kubernetes_synced=True)
        await async_wait_for(lambda: len(agent.services_on("k8s-sync")) == 200, timeout=10)
        await asyncio.wait_for(syncer.wait_idle(), 5)
        sizes = [r.ops for r in agent.requests if r.path == "/v1/txn"]
        assert len(sizes) == 4 and max(sizes) <= 128
        assert all(r.status == 200 for r in agent.requests if r.path == "/v1/txn")
        checks = agent.checks_on("k8s-sync")
        assert len(checks) == 200 and {c["Status"] for c in checks.values()} == {"passing"}

        # One endpoint becomes not ready: one small transaction, well within a second.
        before = txns(agent)
        store.upsert(
            SOURCE,
            endpoints("svc-0007", ["10.0.7.1", "10.0.7.2"], not_ready=frozenset({"10.0.7.2"})),
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        syncer.update(store.take()[0], kubernetes_synced=True)

        def critical() -> bool:
            return any(c["Status"] == "critical" for c in agent.checks_on("k8s-sync").values())

        await async_wait_for(critical, timeout=1.0, interval=0.01, what="the change in Consul")
        assert loop.time() - t0 < 1.0
        await asyncio.wait_for(syncer.wait_idle(), 5)
        assert txns(agent) == before + 1
        assert [r.ops for r in agent.requests if r.path == "/v1/txn"][-1] == 2

        # Steady state: new Worlds with nothing changed, and unrelated catalog churn.
        writes = txns(agent)
        for _ in range(5):
            syncer.update(store.take()[0], kubernetes_synced=True)
            agent.register("other-node", "10.9.9.9", "unrelated", 1)
            await asyncio.wait_for(syncer.wait_idle(), 5)
        assert txns(agent) == writes
        assert agent.count("PUT", "/v1/catalog/register") == 0


async def test_nodeport_instances_follow_the_worlds_nodes(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    store = Store()
    store.upsert(SOURCE, service("web", type_="NodePort", node_port=30080))
    store.upsert(SOURCE, endpoints("web", ["10.0.0.1"], node="node-a"))
    store.upsert(SOURCE, node("node-a", "192.168.0.1", "203.0.113.1"))
    syncer = ToConsulSyncer(client, dataclasses.replace(S, node_port_sync_type="ExternalFirst"))

    def addresses() -> set[tuple[str, int]]:
        return {(x["Address"], x["Port"]) for x in agent.services_on("k8s-sync").values()}

    async with running(syncer):
        syncer.update(store.take()[0], kubernetes_synced=True)
        await asyncio.wait_for(syncer.wait_idle(), 5)
        assert addresses() == {("203.0.113.1", 30080)}
        # Only the Node changed (its external address went away): the instance moves
        # to the internal address in one transaction.
        before = txns(agent)
        store.upsert(SOURCE, node("node-a", "192.168.0.1"))
        syncer.update(store.take()[0], kubernetes_synced=True)
        await async_wait_for(lambda: addresses() == {("192.168.0.1", 30080)}, timeout=5)
        await asyncio.wait_for(syncer.wait_idle(), 5)
        assert txns(agent) == before + 1


async def test_no_writes_before_first_complete_kubernetes_list(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    # A previous run registered 10 services.
    syncer0 = ToConsulSyncer(client, S)
    full = world_of(10, 1)
    async with running(syncer0):
        syncer0.update(full, kubernetes_synced=True)
        await async_wait_for(lambda: len(agent.services_on("k8s-sync")) == 10)
        await asyncio.wait_for(syncer0.wait_idle(), 5)
    writes = txns(agent)
    syncer = ToConsulSyncer(client, S)
    async with running(syncer):
        syncer.update(world_of(3, 1), kubernetes_synced=False)  # a partial list
        await asyncio.sleep(0.3)  # the debounce passes several times; nothing may be written
        assert txns(agent) == writes
        syncer.update(full, kubernetes_synced=True)
        await asyncio.wait_for(syncer.wait_idle(), 5)
    assert txns(agent) == writes, "the complete list equals Consul: nothing to write"
    assert agent.removed == []


async def test_restart_mid_sync_never_deregisters_what_stays(agent: ConsulAgent) -> None:
    settings = fast_settings(agent)
    old = world_of(50, 2)
    new = world_of(120, 2)  # the same 50 and 70 more: 240 instances, 4 transactions
    async with ConsulClient(settings) as client:
        first = ToConsulSyncer(client, S)
        async with running(first):
            first.update(old, kubernetes_synced=True)
            await asyncio.wait_for(first.wait_idle(), 5)
        agent.txn_delay = 0.1
        second = ToConsulSyncer(client, S)
        async with running(second):
            second.update(new, kubernetes_synced=True)
            await async_wait_for(lambda: len(agent.services_on("k8s-sync")) > 100, timeout=5)
        # Cut off mid-sync; the replacement starts on a partial list, then the full one.
        assert len(agent.services_on("k8s-sync")) < 240
        agent.txn_delay = 0.0
        third = ToConsulSyncer(client, S)
        async with running(third):
            third.update(world_of(20, 2), kubernetes_synced=False)
            await asyncio.sleep(0.2)
            third.update(new, kubernetes_synced=True)
            await async_wait_for(lambda: len(agent.services_on("k8s-sync")) == 240, timeout=5)
            await asyncio.wait_for(third.wait_idle(), 5)
    assert agent.removed == [], "nothing that should stay was deregistered, not even briefly"
    assert agent.services_on("k8s-sync").keys() == desired_registrations(new, S).keys()


async def test_two_clusters_share_one_consul(agent: ConsulAgent, client: ConsulClient) -> None:
    a_settings = dataclasses.replace(S, node_name="k8s-sync-east")
    b_settings = dataclasses.replace(S, node_name="k8s-sync-west")
    a, b = ToConsulSyncer(client, a_settings), ToConsulSyncer(client, b_settings)
    east, west = Store(), Store()
    fill(east, 3, 1, namespace="default")
    fill(west, 2, 1, namespace="default")  # the same Service names in the other cluster
    # Someone else's untagged service sits on east's node: never touched.
    agent.register("k8s-sync-east", "127.0.0.1", "hand-made", 1, service_id="hand-made")
    async with running(a), running(b):
        a.update(east.take()[0], kubernetes_synced=True)
        b.update(west.take()[0], kubernetes_synced=True)
        await asyncio.wait_for(asyncio.gather(a.wait_idle(), b.wait_idle()), 5)
        assert len(agent.services_on("k8s-sync-east")) == 4
        assert len(agent.services_on("k8s-sync-west")) == 2
        # East drops everything: west's registrations and the hand-made one stay.
        east.replace(SOURCE, [])
        a.update(east.take()[0], kubernetes_synced=True)
        await asyncio.wait_for(a.wait_idle(), 5)
        await async_wait_for(lambda: names_on(agent, "k8s-sync-east") == {"hand-made"})
        assert len(agent.services_on("k8s-sync-west")) == 2
    assert all(node == "k8s-sync-east" and sid != "hand-made" for node, sid in agent.removed)


async def test_consul_unavailable_then_back_nothing_lost(agent: ConsulAgent) -> None:
    store = Store()
    fill(store, 5, 1)
    async with ConsulClient(fast_settings(agent)) as client:
        syncer = ToConsulSyncer(client, S)
        async with running(syncer):
            syncer.update(store.take()[0], kubernetes_synced=True)
            await asyncio.wait_for(syncer.wait_idle(), 5)
            await agent.go_down()
            store.upsert(SOURCE, service("late"))
            store.upsert(SOURCE, endpoints("late", ["10.50.0.1"]))
            store.delete(SOURCE, ObjectRef(Kind.SERVICE, "default", "svc-0000"))
            syncer.update(store.take()[0], kubernetes_synced=True)
            await async_wait_for(lambda: syncer.stats.errors >= 1, what="a failed write")
            await agent.come_up()
            await async_wait_for(
                lambda: "late" in names_on(agent) and "svc-0000" not in names_on(agent),
                timeout=5,
                what="resync after Consul came back",
            )
            assert len(agent.services_on("k8s-sync")) == 5


async def test_drift_behind_our_back_is_repaired(agent: ConsulAgent, client: ConsulClient) -> None:
    store = Store()
    fill(store, 3, 1)
    syncer = ToConsulSyncer(client, S)
    async with running(syncer):
        syncer.update(store.take()[0], kubernetes_synced=True)
        await asyncio.wait_for(syncer.wait_idle(), 5)
        victim = sorted(agent.services_on("k8s-sync"))[0]
        agent.deregister("k8s-sync", victim)
        await async_wait_for(lambda: victim in agent.services_on("k8s-sync"), timeout=5)


async def test_check_status_drift_is_repaired(agent: ConsulAgent, client: ConsulClient) -> None:
    """Someone flips our readiness check: the syncer puts Kubernetes' verdict back."""
    store = Store()
    fill(store, 2, 1)
    syncer = ToConsulSyncer(client, S)

    def statuses() -> set[str]:
        return {c["Status"] for c in agent.checks_on("k8s-sync").values()}

    async with running(syncer):
        syncer.update(store.take()[0], kubernetes_synced=True)
        await asyncio.wait_for(syncer.wait_idle(), 5)
        assert statuses() == {"passing"}
        before = txns(agent)
        victim = sorted(agent.services_on("k8s-sync"))[0]
        agent.set_check_status("k8s-sync", victim, "critical")
        await async_wait_for(lambda: statuses() == {"passing"}, timeout=5, what="check repaired")
        await asyncio.wait_for(syncer.wait_idle(), 5)
        # One transaction rewrites the one drifted registration, nothing else.
        assert txns(agent) == before + 1
        last = [r for r in agent.requests if r.path == "/v1/txn"][-1]
        assert last.ops == 2  # its service and its check


class Gate:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.event.is_set()

    async def wait_leader(self) -> None:
        await self.event.wait()


async def test_only_the_leader_writes(agent: ConsulAgent, client: ConsulClient) -> None:
    gate = Gate()
    syncer = ToConsulSyncer(client, S, leader=gate)
    async with running(syncer):
        syncer.update(world_of(2, 1), kubernetes_synced=True)
        await asyncio.sleep(0.2)
        assert txns(agent) == 0
        gate.event.set()
        await asyncio.wait_for(syncer.wait_idle(), 5)
        assert len(agent.services_on("k8s-sync")) == 2


async def test_dry_run_plan_prints_and_writes_nothing(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    syncer = ToConsulSyncer(client, S)
    async with running(syncer):
        syncer.update(world_of(3, 1), kubernetes_synced=True)
        await asyncio.wait_for(syncer.wait_idle(), 5)
    puts = agent.count("PUT")
    # svc-0002 is gone; svc-0000 gains an endpoint.
    store = Store()
    fill(store, 2, 1)
    store.upsert(SOURCE, endpoints("svc-0000", ["10.0.0.1", "10.0.0.9"]))
    world = store.take()[0]
    plan = await plan_sync(client, world, S)
    text = str(plan)
    assert [r.address for r in plan.register] == ["10.0.0.9"]
    assert [r.name for r in plan.deregister] == ["svc-0002"]
    assert "+ svc-0000" in text and "- svc-0002" in text
    assert agent.count("PUT") == puts


# -- Consul → Kubernetes -----------------------------------------------------------------------


class MemoryWriter:
    """Writes Services into a Store, as the Kubernetes watch would then report them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, str]] = []

    def _put(self, svc: ExternalNameService) -> None:
        self.store.upsert(
            SOURCE,
            K8sService(
                namespace=svc.namespace,
                name=svc.name,
                type="ExternalName",
                external_name=svc.external_name,
                labels=svc.labels,
                annotations=svc.annotations,
            ),
        )

    async def create_service(self, svc: ExternalNameService) -> None:
        self.calls.append(("create", svc.name))
        self._put(svc)

    async def update_service(self, svc: ExternalNameService) -> None:
        self.calls.append(("update", svc.name))
        self._put(svc)

    async def delete_service(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))
        self.store.delete(SOURCE, ObjectRef(Kind.SERVICE, namespace, name))


async def test_consul_to_kubernetes_external_names_never_overwrite_others(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.register("n1", "10.0.0.1", "Billing_API", 80)
    agent.register("n1", "10.0.0.1", "api", 80)
    agent.register("k8s-sync", "127.0.0.1", "mirrored", 80, tags=["k8s"])  # ours: not mirrored
    store = Store()
    store.upsert(SOURCE, service("api"))  # a user's Service with the same name
    owned_stale = ExternalNameService("default", "gone", "gone.service.consul", "gone")
    store.upsert(
        SOURCE,
        K8sService(
            namespace="default",
            name="gone",
            type="ExternalName",
            external_name=owned_stale.external_name,
            labels=FrozenDict({OWNER_LABEL: OWNER_VALUE}),
        ),
    )
    writer = MemoryWriter(store)
    settings = dataclasses.replace(S, to_kubernetes=True)
    syncer = ToKubernetesSyncer(client, writer, settings)

    def feed() -> None:
        syncer.update(store.take()[0], kubernetes_synced=True)

    async with running(syncer):
        feed()
        await async_wait_for(lambda: ("create", "billing-api") in writer.calls, timeout=5)
        await async_wait_for(lambda: ("delete", "gone") in writer.calls, timeout=5)
        feed()
        world = store.take()[0]
        made = world.services[ObjectRef(Kind.SERVICE, "default", "billing-api")]
        assert made.external_name == "Billing_API.service.consul"
        assert made.labels[OWNER_LABEL] == OWNER_VALUE
        assert world.services[ObjectRef(Kind.SERVICE, "default", "api")].type == "ClusterIP"
        assert any("default/api" in why for why in syncer.skipped)
        assert not any(name in ("api", "mirrored") for _, name in writer.calls)
        # The Consul service goes away: its ExternalName Service follows.
        for sid, svc in agent.services_on("n1").items():
            if svc["Service"] == "Billing_API":
                agent.deregister("n1", sid)
        await async_wait_for(lambda: ("delete", "billing-api") in writer.calls, timeout=5)
