"""The snapshot cache: versions, reuse by identity, consistency, groups, wire encoding."""

from __future__ import annotations

import gc

import pytest
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.protobuf import any_pb2
from google.protobuf.message import Message

from bridge.errors import ConsistencyError
from bridge.model.frozen import FrozenDict
from bridge.server.cache import AccessPolicy, Snapshot, SnapshotCache
from bridge.server.wire import (
    encode_any,
    encode_delta_response,
    encode_discovery_response,
    encode_resource,
)
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from tests.server.builders import (
    cla,
    cluster,
    listener,
    resources,
    route_config,
    secret,
    without,
)


def world() -> Resources:
    a, b = cluster("a"), cluster("b")
    return resources(a, b, cla("a", [("10.0.0.1", 80)]), cla("b", [("10.0.0.2", 80)]))


def test_versions_are_content_hashes_and_unchanged_objects_are_reused() -> None:
    r1 = world()
    s1 = Snapshot.from_resources(r1)
    a1 = s1.entries(CLUSTER)["a"]
    assert len(a1.version) == 16
    # Same content in a new object: same version.
    assert Snapshot.from_resources(resources(cluster("a"))).entries(CLUSTER)["a"].version == (
        a1.version
    )
    # Change b's endpoints only: a's entry is the very same object, not re-serialized.
    r2 = resources(cla("b", [("10.0.0.3", 80)]), base=r1)
    s2 = Snapshot.from_resources(r2, s1)
    assert s2.entries(CLUSTER)["a"] is a1
    assert s2.entries(ENDPOINT)["a"] is s1.entries(ENDPOINT)["a"]
    assert s2.entries(ENDPOINT)["b"].version != s1.entries(ENDPOINT)["b"].version
    assert s2.version(CLUSTER) == s1.version(CLUSTER)
    assert s2.version(ENDPOINT) != s1.version(ENDPOINT)
    assert s2.changed == {ENDPOINT: frozenset({"b"})}
    assert s2.base_serial == s1.serial
    # Back to the old content: the type version returns to the old one.
    s3 = Snapshot.from_resources(resources(cla("b", [("10.0.0.2", 80)]), base=r2), s2)
    assert s3.version(ENDPOINT) == s1.version(ENDPOINT)


def test_type_version_does_not_depend_on_build_history() -> None:
    r1 = world()
    s1 = Snapshot.from_resources(r1)
    s2 = Snapshot.from_resources(without(r1, CLUSTER, "b"), s1)
    fresh = Snapshot.from_resources(without(r1, CLUSTER, "b"))
    assert s2.version(CLUSTER) == fresh.version(CLUSTER) != s1.version(CLUSTER)
    assert set(s2.entries(CLUSTER)) == {"a"}
    assert s2.changed[CLUSTER] == frozenset({"b"})


@pytest.mark.parametrize(
    ("messages", "missing"),
    [
        pytest.param([cluster("a")], "cluster 'a' needs cluster load assignment 'a'", id="eds"),
        pytest.param(
            [listener("l", 8080, "r")], "listener 'l' needs route configuration 'r'", id="rds"
        ),
        pytest.param(
            [cluster("a", tls_secret="id"), cla("a", [])],
            "cluster 'a' needs secret 'id'",
            id="sds",
        ),
        pytest.param(
            [cluster("a", ca_secret="ca"), cla("a", [])],
            "cluster 'a' needs secret 'ca'",
            id="sds-validation",
        ),
    ],
)
def test_consistency_check_names_what_is_missing_and_who_needs_it(
    messages: list[Message], missing: str
) -> None:
    cache = SnapshotCache()
    good = Snapshot.from_resources(world())
    cache.set_snapshot("default", good)
    bad = Snapshot.from_resources(resources(*messages))
    with pytest.raises(ConsistencyError, match=missing):
        cache.set_snapshot("default", bad)
    assert cache.snapshot("default") is good  # last good stays live


def test_consistency_is_tracked_incrementally() -> None:
    r1 = resources(
        cluster("a", tls_secret="id"),
        cla("a", []),
        secret("id"),
        listener("l", 8080, "r"),
        route_config("r", "a"),
    )
    s1 = Snapshot.from_resources(r1)
    s1.check_consistency()
    s2 = Snapshot.from_resources(without(r1, SECRET, "id"), s1)
    with pytest.raises(ConsistencyError, match="secret 'id'"):
        s2.check_consistency()
    s3 = Snapshot.from_resources(r1, s2)  # the secret is back
    s3.check_consistency()
    s4 = Snapshot.from_resources(without(without(r1, ROUTE, "r"), LISTENER, "l"), s3)
    s4.check_consistency()  # the route went with the only listener that needed it


