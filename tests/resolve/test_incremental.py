"""Incremental resolve: equal to a full resolve, and unchanged parts are the same objects."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.model.consul import ConsulInstance, ConsulService, ConsulServiceKey
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import IdentitySecret, Mesh, Resolved, SecretName, TrustSecret
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
    Kind,
    ObjectRef,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.secrets import PrivateKey
from bridge.model.settings import ResolveSettings
from bridge.resolve import resolve
from bridge.store import Store

SETTINGS = ResolveSettings()
# Istio supported: meshed upstreams get TLS naming the mesh secrets.
MESHES = ResolveSettings(supported_meshes=frozenset({Mesh.NONE, Mesh.ISTIO}))


def _svc(ns: str, name: str, **ann: str) -> K8sService:
    return K8sService(
        namespace=ns,
        name=name,
        ports=(ServicePort(port=80, name="http"),),
        annotations=FrozenDict({f"meshbridge.io/{k}": v for k, v in ann.items()}),
    )


def _slice(ns: str, svc: str, name: str, *ips: str, ready: bool = True) -> K8sEndpointSlice:
    return K8sEndpointSlice(
        namespace=ns,
        name=name,
        service_name=svc,
        ports=(EndpointPort(port=8080, name="http"),),
        endpoints=tuple(
            SliceEndpoint(addresses=(ip,), ready=ready, target_pod=f"{svc}-{i}")
            for i, ip in enumerate(ips)
        ),
    )


def _world_store(n: int = 20) -> Store:
    store = Store()
    for i in range(n):
        store.upsert("t", _svc("shop", f"s{i:02}", prefix=f"/s{i}"))
        store.upsert("t", _slice("shop", f"s{i:02}", f"s{i:02}-a", f"10.0.{i}.1", f"10.0.{i}.2"))
    return store


def _check_same(inc: Resolved, prev: Resolved, full: Resolved) -> None:
    assert inc == full
    assert inc.ir == full.ir
    assert inc.diagnostics == full.diagnostics
    for ref, sr in inc.services.items():
        old = prev.services.get(ref)
        if old is not None and old == sr:
            assert sr is old, f"{ref}: equal resolution rebuilt instead of reused"
        for u in sr.upstreams:
            old_u = prev.ir.upstreams.get(u.key)
            if old_u is not None and old_u == u:
                assert u is old_u
    for vh in inc.ir.virtual_hosts:
        for old_vh in prev.ir.virtual_hosts:
            if old_vh.host == vh.host and old_vh == vh:
                assert vh is old_vh


def test_one_endpoint_change_reuses_everything_else() -> None:
    store = _world_store()
    w1, _ = store.take()
    r1 = resolve(w1, SETTINGS)
    store.upsert("t", _slice("shop", "s05", "s05-a", "10.0.5.1", "10.0.5.9"))
    w2, changed = store.take()
    r2 = resolve(w2, SETTINGS, r1, changed)

    full = resolve(w2, SETTINGS)
    _check_same(r2, r1, full)
    ref = ObjectRef(Kind.SERVICE, "shop", "s05")
    assert r2.services[ref] is not r1.services[ref]
    assert [str(e.address) for e in r2.services[ref].upstreams[0].endpoints] == [
        "10.0.5.1",
        "10.0.5.9",
    ]
    # The route table is not rebuilt for an endpoint change.
    assert r2.ir.virtual_hosts is r1.ir.virtual_hosts
    assert r2.services[ref].routes is r1.services[ref].routes
    others = [r for r in r2.services if r != ref]
    assert all(r2.services[r] is r1.services[r] for r in others)
    assert r2.diagnostics is r1.diagnostics


def test_deleted_slice_is_traced_to_its_service_through_the_previous_world() -> None:
    store = _world_store(3)
    w1, _ = store.take()
    r1 = resolve(w1, SETTINGS)
    store.delete("t", ObjectRef(Kind.ENDPOINT_SLICE, "shop", "s01-a"))
    w2, changed = store.take()
    assert changed == {ObjectRef(Kind.ENDPOINT_SLICE, "shop", "s01-a")}
    r2 = resolve(w2, SETTINGS, r1, changed)
    _check_same(r2, r1, resolve(w2, SETTINGS))
    assert r2.services[ObjectRef(Kind.SERVICE, "shop", "s01")].upstreams[0].endpoints == ()


def test_conflict_winner_removed_promotes_the_loser() -> None:
    store = Store()
    store.upsert("t", _svc("a", "web", prefix="/api"))
    store.upsert("t", _svc("b", "web", prefix="/api"))
    w1, _ = store.take()
    r1 = resolve(w1, SETTINGS)
    loser = ObjectRef(Kind.SERVICE, "b", "web")
    assert r1.services[loser].routes == ()
    assert [d.code for d in r1.services[loser].diagnostics] == ["route.conflict"]

    store.delete("t", ObjectRef(Kind.SERVICE, "a", "web"))
    w2, changed = store.take()
    r2 = resolve(w2, SETTINGS, r1, changed)
    _check_same(r2, r1, resolve(w2, SETTINGS))
    assert r2.services[loser].routes[0].prefix == "/api"
    assert r2.diagnostics == ()


def test_namespace_change_re_resolves_its_services() -> None:
    store = _world_store(2)
    w1, _ = store.take()
    r1 = resolve(w1, SETTINGS)
    store.upsert(
        "t",
        K8sNamespace(name="shop", annotations=FrozenDict({"meshbridge.io/resolver": "service"})),
    )
    w2, changed = store.take()
    r2 = resolve(w2, SETTINGS, r1, changed)
    _check_same(r2, r1, resolve(w2, SETTINGS))
    assert {sr.resolver for sr in r2.services.values()} == {"service"}


def test_changed_settings_resolve_everything() -> None:
    store = _world_store(2)
    w1, _ = store.take()
    r1 = resolve(w1, SETTINGS)
    other = ResolveSettings(cluster_domain="corp.internal")
    assert resolve(w1, other, r1, ()) == resolve(w1, other)


# -- property: any sequence of changes, incremental == full -------------------------

NAMESPACES = ("a", "b")
NAMES = ("x", "y", "z")
PREFIXES = ("/", "/api", "/api/v1")
HOSTS = ("*", "shop.example.com")

services = st.builds(
    lambda ns, name, prefix, host, extra: K8sService(
        namespace=ns,
        name=name,
        ports=(ServicePort(port=80, name="http"),),
        annotations=FrozenDict(
            ({"meshbridge.io/prefix": prefix, "meshbridge.io/host": host} if prefix else {}) | extra
        ),
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(NAMES),
    st.sampled_from((None, *PREFIXES)),
    st.sampled_from(HOSTS),
    st.sampled_from(
        (
            {},
            {"meshbridge.io/resolver": "consul", "meshbridge.io/mesh": "none"},
            {"meshbridge.io/timeout": "oops"},
            {"meshbridge.io/mesh": "auto"},
        )
    ),
)
slices = st.builds(
    lambda ns, svc, n, ips, ready: K8sEndpointSlice(
        namespace=ns,
        name=f"{svc}-{n}",
        service_name=svc,
        ports=(EndpointPort(port=8080, name="http"),),
        endpoints=tuple(
            SliceEndpoint(addresses=(f"10.0.0.{ip}",), ready=ready, target_pod=f"p{ip}")
            for ip in ips
        ),
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(NAMES),
    st.integers(0, 1),
    st.lists(st.integers(1, 4), max_size=3),
    st.booleans(),
)
ISTIO_SECRETS: tuple[IdentitySecret, TrustSecret] = (
    IdentitySecret(SecretName("identity/istio"), "CERT", PrivateKey("KEY")),
    TrustSecret(SecretName("trust/istio"), "CA"),
)
SOURCE_PROBLEMS = tuple(
    Diagnostic(ObjectRef(Kind.FILE, "", f"f{i}.yaml"), "spec", "does not parse", code="file.bad")
    for i in range(3)
)

pods = st.builds(
    lambda ns, ip, labels: K8sPod(namespace=ns, name=f"p{ip}", labels=FrozenDict(labels)),
    st.sampled_from(NAMESPACES),
    st.integers(1, 4),
    st.sampled_from(
        ({}, {"security.istio.io/tlsMode": "istio"}, {"linkerd.io/control-plane-ns": "l"})
    ),
)
namespaces = st.builds(
    lambda name, ann, labels: K8sNamespace(
        name=name, annotations=FrozenDict(ann), labels=FrozenDict(labels)
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(({}, {"meshbridge.io/resolver": "service"}, {"meshbridge.io/mesh": "bad"})),
    st.sampled_from(({}, {"istio-injection": "enabled"})),
)
consul = st.builds(
    lambda name, n: ConsulService(
        key=ConsulServiceKey("dc1", name),
        instances=tuple(ConsulInstance(f"i{i}", "n", f"10.9.0.{i}", 80) for i in range(n)),
        total=n,
    ),
    st.sampled_from(NAMES),
    st.integers(0, 2),
)
ops = st.one_of(
    st.tuples(st.just("upsert"), st.one_of(services, slices, pods, namespaces)),
    st.tuples(
        st.just("delete"),
        st.builds(
            ObjectRef,
            st.sampled_from((Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.POD)),
            st.sampled_from(NAMESPACES),
            st.sampled_from((*NAMES, "x-0", "y-1", "p1", "p2")),
        ),
    ),
    st.tuples(st.just("consul"), consul),
    # The gateway's Istio identity and trust bundle appear or go (meshed
    # upstreams name them; their TLS and diagnostics follow).
    st.tuples(st.just("secrets"), st.booleans()),
    st.tuples(st.just("source"), st.lists(st.sampled_from(SOURCE_PROBLEMS), max_size=2)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(ops, min_size=1, max_size=4), min_size=1, max_size=6))
def test_incremental_equals_full_for_any_change_sequence(batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    store = Store()
    world, _ = store.take()
    prev = resolve(world, MESHES)
    for batch in batches:
        for op, value in batch:
            if op == "upsert":
                store.upsert("t", value)
            elif op == "delete":
                store.delete("t", value)
            elif op == "secrets":
                for secret in ISTIO_SECRETS:
                    if value:
                        store.put_mesh_secret(secret)
                    else:
                        store.remove_mesh_secret(secret.name)
            elif op == "source":
                store.set_source_diagnostics("files", value)
            else:
                store.put_consul_service(value)
        world, changed = store.take()
        inc = resolve(world, MESHES, prev, changed)
        _check_same(inc, prev, resolve(world, MESHES))
        prev = inc
