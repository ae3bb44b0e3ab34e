"""translate() in proportion to the change: ShardedMap upstreams, and the wire encoders it uses.

Resolve hands translate ``Ir.upstreams`` as a ShardedMap evolved from the
previous build's; translate then finds the changed upstreams by
``changed_since`` and evolves its CDS/EDS ShardedMaps from the previous ones.
These tests pin what a user of the resources relies on: only the changed
upstream's messages are new objects (so the cache re-serializes and re-sends
nothing else), additions and removals show, and every path (sharded,
plain mapping, cold) gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    Discovery,
    DnsTarget,
    Endpoint,
    Ir,
    Protocol,
    Upstream,
    UpstreamKey,
    UpstreamTls,
)
from bridge.model.sharded import ShardedMap
from bridge.server.cache import Snapshot
from bridge.xds import names
from bridge.xds import translate as translate_module
from bridge.xds.clusters import (
    build_cluster,
    build_cluster_fields,
    build_load_assignment,
    build_load_assignment_fields,
    encode_load_assignment,
    encoded_load_assignment,
)
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from bridge.xds.translate import Translation, translate
from tests.xds.rich import key, rich_ir

ALL_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


def sharded_ir() -> Ir:
    ir = rich_ir()
    return dataclasses.replace(ir, upstreams=ShardedMap.of(ir.upstreams.items()))


def evolved(
    ir: Ir, updates: Mapping[UpstreamKey, Upstream], removals: tuple[UpstreamKey, ...] = ()
) -> Ir:
    ups = ir.upstreams
    assert isinstance(ups, ShardedMap)
    return dataclasses.replace(ir, upstreams=ups.evolve(updates, removals))


def identical(a: Resources, b: Resources, type_url: str) -> set[str]:
    old, new = a.of(type_url), b.of(type_url)
    return {name for name, msg in new.items() if old.get(name) is msg}


def wire(resources: Resources) -> dict[str, dict[str, bytes]]:
    return {
        t: {n: m.SerializeToString(deterministic=True) for n, m in resources.of(t).items()}
        for t in ALL_TYPES
    }


@pytest.fixture
def diff_only(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fails the test if translate walks the whole upstream map; counts changed_since calls."""
    calls: list[int] = []
    real = ShardedMap.changed_since

    def counting(
        self: ShardedMap[object, object], base: ShardedMap[object, object]
    ) -> list[object]:
        out = real(self, base)
        calls.append(len(out))
        return out

    def no_scan(*_: object) -> list[UpstreamKey]:
        raise AssertionError("walked every upstream for a change changed_since can find")

    monkeypatch.setattr(ShardedMap, "changed_since", counting)
    monkeypatch.setattr(translate_module, "_changed_keys", no_scan)
    return calls


def test_one_changed_upstream_is_found_by_diff_and_only_its_messages_are_new(
    diff_only: list[int],
) -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    second = translate(
        evolved(ir, {web.key: dataclasses.replace(web, connect_timeout_ms=1234)}), first
    )
    assert diff_only == [1]  # one diff, naming one upstream
    name = names.cluster_name(web.key)
    new, old = second.resources.of(CLUSTER), first.resources.of(CLUSTER)
    assert isinstance(new, ShardedMap)
    assert identical(first.resources, second.resources, CLUSTER) == set(old) - {name}
    assert set(new) == set(old)
    # Its endpoints did not change: the EDS mapping is the very same object.
    assert second.resources.of(ENDPOINT) is first.resources.of(ENDPOINT)
    assert second.resources.of(CLUSTER)[name].connect_timeout.ToMilliseconds() == 1234  # type: ignore[attr-defined]
    for type_url in (LISTENER, ROUTE, SECRET):
        assert second.resources.of(type_url) is first.resources.of(type_url)


def test_endpoints_only_change_keeps_every_cluster_and_the_cds_mapping(
    diff_only: list[int],
) -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    moved = dataclasses.replace(web, endpoints=(Endpoint("10.9.9.9", 8080, "z"),))
    second = translate(evolved(ir, {web.key: moved}), first)
    name = names.cluster_name(web.key)
    assert second.resources.of(CLUSTER) is first.resources.of(CLUSTER)
    assert identical(first.resources, second.resources, ENDPOINT) == set(
        first.resources.of(ENDPOINT)
    ) - {name}
    cla = second.resources.of(ENDPOINT)[name]
    assert [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints] == [  # type: ignore[attr-defined]
        "10.9.9.9"
    ]
    assert cla.endpoints[0].locality.zone == "z"  # type: ignore[attr-defined]


