"""The snapshot cache: versions, reuse by identity, consistency, groups, wire encoding."""

from __future__ import annotations

import gc
from collections.abc import Mapping

import pytest
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.protobuf import any_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import ConsistencyError
from bridge.model.frozen import FrozenDict
from bridge.model.sharded import ShardedMap
from bridge.server.cache import AccessPolicy, Entry, Snapshot, SnapshotCache
from bridge.server.wire import (
    encode_any,
    encode_delta_response,
    encode_discovery_response,
    encode_resource,
)
from bridge.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Encoded,
    Resources,
)
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


def tls_by_match(name: str, secret_name: str) -> cluster_v3.Cluster:
    """A cluster whose TLS comes from a transport socket match, not its transport socket."""
    c = cluster(name)
    ctx = tls_v3.UpstreamTlsContext()
    ctx.common_tls_context.tls_certificate_sds_secret_configs.add(name=secret_name)
    match = c.transport_socket_matches.add(name="mtls")
    match.transport_socket.name = "envoy.transport_sockets.tls"
    match.transport_socket.typed_config.Pack(ctx)
    return c


def test_references_are_found_however_a_cluster_is_laid_out() -> None:
    static = cluster_v3.Cluster(name="s", type=cluster_v3.Cluster.STATIC)
    Snapshot.from_resources(resources(static)).check_consistency()  # needs nothing
    with pytest.raises(ConsistencyError, match="cluster 'm' needs secret 'from-match'"):
        Snapshot.from_resources(
            resources(tls_by_match("m", "from-match"), cla("m", []))
        ).check_consistency()
    # Kept under a name that is not its own: the key is what it needs (no service name).
    odd = Resources(FrozenDict({CLUSTER: FrozenDict({"key": cluster("own")})}))
    with pytest.raises(ConsistencyError, match="cluster 'key' needs cluster load assignment 'key'"):
        Snapshot.from_resources(odd).check_consistency()
    # A long name (two bytes of length on the wire) is found like any other.
    long = "n" * 200
    with pytest.raises(ConsistencyError, match=f"needs cluster load assignment '{long}'"):
        Snapshot.from_resources(resources(cluster(long))).check_consistency()
    Snapshot.from_resources(resources(cluster(long), cla(long, []))).check_consistency()


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


# -- sharded sources: the snapshot evolves with them --------------------------


def sharded(r: Resources, *types: str) -> Resources:
    """``r`` with the mappings of ``types`` as ShardedMaps (as translation makes them)."""
    return Resources(
        FrozenDict({t: ShardedMap.of(m.items()) if t in types else m for t, m in r.by_type.items()})
    )


def evolve(r: Resources, type_url: str, updates: Mapping[str, Message], *gone: str) -> Resources:
    source = r.of(type_url)
    assert isinstance(source, ShardedMap)
    return Resources(FrozenDict({**r.by_type, type_url: source.evolve(updates, gone)}))


def shards(entries: Mapping[str, Entry]) -> list[dict[str, Entry]]:
    assert isinstance(entries, ShardedMap)
    return list(entries._shards)


def big_world(n: int = 600) -> Resources:
    return resources(
        *(cluster(f"c{i}") for i in range(n)),
        *(cla(f"c{i}", [(f"10.0.{i // 250}.{i % 250}", 80)]) for i in range(n)),
    )


def assert_same_as_fresh(snap: Snapshot, r: Resources) -> None:
    """What an incremental build holds is what a build from nothing holds."""
    fresh = Snapshot.from_resources(r)
    assert set(snap.types) == set(fresh.types)
    for t in fresh.types:
        assert snap.version(t) == fresh.version(t)
        mine, theirs = snap.entries(t), fresh.entries(t)
        assert {n: e.version for n, e in mine.items()} == {n: e.version for n, e in theirs.items()}
        assert all(e.message is r.of(t)[n] for n, e in mine.items())
    assert snap.dangling == fresh.dangling
    assert dict(snap.ref_counts) == dict(fresh.ref_counts)


