"""Incremental resolve in proportion to the change: what a change touches, and only that.

``Resolved.services`` and ``Ir.upstreams`` are :class:`ShardedMap` versions
evolved from the previous build's: an unchanged entry is the very same
object, ``changed_since`` names exactly what changed, and the previous
version is left as it was. Shared inputs (Consul catalog, mesh secrets) reach
exactly the Services that read them, also ones added after the first change.
Every step is checked against a full resolve of the same World.
"""

from __future__ import annotations

from bridge.model.consul import ConsulInstance, ConsulService, ConsulServiceKey
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    IdentitySecret,
    Mesh,
    Resolved,
    SecretName,
    TrustSecret,
    UpstreamKey,
)
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
from bridge.model.sharded import ShardedMap
from bridge.resolve import resolve
from bridge.store import Store

SETTINGS = ResolveSettings(supported_meshes=frozenset({Mesh.NONE, Mesh.ISTIO}))
ISTIO_SECRETS = (
    IdentitySecret(SecretName("identity/istio"), "CERT", PrivateKey("KEY")),
    TrustSecret(SecretName("trust/istio"), "CA"),
)


def _svc(ns: str, name: str, **ann: str) -> K8sService:
    return K8sService(
        namespace=ns,
        name=name,
        ports=(ServicePort(port=80, name="http"),),
        annotations=FrozenDict({f"meshbridge.io/{k}": v for k, v in ann.items()}),
    )


def _slice(ns: str, svc: str, *ips: str) -> K8sEndpointSlice:
    return K8sEndpointSlice(
        namespace=ns,
        name=f"{svc}-a",
        service_name=svc,
        ports=(EndpointPort(port=8080, name="http"),),
        endpoints=tuple(
            SliceEndpoint(addresses=(ip,), target_pod=f"{svc}-{i}") for i, ip in enumerate(ips)
        ),
    )


def _consul(name: str, *ips: str) -> ConsulService:
    return ConsulService(
        key=ConsulServiceKey("dc1", name),
        instances=tuple(ConsulInstance(f"{name}-{i}", "n", ip, 80) for i, ip in enumerate(ips)),
        total=len(ips),
    )


class _Run:
    """A store and the latest incremental result, each step checked against a full resolve."""

    def __init__(self, store: Store) -> None:
        self.store = store
        world, _ = store.take()
        self.resolved = resolve(world, SETTINGS)

    def step(self) -> tuple[Resolved, Resolved]:
        world, changed = self.store.take()
        before = self.resolved
        after = resolve(world, SETTINGS, before, changed)
        full = resolve(world, SETTINGS)
        assert after == full
        assert after.ir == full.ir
        assert after.diagnostics == full.diagnostics
        self.resolved = after
        return before, after


def _ref(ns: str, name: str) -> ObjectRef:
    return ObjectRef(Kind.SERVICE, ns, name)


def _key(ns: str, name: str) -> UpstreamKey:
    return UpstreamKey(ns, name, "http")


def _many(n: int) -> Store:
    store = Store()
    for i in range(n):
        store.upsert("t", _svc(f"ns{i % 7}", f"s{i}", prefix=f"/s{i}", host=f"h{i % 5}.example"))
        store.upsert("t", _slice(f"ns{i % 7}", f"s{i}", f"10.1.{i // 250}.{i % 250 + 1}"))
    return store


def test_one_endpoint_change_is_the_only_change_and_everything_else_is_shared() -> None:
    run = _Run(_many(600))
    run.store.upsert("t", _slice("ns3", "s10", "10.9.9.9"))
    before, after = run.step()

    ups, old_ups = after.ir.upstreams, before.ir.upstreams
    assert isinstance(ups, ShardedMap) and isinstance(old_ups, ShardedMap)
    assert isinstance(after.services, ShardedMap) and isinstance(before.services, ShardedMap)
    assert ups.changed_since(old_ups) == [_key("ns3", "s10")]
    assert after.services.changed_since(before.services) == [_ref("ns3", "s10")]
    assert all(ups[k] is u for k, u in old_ups.items() if k != _key("ns3", "s10"))
    assert [e.address for e in ups[_key("ns3", "s10")].endpoints] == ["10.9.9.9"]
    # The previous version is left as it was.
    assert [e.address for e in old_ups[_key("ns3", "s10")].endpoints] == ["10.1.0.11"]
    assert after.ir.virtual_hosts is before.ir.virtual_hosts
    assert after.diagnostics is before.diagnostics

    # Nothing changed: the same maps again.
    run.store.upsert("t", _slice("ns3", "s10", "10.9.9.9"))
    again, same = run.step()
    assert same.ir.upstreams is again.ir.upstreams
    assert same.services is again.services


def test_added_and_removed_services_are_exactly_what_changed() -> None:
    run = _Run(_many(300))
    run.store.delete("t", _ref("ns1", "s8"))
    run.store.upsert("t", _svc("ns1", "new", prefix="/new", host="h0.example"))
    run.store.upsert("t", _slice("ns1", "new", "10.7.0.1"))
    before, after = run.step()

    assert sorted(after.ir.upstreams.changed_since(before.ir.upstreams)) == [
        _key("ns1", "new"),
        _key("ns1", "s8"),
    ]
    assert sorted(after.services.changed_since(before.services)) == [
        _ref("ns1", "new"),
        _ref("ns1", "s8"),
    ]
    assert _key("ns1", "s8") not in after.ir.upstreams
    assert len(after.ir.upstreams) == len(before.ir.upstreams)
    hosts = {vh.host: vh for vh in after.ir.virtual_hosts}
    assert "/new" in {r.prefix for r in hosts["h0.example"].routes}
    assert "/s8" not in {r.prefix for r in hosts["h3.example"].routes}
    # Every host the change did not touch keeps its VirtualHost.
    old_hosts = {vh.host: vh for vh in before.ir.virtual_hosts}
    assert all(hosts[h] is old_hosts[h] for h in ("h1.example", "h2.example", "h4.example"))