def test_removed_and_added_upstreams_by_diff(diff_only: list[int]) -> None:
    ir = sharded_ir()
    first = translate(ir)
    gone = key("default", "idle")
    new_key = UpstreamKey("default", "new", "http")
    added = Upstream(new_key, Discovery.EDS, endpoints=(Endpoint("10.1.1.1", 80),))
    second = translate(evolved(ir, {new_key: added}, (gone,)), first)
    assert diff_only == [2]
    clusters, assignments = second.resources.of(CLUSTER), second.resources.of(ENDPOINT)
    assert "default/idle/http" not in clusters
    assert "default/idle/http" not in assignments
    assert "default/new/http" in clusters and "default/new/http" in assignments
    kept = set(first.resources.of(CLUSTER)) - {"default/idle/http"}
    assert identical(first.resources, second.resources, CLUSTER) == kept
    assert len(clusters) == len(first.resources.of(CLUSTER))
    # Removing an upstream that is not there changes nothing, and costs nothing.
    third = translate(evolved(ir, {}, (UpstreamKey("no", "such", "port"),)), first)
    assert third.resources.of(CLUSTER) is first.resources.of(CLUSTER)


def test_discovery_flip_by_diff_moves_the_upstream_out_of_eds_and_back(
    diff_only: list[int],
) -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    name = names.cluster_name(web.key)
    as_dns = dataclasses.replace(web, discovery=Discovery.STRICT_DNS, dns=DnsTarget("web", 80))
    second = translate(evolved(ir, {web.key: as_dns}), first)
    assert name not in second.resources.of(ENDPOINT)
    assert len(second.resources.of(ENDPOINT)) == len(first.resources.of(ENDPOINT)) - 1
    third = translate(evolved(ir, {web.key: web}), second)
    assert wire(third.resources) == wire(first.resources)


def test_a_plain_mapping_after_a_sharded_one_and_back_gives_the_same_resources() -> None:
    plain = rich_ir()
    sharded = sharded_ir()
    first = translate(sharded)
    second = translate(plain, first)  # an equal IR as a dict: nothing new
    for type_url in ALL_TYPES:
        assert identical(first.resources, second.resources, type_url) == set(
            first.resources.of(type_url)
        )
    third = translate(sharded, second)
    assert third.resources.of(CLUSTER) is first.resources.of(CLUSTER)


# -- incremental == full, whatever the mapping type -------------------------------

KEYS = [UpstreamKey(f"ns{i % 3}", f"svc{i}", "http" if i % 2 else "8080") for i in range(12)]
ZONES = ("", "zone-a", "zone-b")

endpoints = st.lists(
    st.builds(
        Endpoint,
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.1.2.3", "fd00::1", "db.local"]),
        st.sampled_from([80, 8080, 9090]),
        st.sampled_from(ZONES),
    ),
    max_size=5,
    unique=True,
).map(lambda es: tuple(sorted(es)))


@st.composite
def upstreams(draw: st.DrawFn, upstream_key: UpstreamKey) -> Upstream:
    discovery = draw(st.sampled_from([Discovery.EDS, Discovery.EDS, Discovery.STRICT_DNS]))
    return Upstream(
        upstream_key,
        discovery,
        endpoints=draw(endpoints) if discovery is Discovery.EDS else (),
        dns=DnsTarget("svc.example", 80) if discovery is Discovery.STRICT_DNS else None,
        tls=draw(st.sampled_from([None, UpstreamTls(sni="svc.example")])),
        protocol=draw(st.sampled_from([Protocol.HTTP1, Protocol.HTTP2])),
        connect_timeout_ms=draw(st.sampled_from([5000, 250, 1500])),
    )