def test_one_change_of_a_sharded_source_copies_one_shard_of_entries() -> None:
    r1 = sharded(big_world(), CLUSTER, ENDPOINT)
    s1 = Snapshot.from_resources(r1)
    r2 = evolve(r1, ENDPOINT, {"c7": cla("c7", [("10.9.9.9", 80)])})
    s2 = Snapshot.from_resources(r2, s1)
    assert s2.changed == {ENDPOINT: frozenset({"c7"})}
    assert s2.types[CLUSTER] is s1.types[CLUSTER]
    before, after = shards(s1.entries(ENDPOINT)), shards(s2.entries(ENDPOINT))
    unshared = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a is not b]
    assert len(unshared) == 1
    assert "c7" in after[unshared[0]]
    assert s2.entries(ENDPOINT)["c7"].version != s1.entries(ENDPOINT)["c7"].version
    assert s2.entries(ENDPOINT)["c8"] is s1.entries(ENDPOINT)["c8"]
    assert s1.entries(ENDPOINT)["c7"].message is r1.of(ENDPOINT)["c7"]  # s1 untouched
    assert_same_as_fresh(s2, r2)


def test_a_sharded_source_with_the_same_content_in_a_new_object_changes_nothing() -> None:
    r1 = sharded(big_world(50), CLUSTER, ENDPOINT)
    s1 = Snapshot.from_resources(r1)
    again = cla("c3", [("10.0.0.3", 80)])
    s2 = Snapshot.from_resources(evolve(r1, ENDPOINT, {"c3": again}), s1)
    assert s2.changed == {}
    assert s2.version(ENDPOINT) == s1.version(ENDPOINT)
    assert s2.entries(ENDPOINT)["c3"].message is again  # the next build compares with it


def test_removals_from_sharded_sources_are_seen_and_checked() -> None:
    r1 = sharded(big_world(50), CLUSTER, ENDPOINT)
    s1 = Snapshot.from_resources(r1)
    # The load assignment goes but its cluster stays: inconsistent.
    r2 = evolve(r1, ENDPOINT, {}, "c4")
    s2 = Snapshot.from_resources(r2, s1)
    assert s2.changed == {ENDPOINT: frozenset({"c4"})}
    assert "c4" not in s2.entries(ENDPOINT)
    assert len(s2.entries(ENDPOINT)) == 49
    with pytest.raises(ConsistencyError, match="cluster 'c4' needs cluster load assignment 'c4'"):
        s2.check_consistency()
    assert_same_as_fresh(s2, r2)
    # The cluster goes too: consistent again.
    r3 = evolve(r2, CLUSTER, {}, "c4", "not-there")
    s3 = Snapshot.from_resources(r3, s2)
    s3.check_consistency()
    assert s3.changed == {CLUSTER: frozenset({"c4"})}
    assert_same_as_fresh(s3, r3)
    # Both come back.
    r4 = evolve(evolve(r3, CLUSTER, {"c4": cluster("c4")}), ENDPOINT, {"c4": cla("c4", [])})
    s4 = Snapshot.from_resources(r4, s3)
    s4.check_consistency()
    assert s4.changed == {CLUSTER: frozenset({"c4"}), ENDPOINT: frozenset({"c4"})}
    assert_same_as_fresh(s4, r4)


def test_plain_and_sharded_sources_follow_each_other() -> None:
    plain1 = big_world(80)
    s1 = Snapshot.from_resources(sharded(plain1, CLUSTER, ENDPOINT))
    # A plain mapping after a sharded one.
    plain2 = resources(cla("c1", [("10.1.1.1", 80)]), base=plain1)
    s2 = Snapshot.from_resources(plain2, s1)
    assert s2.changed == {ENDPOINT: frozenset({"c1"})}
    assert s2.entries(ENDPOINT)["c2"] is s1.entries(ENDPOINT)["c2"]
    assert not isinstance(s2.entries(ENDPOINT), ShardedMap)
    assert_same_as_fresh(s2, plain2)
    # A sharded one after a plain one (made afresh, sharing nothing), with a removal.
    r3 = evolve(sharded(plain2, ENDPOINT), ENDPOINT, {"c2": cla("c2", [])}, "c3")
    s3 = Snapshot.from_resources(r3, s2)
    assert s3.changed == {ENDPOINT: frozenset({"c2", "c3"})}
    assert isinstance(s3.entries(ENDPOINT), ShardedMap)
    assert s3.entries(ENDPOINT)["c5"] is s1.entries(ENDPOINT)["c5"]
    assert_same_as_fresh(s3, r3)
    # Two sharded sources that share nothing: compared in full, still exact.
    r4 = sharded(
        resources(cla("c9", [("10.2.2.2", 80)]), base=without(plain2, ENDPOINT, "c3")), ENDPOINT
    )
    s4 = Snapshot.from_resources(r4, s3)
    assert s4.changed == {ENDPOINT: frozenset({"c2", "c9"})}
    assert_same_as_fresh(s4, r4)