def test_consul_changes_reach_exactly_the_consul_resolved_services() -> None:
    store = _many(50)
    store.upsert("t", _svc("k", "a", prefix="/a", resolver="consul", mesh="none"))
    store.put_consul_service(_consul("a", "10.8.0.1"))
    run = _Run(store)

    run.store.put_consul_service(_consul("a", "10.8.0.2"))
    before, after = run.step()
    assert after.services.changed_since(before.services) == [_ref("k", "a")]
    assert [e.address for e in after.ir.upstreams[_key("k", "a")].endpoints] == ["10.8.0.2"]

    # A Service that starts resolving through Consul after that is followed too.
    run.store.upsert("t", _svc("k", "c", prefix="/c", resolver="consul", mesh="none"))
    run.step()
    run.store.put_consul_service(_consul("c", "10.8.1.1"))
    before, after = run.step()
    assert [e.address for e in after.ir.upstreams[_key("k", "c")].endpoints] == ["10.8.1.1"]

    # One that stops is no longer re-resolved on Consul changes.
    run.store.upsert("t", _svc("k", "a", prefix="/a"))
    run.step()
    run.store.put_consul_service(_consul("a", "10.8.0.3"))
    before, after = run.step()
    assert after.services[_ref("k", "a")] is before.services[_ref("k", "a")]


def _meshed(store: Store, name: str) -> None:
    store.upsert("t", _svc("mesh", name, prefix=f"/{name}"))
    store.upsert("t", _slice("mesh", name, "10.6.0.1"))
    store.upsert(
        "t",
        K8sPod(
            namespace="mesh",
            name=f"{name}-0",
            labels=FrozenDict({"security.istio.io/tlsMode": "istio"}),
            service_account=name,
        ),
    )


def test_mesh_secrets_reach_the_meshed_services_and_the_ir_secrets() -> None:
    store = _many(40)
    store.upsert("t", K8sNamespace(name="mesh", labels=FrozenDict({"istio-injection": "enabled"})))
    _meshed(store, "m1")
    run = _Run(store)
    # Without the gateway's identity a meshed Service is left out, not sent plaintext.
    assert _key("mesh", "m1") not in run.resolved.ir.upstreams
    assert run.resolved.ir.secrets == {}
    assert any(d.ref == _ref("mesh", "m1") for d in run.resolved.diagnostics)

    for secret in ISTIO_SECRETS:
        run.store.put_mesh_secret(secret)
    before, after = run.step()
    assert after.services.changed_since(before.services) == [_ref("mesh", "m1")]
    tls = after.ir.upstreams[_key("mesh", "m1")].tls
    assert tls is not None and tls.client_identity == "identity/istio"
    assert set(after.ir.secrets) == {"identity/istio", "trust/istio"}
    assert not any(d.ref == _ref("mesh", "m1") for d in after.diagnostics)

    # A meshed Service added later shares the secrets and follows them out.
    _meshed(run.store, "m2")
    before, after = run.step()
    assert after.ir.secrets is before.ir.secrets
    run.store.remove_mesh_secret(SecretName("identity/istio"))
    run.store.remove_mesh_secret(SecretName("trust/istio"))
    before, after = run.step()
    assert sorted(after.services.changed_since(before.services)) == [
        _ref("mesh", "m1"),
        _ref("mesh", "m2"),
    ]
    assert after.ir.secrets == {}
    assert _key("mesh", "m1") not in after.ir.upstreams
    assert _key("mesh", "m2") not in after.ir.upstreams
    assert {d.ref for d in after.diagnostics} >= {_ref("mesh", "m1"), _ref("mesh", "m2")}


def test_diagnostics_follow_one_change_and_many() -> None:
    run = _Run(_many(200))
    run.store.upsert("t", _svc("ns2", "s9", prefix="/s9", timeout="soon"))
    _, after = run.step()
    assert [d.ref for d in after.diagnostics] == [_ref("ns2", "s9")]

    # More problems at once than are patched in one by one.
    for i in range(0, 200, 2):
        run.store.upsert("t", _svc(f"ns{i % 7}", f"s{i}", prefix=f"/s{i}", timeout="soon"))
    run.store.set_source_diagnostics(
        "files", [Diagnostic(ObjectRef(Kind.FILE, "", "bad.yaml"), "spec", "does not parse")]
    )
    _, after = run.step()
    assert len(after.diagnostics) == 102
    assert list(after.diagnostics) == sorted(after.diagnostics)

    run.store.upsert("t", _svc("ns2", "s9", prefix="/s9"))
    run.store.set_source_diagnostics("files", [])
    _, after = run.step()
    assert len(after.diagnostics) == 100
    assert _ref("ns2", "s9") not in {d.ref for d in after.diagnostics}


def test_ir_secrets_follow_the_upstreams_that_name_them() -> None:
    store = _many(20)
    store.upsert("t", K8sNamespace(name="mesh", labels=FrozenDict({"istio-injection": "enabled"})))
    for secret in ISTIO_SECRETS:
        store.put_mesh_secret(secret)
    run = _Run(store)
    assert run.resolved.ir.secrets == {}  # present, but no upstream names them

    _meshed(run.store, "m1")
    _, after = run.step()
    assert set(after.ir.secrets) == {"identity/istio", "trust/istio"}

    run.store.delete("t", _ref("mesh", "m1"))
    _, after = run.step()
    assert after.ir.secrets == {}