@st.composite
def edits(draw: st.DrawFn) -> tuple[dict[UpstreamKey, Upstream], tuple[UpstreamKey, ...]]:
    touched = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=4))
    removals = tuple(draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=2)))
    updates = {k: draw(upstreams(k)) for k in touched if k not in removals}
    return updates, removals


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.fixed_dictionaries({k: upstreams(k) for k in KEYS[:8]}),
    steps=st.lists(edits(), min_size=1, max_size=5),
    plain_at=st.sets(st.integers(0, 5)),
)
def test_incremental_translation_equals_a_full_one(
    start: dict[UpstreamKey, Upstream],
    steps: list[tuple[dict[UpstreamKey, Upstream], tuple[UpstreamKey, ...]]],
    plain_at: set[int],
) -> None:
    """Sharded diffs, plain mappings (at steps in ``plain_at``) and cold builds agree."""
    current: ShardedMap[UpstreamKey, Upstream] = ShardedMap.of(start.items())
    previous: Translation = translate(Ir(upstreams=current))
    for i, (updates, removals) in enumerate(steps):
        before = current
        current = current.evolve(updates, removals)
        source: Mapping[UpstreamKey, Upstream] = (
            FrozenDict(dict(current.items())) if i in plain_at else current
        )
        step = translate(Ir(upstreams=source), previous)
        cold = translate(Ir(upstreams=FrozenDict(dict(current.items()))))
        assert wire(step.resources) == wire(cold.resources)
        assert_bytes_handed_over(step)
        # Untouched upstreams kept their message objects.
        untouched = {
            names.cluster_name(k) for k in before if k not in updates and k not in removals
        }
        for type_url in (CLUSTER, ENDPOINT):
            old = previous.resources.of(type_url)
            assert {n for n in untouched if n in old} <= identical(
                previous.resources, step.resources, type_url
            )
        previous = step


# -- load assignment bytes handed to the cache ------------------------------------


def assert_bytes_handed_over(t: Translation) -> None:
    """Every EDS message comes with its own deterministic serialization, and nothing else."""
    assignments, encoded = t.resources.of(ENDPOINT), t.resources.encoded_of(ENDPOINT)
    assert set(encoded) == set(assignments)
    for name, (message, value) in encoded.items():
        assert message is assignments[name]
        assert value == message.SerializeToString(deterministic=True)
    assert set(t.resources.encoded) == {ENDPOINT}


def test_each_load_assignment_comes_with_its_canonical_bytes() -> None:
    first = translate(sharded_ir())
    assert_bytes_handed_over(first)
    assert isinstance(first.resources.encoded_of(ENDPOINT), ShardedMap)
    plain = translate(rich_ir())
    assert_bytes_handed_over(plain)


def test_one_endpoint_change_copies_one_shard_of_the_handed_over_bytes(
    diff_only: list[int],
) -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    moved = dataclasses.replace(web, endpoints=(Endpoint("10.9.9.9", 8080, "z"),))
    second = translate(evolved(ir, {web.key: moved}), first)
    assert_bytes_handed_over(second)
    before, after = first.resources.encoded_of(ENDPOINT), second.resources.encoded_of(ENDPOINT)
    assert isinstance(before, ShardedMap) and isinstance(after, ShardedMap)
    unshared = [
        i for i, (a, b) in enumerate(zip(before._shards, after._shards, strict=True)) if a is not b
    ]
    assert len(unshared) == 1
    name = names.cluster_name(web.key)
    assert name in after._shards[unshared[0]]
    assert after[name] is not before[name]
    assert before[name][0] is first.resources.of(ENDPOINT)[name]  # the older one intact
    # A change that leaves the endpoints alone hands over the very same map.
    third = translate(
        evolved(ir, {web.key: dataclasses.replace(web, connect_timeout_ms=999)}), first
    )
    assert third.resources.encoded_of(ENDPOINT) is before


def test_removal_and_discovery_flip_drop_the_bytes_with_the_message() -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    as_dns = dataclasses.replace(web, discovery=Discovery.STRICT_DNS, dns=DnsTarget("web", 80))
    second = translate(evolved(ir, {web.key: as_dns}, (key("default", "idle"),)), first)
    assert_bytes_handed_over(second)
    assert names.cluster_name(web.key) not in second.resources.encoded_of(ENDPOINT)


