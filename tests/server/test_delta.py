"""Delta (incremental) ADS against a raw client."""

from __future__ import annotations

from bridge.server.cache import Snapshot
from bridge.xds.resources import CLUSTER, ENDPOINT, SECRET, Resources
from tests.server.builders import cla, cluster, resources, secret, without
from tests.server.client import names
from tests.server.conftest import Harness
from tests.server.test_sotw import World, base
from tests.support.wait import async_wait_for


async def test_wildcard_cds_sends_everything_then_removals(harness: Harness) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(CLUSTER)  # no names on the first request: wildcard
    r1 = await d.recv()
    assert sorted(names(r1)) == ["a", "b"]
    assert r1.nonce
    assert {r.name: r.version for r in r1.resources} == {
        n: e.version for n, e in w.snap.entries(CLUSTER).items()
    }
    await d.ack(r1)
    await d.nothing()
    w.set(without(without(w.resources, CLUSTER, "b"), ENDPOINT, "b"))
    r2 = await d.recv()
    assert names(r2) == []
    assert list(r2.removed_resources) == ["b"]
    assert r2.nonce != r1.nonce


async def test_named_subscription_reports_nonexistent_names_and_sends_them_when_they_appear(
    harness: Harness,
) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(ENDPOINT, ["a", "ghost"])
    r1 = await d.recv()
    assert names(r1) == ["a"]
    assert list(r1.removed_resources) == ["ghost"]
    await d.ack(r1)
    await d.nothing()
    w.set(resources(cla("ghost", [("10.0.0.9", 80)]), base=w.resources))
    r2 = await d.recv()
    assert names(r2) == ["ghost"]
    assert list(r2.removed_resources) == []


async def test_one_endpoint_change_sends_only_that_resource(harness: Harness) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(CLUSTER)
    await d.ack(await d.recv())
    await d.send(ENDPOINT, ["a", "b"])
    await d.ack(await d.recv())
    w.set(resources(cla("b", [("10.0.0.3", 80)]), base=w.resources))
    r = await d.recv()
    assert (r.type_url, names(r), list(r.removed_resources)) == (ENDPOINT, ["b"], [])
    await d.nothing()


async def test_unsubscribe_needs_no_reply_and_stops_updates(harness: Harness) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(ENDPOINT, ["a", "b"])
    r1 = await d.recv()
    await d.send(ENDPOINT, unsubscribe=["a"], nonce=r1.nonce)
    await d.nothing()
    w.set(resources(cla("a", [("10.0.0.5", 80)]), base=w.resources))
    await d.nothing()
    await d.send(ENDPOINT, ["a"])  # subscribing again sends it again
    r2 = await d.recv()
    assert names(r2) == ["a"]


async def test_reconnect_with_initial_versions_sends_only_what_differs(harness: Harness) -> None:
    w = World(harness, base())
    first = harness.delta()
    await first.send(ENDPOINT, ["a", "b"])
    had = {r.name: r.version for r in (await first.recv()).resources}
    await first.close()
    w.set(resources(cla("b", [("10.0.0.3", 80)]), base=without(w.resources, CLUSTER, "zz")))
    again = harness.delta()
    await again.send(ENDPOINT, ["a", "b", "gone"], initial={**had, "gone": "0123"})
    r = await again.recv()
    assert names(r) == ["b"]  # a is unchanged: not resent
    assert list(r.removed_resources) == ["gone"]
    await again.ack(r)
    await again.nothing()


async def test_reconnect_with_wildcard_and_initial_versions(harness: Harness) -> None:
    w = World(harness, base())
    first = harness.delta()
    await first.send(CLUSTER)
    had = {r.name: r.version for r in (await first.recv()).resources}
    await first.close()
    w.set(resources(cluster("c"), cla("c", []), base=without(w.resources, CLUSTER, "b")))
    again = harness.delta()
    await again.send(CLUSTER, ["*"], initial=had)
    r = await again.recv()
    assert names(r) == ["c"]
    assert list(r.removed_resources) == ["b"]


async def test_delta_nack_holds_until_the_content_changes(harness: Harness) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(ENDPOINT, ["a"])
    await d.ack(await d.recv())
    w.set(resources(cla("a", [("bad", 1)]), base=w.resources))
    bad = await d.recv()
    await d.send(ENDPOINT, nonce=bad.nonce, error="a: bad address")
    await d.nothing()
    await d.send(ENDPOINT, ["a"])  # re-subscribing does not bring back the rejected content
    await d.nothing()
    await async_wait_for(lambda: harness.ads.nack_counts[ENDPOINT] == 1, what="the NACK")
    w.set(resources(cla("a", [("10.0.0.8", 80)]), base=w.resources))
    good = await d.recv()
    assert names(good) == ["a"]
    assert good.resources[0].version != bad.resources[0].version


async def test_changed_cluster_resends_its_endpoints_in_delta(harness: Harness) -> None:
    w = World(harness, base())
    d = harness.delta()
    await d.send(CLUSTER)
    await d.ack(await d.recv())
    await d.send(ENDPOINT, ["a", "b"])
    await d.ack(await d.recv())
    w.set(resources(cluster("b", connect_timeout_s=4), base=w.resources))
    r1, r2 = await d.recv(), await d.recv()
    assert (r1.type_url, names(r1)) == (CLUSTER, ["b"])
    assert (r2.type_url, names(r2)) == (ENDPOINT, ["b"])


async def test_node_groups_share_a_snapshot(harness: Harness) -> None:
    harness.cache.assign("edge-2", "edge")
    edge: Resources = resources(cluster("e"), cla("e", []))
    World(harness, base())
    World(harness, edge, group="edge")
    d1, d2 = harness.delta("edge-1"), harness.delta("edge-2")
    await d1.send(CLUSTER)
    await d2.send(CLUSTER)
    assert sorted(names(await d1.recv())) == ["a", "b"]
    assert names(await d2.recv()) == ["e"]
    groups = {st.node_id: st.group for st in harness.ads.status()}
    assert groups == {"edge-1": "default", "edge-2": "edge"}


async def test_delta_secrets_follow_the_same_rules(harness: Harness) -> None:
    w = World(harness, resources(secret("ca"), base=base()))
    d = harness.delta()
    await d.send(SECRET, ["ca"])
    r = await d.recv()
    assert names(r) == ["ca"]
    await d.ack(r)
    w.set(resources(secret("ca", "rotated"), base=w.resources))
    r2 = await d.recv()
    assert names(r2) == ["ca"]
    assert r2.resources[0].version != r.resources[0].version
    assert isinstance(w.snap, Snapshot)
