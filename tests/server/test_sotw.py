"""State-of-the-world ADS against a raw client: the protocol rules, one by one."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message

from bridge.errors import ConsistencyError
from bridge.model.frozen import FrozenDict
from bridge.model.sharded import ShardedMap
from bridge.server import ads as ads_module
from bridge.server.ads import private_transport
from bridge.server.cache import AccessPolicy, Snapshot
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from tests.server.builders import cla, cluster, listener, resources, route_config, secret, without
from tests.server.client import names
from tests.server.conftest import Harness
from tests.support.wait import async_wait_for


def base() -> Resources:
    return resources(
        cluster("a"),
        cluster("b"),
        cla("a", [("10.0.0.1", 80)]),
        cla("b", [("10.0.0.2", 80)]),
        listener("http", 8080, "routes"),
        route_config("routes", "a"),
    )


class World:
    """Publishes successive Resources as snapshots built on the previous one."""

    def __init__(self, h: Harness, r: Resources, group: str = "default") -> None:
        self.h, self.group = h, group
        self.resources = r
        self.snap = Snapshot.from_resources(r)
        h.cache.set_snapshot(group, self.snap)

    def set(self, r: Resources) -> Snapshot:
        self.resources = r
        self.snap = Snapshot.from_resources(r, self.snap)
        self.h.cache.set_snapshot(self.group, self.snap)
        return self.snap


async def test_cds_and_lds_carry_the_full_set_with_type_versions_and_fresh_nonces(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(CLUSTER)
    r1 = await s.recv()
    assert sorted(names(r1)) == ["a", "b"]
    assert r1.version_info == w.snap.version(CLUSTER)
    assert r1.nonce
    await s.ack(r1)
    w.set(without(without(w.resources, CLUSTER, "b"), ENDPOINT, "b"))
    r2 = await s.recv()
    assert names(r2) == ["a"]  # b's absence from a full-state reply deletes it
    assert r2.version_info == w.snap.version(CLUSTER) != r1.version_info
    assert r2.nonce != r1.nonce
    await s.ack(r2)
    await s.send(LISTENER, nonce="")
    r3 = await s.recv()
    assert r3.type_url == LISTENER
    assert names(r3) == ["http"]
    assert r3.nonce not in (r1.nonce, r2.nonce)


async def test_eds_by_name_answers_fewer_names_than_the_snapshot_and_names_that_appear_later(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["b", "later"])
    r1 = await s.recv()
    assert names(r1) == ["b"]  # a is in the snapshot but not asked for
    await s.ack(r1, ["b", "later"])
    await s.nothing()
    w.set(resources(cla("later", [("10.0.0.9", 80)]), base=w.resources))
    r2 = await s.recv()
    assert names(r2) == ["later"]  # only the new one: b did not change
    await s.ack(r2, ["b", "later"])
    w.set(resources(cla("a", [("10.0.0.7", 80)]), base=w.resources))
    await s.nothing()  # a changed, but this client never asked for it


async def test_a_newly_requested_name_is_sent_even_if_unchanged(harness: Harness) -> None:
    World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["a"])
    r1 = await s.recv()
    await s.ack(r1, ["a", "b"])
    r2 = await s.recv()
    assert names(r2) == ["b"]
    await s.ack(r2, ["b"])  # drop a ...
    await s.nothing()
    await s.ack(r2, ["a", "b"])  # ... and ask again: it is sent again
    r3 = await s.recv()
    assert names(r3) == ["a"]


async def test_nack_keeps_last_good_and_the_rejected_content_is_never_resent(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(CLUSTER)
    good = await s.recv()
    await s.ack(good)
    w.set(resources(cluster("b", connect_timeout_s=7), base=w.resources))
    bad = await s.recv()
    harness.clock.now += 5
    await s.send(CLUSTER, version=good.version_info, nonce=bad.nonce, error="cluster b: invalid")
    await s.nothing()  # held: no resend of what was rejected
    # A new snapshot with the same content (fresh objects) is still the rejected content.
    w.set(resources(cluster("b", connect_timeout_s=7), base=w.resources))
    await s.nothing()
    [st] = harness.ads.status()
    cds = {t.type_url: t for t in st.types}[CLUSTER]
    assert cds.nacks == 1
    assert cds.acked_version == good.version_info  # still the last good one
    assert st.last_nack is not None
    assert st.last_nack.message == "cluster b: invalid"
    assert st.last_nack.at == harness.clock.now
    assert harness.ads.nack_counts[CLUSTER] == 1
    sent_before = st.responses
    # The content changes: the new content is sent.
    w.set(resources(cluster("b", connect_timeout_s=3), base=w.resources))
    fixed = await s.recv()
    assert fixed.version_info not in (good.version_info, bad.version_info)
    await s.ack(fixed)
    await async_wait_for(
        lambda: harness.ads.status()[0].types[0].acked_version == fixed.version_info,
        what="the ACK of the fixed content",
    )
    assert harness.ads.status()[0].responses == sent_before + 1


async def test_nack_of_named_resources_holds_only_the_rejected_ones(harness: Harness) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["a", "b"])
    r1 = await s.recv()
    await s.ack(r1, ["a", "b"])
    w.set(resources(cla("a", [("bad", 1)]), base=w.resources))
    r2 = await s.recv()
    assert names(r2) == ["a"]
    await s.send(ENDPOINT, ["a", "b"], version=r1.version_info, nonce=r2.nonce, error="bad a")
    await s.nothing()
    w.set(resources(cla("b", [("10.0.0.3", 80)]), base=w.resources))
    r3 = await s.recv()
    assert names(r3) == ["b"]  # not the rejected a again


async def test_after_a_named_nack_only_changes_are_sent_and_the_held_one_waits(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["a", "b"])
    r1 = await s.recv()
    await s.ack(r1, ["a", "b"])
    w.set(resources(cla("a", [("bad", 1)]), base=w.resources))
    r2 = await s.recv()
    await s.send(ENDPOINT, ["a", "b"], version=r1.version_info, nonce=r2.nonce, error="bad a")
    await s.nothing()
    w.set(resources(cla("b", [("10.0.0.3", 80)]), base=w.resources))
    r3 = await s.recv()
    assert names(r3) == ["b"]
    await s.ack(r3, ["a", "b"])
    w.set(resources(cla("a", [("10.0.0.4", 80)]), base=w.resources))  # a fixed
    r4 = await s.recv()
    assert names(r4) == ["a"]
    await s.ack(r4, ["a", "b"])
    await s.nothing()  # nothing else was owed
    w.set(resources(cla("b", [("10.0.0.5", 80)]), base=w.resources))
    r5 = await s.recv()
    assert names(r5) == ["b"]


async def test_a_shrunk_subscription_stops_updates_and_growing_it_resends(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["a", "b"])
    r1 = await s.recv()
    await s.ack(r1, ["a"])  # drop b
    await s.nothing()
    w.set(resources(cla("b", [("10.0.0.3", 80)]), base=w.resources))
    await s.nothing()  # b is no longer asked for
    w.set(resources(cla("a", [("10.0.0.4", 80)]), base=w.resources))
    r2 = await s.recv()
    assert names(r2) == ["a"]
    await s.ack(r2, ["a", "b"])  # b again: its current content is sent
    r3 = await s.recv()
    assert names(r3) == ["b"]
    assert r3.resources[0].value == w.snap.entries(ENDPOINT)["b"].message.SerializeToString(
        deterministic=True
    )
    await s.ack(r3, ["a", "b"])
    await s.nothing()


async def test_streams_asking_for_the_same_names_hold_one_set(harness: Harness) -> None:
    World(harness, base())
    streams = [harness.sotw(f"gw-{i}") for i in range(2)]
    for s in streams:
        await s.send(ENDPOINT, ["a", "b"])
        await s.ack(await s.recv(), ["a", "b"])
    shared = harness.ads.shared_names(frozenset({"a", "b"}))
    await async_wait_for(lambda: len(harness.ads.status()) == 2, what="both streams")
    held = [st.types[ENDPOINT].names for st in harness.ads._streams]
    assert all(names is shared for names in held)


async def test_a_listen_port_the_bridge_serves_no_listener_on_is_reported(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(harness, base())  # the listener is on 8080
    s = harness.sotw()
    s.node.metadata.update({"meshbridge.io/listen-port": 9090})
    await s.send(LISTENER)
    await s.ack(await s.recv())
    [st] = harness.ads.status()
    assert st.listen_port == 9090
    assert "port 9090" in st.listen_port_problem
    assert "on 8080" in st.listen_port_problem
    assert sum("port 9090" in r.getMessage() for r in caplog.records) == 1
    w.set(resources(listener("http", 9090, "routes"), base=w.resources))
    await s.ack(await s.recv())
    assert harness.ads.status()[0].listen_port_problem == ""


async def test_the_record_of_refusals_is_bounded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ads_module, "_MAX_REJECTED", 2)
    w = World(harness, resources(cla("a", []), cla("b", []), cla("c", [])))
    s = harness.sotw()
    await s.send(ENDPOINT, ["a", "b", "c"])
    r1 = await s.recv()
    await s.ack(r1, ["a", "b", "c"])
    bad = [cla(n, [("bad", 1)]) for n in "abc"]
    w.set(resources(*bad, base=w.resources))
    r2 = await s.recv()
    assert names(r2) == ["a", "b", "c"]
    await s.send(ENDPOINT, ["a", "b", "c"], version=r1.version_info, nonce=r2.nonce, error="bad")
    # Only the newest two refusals are kept: the forgotten one is offered once more,
    # the other two stay held.
    r3 = await s.recv()
    assert names(r3) == ["a"]
    [stream] = harness.ads._streams
    assert len(stream.types[ENDPOINT].rejected) == 2


async def test_a_request_with_a_stale_nonce_is_ignored(harness: Harness) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(ENDPOINT, ["a"])
    r1 = await s.recv()
    w.set(resources(cla("a", [("10.0.0.5", 80)]), base=w.resources))
    r2 = await s.recv()
    # The client answers r1 late, asking for b: r2 superseded r1, so this is stale.
    await s.send(ENDPOINT, ["a", "b"], version=r1.version_info, nonce=r1.nonce)
    await s.nothing()
    await s.send(ENDPOINT, ["a", "b"], version=r2.version_info, nonce=r2.nonce)
    r3 = await s.recv()
    assert names(r3) == ["b"]


async def test_a_changed_cluster_is_followed_by_its_endpoints_even_if_unchanged(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(CLUSTER)
    cds = await s.recv()
    await s.ack(cds)
    await s.send(ENDPOINT, ["a", "b"])
    eds = await s.recv()
    await s.ack(eds, ["a", "b"])
    w.set(resources(cluster("a", connect_timeout_s=9), base=w.resources))
    r1 = await s.recv()
    r2 = await s.recv()
    assert (r1.type_url, r2.type_url) == (CLUSTER, ENDPOINT)
    assert names(r2) == ["a"]  # warming: a's unchanged endpoints, not b's


async def test_wildcard_streams_get_the_full_set_after_each_change(harness: Harness) -> None:
    w = World(harness, base())
    streams = [harness.sotw(f"gw-{i}") for i in range(2)]
    for s in streams:
        await s.send(CLUSTER)
        await s.ack(await s.recv())
        await s.send(ENDPOINT, ["a", "b"])
        await s.ack(await s.recv(), ["a", "b"])
    w.set(resources(cluster("b", connect_timeout_s=9), base=w.resources))
    for s in streams:
        cds = await s.recv()
        assert names(cds) == ["a", "b"]  # the full set, b's new content among it
        assert cds.resources[1].value == w.snap.entries(CLUSTER)["b"].message.SerializeToString(
            deterministic=True
        )
        await s.ack(cds)
        eds = await s.recv()
        assert names(eds) == ["b"]  # only the changed cluster's endpoints (warming)
        await s.ack(eds, ["a", "b"])
    w.set(without(w.resources, CLUSTER, "a"))
    for s in streams:
        cds = await s.recv()
        assert names(cds) == ["b"]  # absence is deletion
        await s.ack(cds)
        await s.nothing()


async def test_types_are_pushed_secrets_clusters_endpoints_listeners_routes(
    harness: Harness,
) -> None:
    s = harness.sotw()
    await s.send(ROUTE, ["routes"])
    await s.send(LISTENER)
    await s.send(ENDPOINT, ["a"])
    await s.send(CLUSTER)
    await s.send(SECRET, ["ca"])
    await async_wait_for(
        lambda: harness.ads.status() and len(harness.ads.status()[0].types) == 5,
        what="the server to see all five requests",
    )
    await s.nothing()  # nothing is published yet
    r = resources(cluster("a", ca_secret="ca"), secret("ca"), base=base())
    World(harness, r)
    got = [(await s.recv()).type_url for _ in range(5)]
    assert got == [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE]


async def test_an_inconsistent_snapshot_is_refused_and_the_last_good_is_served(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(CLUSTER)
    r1 = await s.recv()
    await s.ack(r1)
    with pytest.raises(ConsistencyError, match="cluster 'c' needs cluster load assignment 'c'"):
        w.set(resources(cluster("c"), base=w.resources))
    await s.nothing()
    assert harness.cache.snapshot("default") is not None
    assert set(harness.cache.snapshot("default").entries(CLUSTER)) == {"a", "b"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "policy", [AccessPolicy(allowed_node_ids=frozenset({"gw"}))], ids=["allow-list"]
)
async def test_a_node_outside_the_allow_list_is_refused(harness: Harness) -> None:
    World(harness, base())
    s = harness.sotw("intruder")
    await s.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.recv()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'intruder' is not allowed" in (err.value.details() or "")
    ok = harness.sotw("gw")
    await ok.send(CLUSTER)
    assert sorted(names(await ok.recv())) == ["a", "b"]


@pytest.mark.parametrize(
    "policy", [AccessPolicy(secret_node_ids=frozenset({"gw"}))], ids=["secret-nodes"]
)
async def test_secrets_are_withheld_from_a_node_not_allowed_them(harness: Harness) -> None:
    World(harness, resources(secret("ca"), base=base()))
    other = harness.sotw("other")
    await other.send(SECRET, ["ca"])
    await other.send(CLUSTER)
    r = await other.recv()
    assert r.type_url == CLUSTER  # the node is served, only without secrets
    await other.nothing()
    gw = harness.sotw("gw")
    await gw.send(SECRET, ["ca"])
    assert names(await gw.recv()) == ["ca"]
    by_node = {st.node_id: st.secrets for st in harness.ads.status()}
    assert by_node == {"gw": True, "other": False}


async def test_status_shows_each_connected_node(harness: Harness) -> None:
    World(harness, base())
    s = harness.sotw("gw-1")
    await s.send(CLUSTER)
    r = await s.recv()
    await s.ack(r)
    await async_wait_for(
        lambda: harness.ads.status()[0].types[0].acked_version == r.version_info,
        what="the ACK",
    )
    [st] = harness.ads.status()
    assert (st.node_id, st.group, st.mode) == ("gw-1", "default", "sotw")
    assert st.connected_since == harness.clock.now
    assert st.last_nack is None
    assert st.responses == 1
    assert st.bytes_sent > 0
    await s.close()
    await async_wait_for(lambda: harness.ads.status() == [], what="the stream to go")


@pytest.mark.parametrize(
    ("peer", "mtls", "private"),
    [
        pytest.param("ipv4:127.0.0.1:5555", False, True, id="loopback-v4"),
        pytest.param("ipv6:[::1]:5555", False, True, id="loopback-v6"),
        pytest.param("ipv6:%5B::1%5D:5555", False, True, id="loopback-v6-escaped"),
        pytest.param("unix:/run/meshbridge/xds.sock", False, True, id="unix"),
        pytest.param("ipv4:10.1.2.3:5555", False, False, id="remote"),
        pytest.param("ipv4:10.1.2.3:5555", True, True, id="remote-mtls"),
        pytest.param("ipv6:[2001:db8::1]:5555", False, False, id="remote-v6"),
    ],
)
def test_which_transports_may_carry_secrets(peer: str, mtls: bool, private: bool) -> None:
    assert private_transport(peer, mtls) is private


def sharded_world(n: int = 40) -> Resources:
    """Clusters and load assignments as ShardedMaps, as translation hands them over."""
    r = resources(
        *(cluster(f"c{i:02d}") for i in range(n)),
        *(cla(f"c{i:02d}", [("10.0.0.1", 80 + i)]) for i in range(n)),
    )
    return Resources(FrozenDict({t: ShardedMap.of(m.items()) for t, m in r.by_type.items()}))


def evolve(r: Resources, type_url: str, updates: dict[str, Message], *gone: str) -> Resources:
    source = r.of(type_url)
    assert isinstance(source, ShardedMap)
    return Resources(FrozenDict({**r.by_type, type_url: source.evolve(updates, gone)}))


async def test_sharded_sources_serve_full_sets_in_name_order_and_changes_alone(
    harness: Harness,
) -> None:
    w = World(harness, sharded_world())
    s = harness.sotw()
    await s.send(CLUSTER)
    r1 = await s.recv()
    expected = [f"c{i:02d}" for i in range(40)]
    assert names(r1) == expected  # by name, whatever the shards' order
    await s.ack(r1)
    await s.send(ENDPOINT, expected)
    r2 = await s.recv()
    assert sorted(names(r2)) == expected
    await s.ack(r2, expected)
    w.set(evolve(w.resources, ENDPOINT, {"c17": cla("c17", [("10.9.9.9", 80)])}))
    r3 = await s.recv()
    assert (r3.type_url, names(r3)) == (ENDPOINT, ["c17"])
    await s.ack(r3, expected)
    await s.nothing()
    w.set(evolve(evolve(w.resources, CLUSTER, {}, "c03"), ENDPOINT, {}, "c03"))
    r4 = await s.recv()
    assert (r4.type_url, names(r4)) == (CLUSTER, [n for n in expected if n != "c03"])


async def test_a_named_full_state_subscription_answers_only_changes_to_its_names(
    harness: Harness,
) -> None:
    w = World(harness, base())
    s = harness.sotw()
    await s.send(CLUSTER, ["a"])
    r1 = await s.recv()
    assert names(r1) == ["a"]
    await s.ack(r1, ["a"])
    w.set(resources(cluster("b", connect_timeout_s=7), base=w.resources))
    await s.nothing()  # b changed, but it was not asked for
    w.set(resources(cluster("a", connect_timeout_s=9), base=w.resources))
    r2 = await s.recv()
    assert names(r2) == ["a"]
    await s.ack(r2, ["a", "b"])
    r3 = await s.recv()
    assert sorted(names(r3)) == ["a", "b"]  # a newly named one: the full named set
    await s.ack(r3, ["b"])
    r4 = await s.recv()
    assert names(r4) == ["b"]  # a dropped from the names: the set without it
    await s.ack(r4, ["b"])
    w.set(resources(cluster("a", connect_timeout_s=3), base=w.resources))
    await s.nothing()