def test_the_cache_makes_the_same_snapshot_from_the_handed_over_bytes() -> None:
    ir = sharded_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    moved = dataclasses.replace(web, endpoints=(Endpoint("10.9.9.9", 8080, "z"),))
    second = translate(evolved(ir, {web.key: moved}), first)
    fast1 = Snapshot.from_resources(first.resources)
    fast2 = Snapshot.from_resources(second.resources, fast1)
    slow1 = Snapshot.from_resources(Resources(first.resources.by_type))
    slow2 = Snapshot.from_resources(Resources(second.resources.by_type), slow1)
    for fast, slow in ((fast1, slow1), (fast2, slow2)):
        assert set(fast.types) == set(slow.types)
        for t in slow.types:
            assert fast.version(t) == slow.version(t)
            assert {n: e.any_bytes for n, e in fast.entries(t).items()} == {
                n: e.any_bytes for n, e in slow.entries(t).items()
            }
    assert fast2.changed == slow2.changed == {ENDPOINT: frozenset({names.cluster_name(web.key)})}


def test_handed_over_bytes_do_not_make_resources_unequal() -> None:
    t = translate(rich_ir())
    assert Resources(t.resources.by_type) == t.resources
    assert Resources().encoded_of(ENDPOINT) == {}


# -- the encoders are what upb would write ------------------------------------------

any_text = st.text(max_size=40)
wire_endpoints = st.lists(
    st.builds(
        Endpoint,
        st.one_of(st.ip_addresses().map(str), any_text, st.text(min_size=120, max_size=300)),
        st.integers(0, 65535),
        st.one_of(st.sampled_from(ZONES), any_text),
    ),
    max_size=40,
).map(tuple)


@settings(max_examples=300, deadline=None)
@given(eps=wire_endpoints, name=st.one_of(st.just("default/web/http"), any_text))
def test_load_assignment_bytes_are_upb_deterministic_serialization(
    eps: tuple[Endpoint, ...], name: str
) -> None:
    upstream = Upstream(UpstreamKey("n", "s", "p"), Discovery.EDS, endpoints=eps)
    reference = build_load_assignment_fields(upstream, name)
    assert encode_load_assignment(eps, name) == reference.SerializeToString(deterministic=True)
    assert build_load_assignment(upstream, name) == reference
    message, value = encoded_load_assignment(upstream, name)
    assert message == reference
    assert value == reference.SerializeToString(deterministic=True)


def test_many_endpoints_in_one_zone_encode_long_lengths() -> None:
    eps = tuple(Endpoint(f"10.0.{i // 250}.{i % 250}", 8080 + i % 3, "z") for i in range(5000))
    upstream = Upstream(UpstreamKey("n", "s", "p"), Discovery.EDS, endpoints=eps)
    reference = build_load_assignment_fields(upstream, "n/s/p")
    assert encode_load_assignment(eps, "n/s/p") == reference.SerializeToString(deterministic=True)


Variant = Callable[[Upstream], Upstream]


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda u: u, id="plain-eds"),
        pytest.param(lambda u: dataclasses.replace(u, connect_timeout_ms=250), id="timeout"),
        pytest.param(lambda u: dataclasses.replace(u, connect_timeout_ms=61_500), id="long"),
        pytest.param(lambda u: dataclasses.replace(u, protocol=Protocol.HTTP2), id="http2"),
        pytest.param(lambda u: dataclasses.replace(u, tls=UpstreamTls(sni="x")), id="tls"),
        pytest.param(
            lambda u: dataclasses.replace(
                u, discovery=Discovery.STRICT_DNS, dns=DnsTarget("x", 80)
            ),
            id="dns",
        ),
    ],
)
def test_cluster_from_template_equals_cluster_built_field_by_field(variant: Variant) -> None:
    upstream = variant(Upstream(UpstreamKey("shop", "cart", "http"), Discovery.EDS))
    name = names.cluster_name(upstream.key)
    fast, reference = build_cluster(upstream, name), build_cluster_fields(upstream, name)
    assert fast == reference
    assert fast.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )
    # Each call is a new message: changing one never changes the template.
    fast.name = "changed"
    assert build_cluster(upstream, name).name == name