def test_equal_content_under_two_names_does_not_cancel_out() -> None:
    # A resource whose own name field is not its key: the key goes into its mix.
    same = cla("shared", [("10.0.0.1", 80)])
    empty = Snapshot.from_resources(Resources(FrozenDict({ENDPOINT: FrozenDict()})))
    both = Snapshot.from_resources(
        Resources(FrozenDict({ENDPOINT: FrozenDict({"a": same, "b": same})}))
    )
    one = Snapshot.from_resources(Resources(FrozenDict({ENDPOINT: FrozenDict({"a": same})})))
    assert len({empty.version(ENDPOINT), both.version(ENDPOINT), one.version(ENDPOINT)}) == 3
    assert both.entries(ENDPOINT)["a"].version == both.entries(ENDPOINT)["b"].version


def test_entries_keep_secrets_out_of_their_text_and_compare_by_identity() -> None:
    snap = Snapshot.from_resources(resources(secret("id", ca_pem="PRIVATE-KEY-MATERIAL")))
    e = snap.entries(SECRET)["id"]
    assert "PRIVATE" not in repr(e) and "id" in repr(e)
    twin = Snapshot.from_resources(resources(secret("id", ca_pem="PRIVATE-KEY-MATERIAL")))
    assert e != twin.entries(SECRET)["id"]
    assert len({e, e, twin.entries(SECRET)["id"]}) == 2