def test_groups_share_one_snapshot_object_and_watchers_are_told() -> None:
    cache = SnapshotCache(groups={"edge-1": "edge", "edge-2": "edge"})
    told: list[str] = []
    unwatch = cache.watch("edge", told.append)
    snap = Snapshot.from_resources(world())
    cache.set_snapshot("edge", snap)
    assert cache.snapshot(cache.group_of("edge-1")) is cache.snapshot(cache.group_of("edge-2"))
    assert cache.group_of("other") == "default"
    assert cache.snapshot("default") is None
    assert told == ["edge"]
    assert cache.generation("edge") == 1
    unwatch()
    cache.set_snapshot("edge", Snapshot.from_resources(world(), snap))
    assert told == ["edge"]


@pytest.mark.parametrize(
    ("policy", "node", "connect", "secrets"),
    [
        pytest.param(AccessPolicy(), "any", True, True, id="open"),
        pytest.param(AccessPolicy(frozenset({"gw"})), "gw", True, True, id="allowed"),
        pytest.param(AccessPolicy(frozenset({"gw"})), "x", False, False, id="refused"),
        pytest.param(AccessPolicy(None, frozenset({"gw"})), "x", True, False, id="no-secrets"),
        pytest.param(AccessPolicy(None, frozenset({"gw"})), "gw", True, True, id="secrets"),
    ],
)
def test_access_policy(policy: AccessPolicy, node: str, connect: bool, secrets: bool) -> None:
    assert policy.may_connect(node) is connect
    assert policy.may_receive_secrets(node) is secrets


def test_hand_encoded_envelopes_parse_as_the_real_messages() -> None:
    snap = Snapshot.from_resources(world())
    entries = list(snap.entries(CLUSTER).values())
    raw = encode_discovery_response("v1", CLUSTER, "7", (e.any_bytes for e in entries))
    resp = discovery_v3.DiscoveryResponse.FromString(raw)
    assert (resp.version_info, resp.type_url, resp.nonce) == ("v1", CLUSTER, "7")
    assert [r.type_url for r in resp.resources] == [CLUSTER, CLUSTER]
    assert resp.resources[0].value == entries[0].message.SerializeToString(deterministic=True)
    e = entries[0]
    raw = encode_delta_response(
        "sv", CLUSTER, "8", [encode_resource(e.name, e.version, e.any_bytes)], ["gone", "x"]
    )
    delta = discovery_v3.DeltaDiscoveryResponse.FromString(raw)
    assert delta.system_version_info == "sv"
    assert delta.nonce == "8"
    assert list(delta.removed_resources) == ["gone", "x"]
    assert (delta.resources[0].name, delta.resources[0].version) == (e.name, e.version)
    assert delta.resources[0].resource.type_url == CLUSTER
    big = encode_any(CLUSTER, b"x" * 300)  # multi-byte varint lengths
    assert len(big) > 300


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 70_000], ids=lambda n: f"{n}B")
def test_any_encoding_round_trips_at_varint_boundaries(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    decoded = any_pb2.Any.FromString(encode_any(ENDPOINT, value))
    assert (decoded.type_url, decoded.value) == (ENDPOINT, value)


def test_building_a_snapshot_leaves_the_collector_as_it_found_it() -> None:
    assert gc.isenabled()
    Snapshot.from_resources(world())
    assert gc.isenabled()
    gc.disable()
    try:
        Snapshot.from_resources(world())
        assert not gc.isenabled()  # an application that runs without it keeps it off
    finally:
        gc.enable()


@pytest.mark.parametrize("reorder", [False, True], ids=["same-order", "reordered"])
def test_changed_messages_are_found_whatever_the_name_order(reorder: bool) -> None:
    r1 = world()
    s1 = Snapshot.from_resources(r1)
    clas = dict(r1.of(ENDPOINT))
    clas["b"] = cla("b", [("10.0.0.9", 80)])
    if reorder:
        clas = dict(reversed(clas.items()))
    r2 = Resources(FrozenDict({CLUSTER: r1.of(CLUSTER), ENDPOINT: FrozenDict(clas)}))
    s2 = Snapshot.from_resources(r2, s1)
    assert s2.changed == {ENDPOINT: frozenset({"b"})}
    assert s2.entries(ENDPOINT)["a"] is s1.entries(ENDPOINT)["a"]
    assert s2.version(ENDPOINT) == Snapshot.from_resources(r2).version(ENDPOINT)