# One step of a random history: (sharded?, {name: port or None (removed)}).
_steps = st.lists(
    st.tuples(
        st.booleans(),
        st.dictionaries(
            st.sampled_from([f"c{i}" for i in range(12)]),
            st.none() | st.integers(1, 3),
            max_size=5,
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(_steps)
def test_incremental_snapshots_equal_fresh_ones_whatever_the_history(
    steps: list[tuple[bool, dict[str, int | None]]],
) -> None:
    plain: dict[str, Message] = {}
    source: Mapping[str, Message] = FrozenDict()
    snap: Snapshot | None = None
    for use_sharded, change in steps:
        updates = {n: cla(n, [("10.0.0.1", p)]) for n, p in change.items() if p is not None}
        gone = [n for n, p in change.items() if p is None]
        before = {n: m.SerializeToString() for n, m in plain.items()}
        plain.update(updates)
        for n in gone:
            plain.pop(n, None)
        if use_sharded and isinstance(source, ShardedMap):
            source = source.evolve(updates, gone)
        elif use_sharded:
            source = ShardedMap.of(plain.items())
        else:
            source = FrozenDict(plain)
        r = Resources(FrozenDict({ENDPOINT: source}))
        previous, snap = snap, Snapshot.from_resources(r, snap)
        assert_same_as_fresh(snap, r)
        if previous is not None:
            after = {n: m.SerializeToString() for n, m in plain.items()}
            differ = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
            assert snap.changed.get(ENDPOINT, frozenset()) == differ


# -- bytes handed over by the producer (Resources.encoded) ---------------------


def handing_over(r: Resources, type_url: str, pairs: Mapping[str, Encoded]) -> Resources:
    """``r`` with ``pairs`` handed over as the canonical bytes of ``type_url``'s messages."""
    return Resources(r.by_type, FrozenDict({type_url: pairs}))


def canonical(r: Resources, type_url: str) -> dict[str, Encoded]:
    return {n: (m, m.SerializeToString(deterministic=True)) for n, m in r.of(type_url).items()}


def wire_of(s: Snapshot) -> dict[str, tuple[str, dict[str, tuple[str, bytes]]]]:
    return {
        t: (s.version(t), {n: (e.version, e.any_bytes) for n, e in s.entries(t).items()})
        for t in s.types
    }


def later(r: Resources, sharded_source: bool) -> Resources:
    """``r`` with one load assignment changed, as the next build hands it over."""
    new = cla("c7", [("10.9.9.9", 80)])
    if sharded_source:
        return evolve(r, ENDPOINT, {"c7": new})
    return resources(new, base=r)


@pytest.mark.parametrize("sharded_source", [True, False], ids=["sharded", "plain"])
def test_handed_over_bytes_make_the_snapshot_serializing_makes(sharded_source: bool) -> None:
    r1 = sharded(big_world(), CLUSTER, ENDPOINT) if sharded_source else big_world()
    r2 = later(r1, sharded_source)
    plain1 = Snapshot.from_resources(r1)
    plain2 = Snapshot.from_resources(r2, plain1)
    h1 = handing_over(r1, ENDPOINT, canonical(r1, ENDPOINT))
    h2 = handing_over(r2, ENDPOINT, canonical(r2, ENDPOINT))
    fast1 = Snapshot.from_resources(h1)
    fast2 = Snapshot.from_resources(h2, fast1)
    assert wire_of(fast1) == wire_of(plain1)
    assert wire_of(fast2) == wire_of(plain2)
    assert fast2.changed == plain2.changed == {ENDPOINT: frozenset({"c7"})}
    assert_same_as_fresh(fast2, r2)


@pytest.mark.parametrize("history", ["fresh", "sharded", "plain"])
def test_handed_over_bytes_are_used_for_their_own_message_only(history: str) -> None:
    base = sharded(big_world(), CLUSTER, ENDPOINT) if history == "sharded" else big_world()
    r = later(base, history == "sharded") if history != "fresh" else base
    previous = Snapshot.from_resources(base) if history != "fresh" else None
    ours = r.of(ENDPOINT)["c7"]
    twin = cla("c7", [("10.9.9.9", 80)] if history != "fresh" else [("10.0.0.7", 80)])
    assert twin == ours and twin is not ours
    marker = b"\x0a\x02c7"  # a valid assignment, but not c7's: shows whose bytes were used
    # A pair carrying another object (even an equal one) is never trusted.
    ignored = Snapshot.from_resources(handing_over(r, ENDPOINT, {"c7": (twin, marker)}), previous)
    expected = Snapshot.from_resources(r, previous).entries(ENDPOINT)["c7"]
    entry = ignored.entries(ENDPOINT)["c7"]
    assert (entry.version, entry.any_bytes) == (expected.version, expected.any_bytes)
    # A pair carrying the message itself is taken at its word: no second serialization.
    taken = Snapshot.from_resources(handing_over(r, ENDPOINT, {"c7": (ours, marker)}), previous)
    assert taken.entries(ENDPOINT)["c7"].any_bytes.endswith(marker)
    assert taken.entries(ENDPOINT)["c7"].version != expected.version
    # Names without a pair are serialized as ever.
    assert taken.entries(ENDPOINT)["c8"].any_bytes == expected_bytes(r, "c8")


def expected_bytes(r: Resources, name: str) -> bytes:
    return Snapshot.from_resources(r).entries(ENDPOINT)[name].any_bytes


def test_one_change_with_handed_over_bytes_copies_one_shard_of_entries() -> None:
    r1 = sharded(big_world(), CLUSTER, ENDPOINT)
    pairs1 = ShardedMap.of(canonical(r1, ENDPOINT).items())
    s1 = Snapshot.from_resources(handing_over(r1, ENDPOINT, pairs1))
    r2 = later(r1, True)
    c7 = r2.of(ENDPOINT)["c7"]
    pairs2 = pairs1.evolve({"c7": (c7, c7.SerializeToString(deterministic=True))})
    s2 = Snapshot.from_resources(handing_over(r2, ENDPOINT, pairs2), s1)
    before, after = shards(s1.entries(ENDPOINT)), shards(s2.entries(ENDPOINT))
    assert sum(a is not b for a, b in zip(before, after, strict=True)) == 1
    assert s2.types[CLUSTER] is s1.types[CLUSTER]
    assert_same_as_fresh(s2, r2)
