"""translate(): incremental reuse by identity, determinism, names, and secrets kept out of reprs."""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    Discovery,
    DnsTarget,
    Endpoint,
    IdentitySecret,
    Ir,
    Listener,
    SecretName,
    TrustSecret,
    Upstream,
    UpstreamKey,
    VirtualHost,
)
from bridge.model.secrets import PrivateKey
from bridge.xds import names
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from bridge.xds.translate import Translation, translate
from tests.xds.rich import ISTIO_ID, PKI, key, rich_ir, route

ALL_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


def identical(a: Resources, b: Resources, type_url: str) -> set[str]:
    """Names whose message is the very same object in both."""
    old, new = a.of(type_url), b.of(type_url)
    return {name for name, msg in new.items() if old.get(name) is msg}


def with_upstream(ir: Ir, upstream: Upstream) -> Ir:
    ups = dict(ir.upstreams)
    ups[upstream.key] = upstream
    return dataclasses.replace(ir, upstreams=FrozenDict(ups))


def test_every_ir_object_becomes_its_resources_under_names_from_names_module() -> None:
    ir = rich_ir()
    res = translate(ir).resources
    assert set(res.of(LISTENER)) == {"http", "http-local"}
    assert set(res.of(ROUTE)) == {"http/routes", "http-local/routes"}
    assert set(res.of(CLUSTER)) == {names.cluster_name(k) for k in ir.upstreams}
    eds = {names.cluster_name(k) for k, u in ir.upstreams.items() if u.discovery == "eds"}
    assert set(res.of(ENDPOINT)) == eds  # including the upstream with no endpoints
    assert set(res.of(SECRET)) == {str(n) for n in ir.secrets}


def test_same_ir_gives_equal_bytes_every_time() -> None:
    first, second = translate(rich_ir()).resources, translate(rich_ir()).resources
    for type_url in ALL_TYPES:
        a, b = first.of(type_url), second.of(type_url)
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name].SerializeToString(deterministic=True) == b[name].SerializeToString(
                deterministic=True
            )


def test_unchanged_ir_reuses_every_message_and_every_mapping() -> None:
    ir = rich_ir()
    first = translate(ir)
    again = translate(ir, first)
    for type_url in ALL_TYPES:
        assert again.resources.of(type_url) is first.resources.of(type_url)
    # An equal IR built afresh (no shared objects) reuses messages too.
    rebuilt = translate(rich_ir(), first)
    for type_url in ALL_TYPES:
        assert identical(first.resources, rebuilt.resources, type_url) == set(
            first.resources.of(type_url)
        ), type_url


def test_one_upstream_changed_replaces_only_its_cluster_and_assignment() -> None:
    ir = rich_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    changed = dataclasses.replace(web, connect_timeout_ms=1234, endpoints=web.endpoints[:1])
    second = translate(with_upstream(ir, changed), first)
    name = names.cluster_name(web.key)
    for type_url in (CLUSTER, ENDPOINT):
        assert identical(first.resources, second.resources, type_url) == set(
            first.resources.of(type_url)
        ) - {name}
    cluster = second.resources.of(CLUSTER)[name]
    assert cluster.connect_timeout.ToMilliseconds() == 1234  # type: ignore[attr-defined]
    for type_url in (LISTENER, ROUTE, SECRET):
        assert second.resources.of(type_url) is first.resources.of(type_url)


def test_endpoints_only_change_keeps_the_cluster_so_envoy_does_not_rewarm() -> None:
    ir = rich_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    moved = dataclasses.replace(web, endpoints=(Endpoint("10.9.9.9", 8080),))
    second = translate(with_upstream(ir, moved), first)
    name = names.cluster_name(web.key)
    assert second.resources.of(CLUSTER) is first.resources.of(CLUSTER)
    cla = second.resources.of(ENDPOINT)[name]
    assert cla is not first.resources.of(ENDPOINT)[name]
    addresses = [
        e.endpoint.address.socket_address.address
        for loc in cla.endpoints  # type: ignore[attr-defined]
        for e in loc.lb_endpoints
    ]
    assert addresses == ["10.9.9.9"]


def test_removed_and_added_upstreams_appear_and_disappear() -> None:
    ir = rich_ir()
    first = translate(ir)
    ups = {k: u for k, u in ir.upstreams.items() if k.service != "idle"}
    new_key = UpstreamKey("default", "new", "http")
    ups[new_key] = Upstream(new_key, "eds", endpoints=(Endpoint("10.1.1.1", 80),))  # type: ignore[arg-type]
    second = translate(dataclasses.replace(ir, upstreams=FrozenDict(ups)), first)
    clusters = second.resources.of(CLUSTER)
    assert "default/idle/http" not in clusters
    assert "default/idle/http" not in second.resources.of(ENDPOINT)
    assert "default/new/http" in clusters
    assert len(clusters) == len(set(clusters))
    kept = set(first.resources.of(CLUSTER)) - {"default/idle/http"}
    assert identical(first.resources, second.resources, CLUSTER) == kept


def test_changed_route_rebuilds_route_configs_but_reuses_untouched_virtual_hosts() -> None:
    ir = rich_ir()
    first = translate(ir)
    api = ir.virtual_hosts[0]
    new_api = VirtualHost(api.host, (*api.routes, route(api.host, "/extra", key("default", "web"))))
    second = translate(
        dataclasses.replace(ir, virtual_hosts=(new_api, *ir.virtual_hosts[1:])), first
    )
    assert second.resources.of(LISTENER) is first.resources.of(LISTENER)
    assert second.resources.of(CLUSTER) is first.resources.of(CLUSTER)
    config = second.resources.of(ROUTE)["http/routes"]
    hosts = [vh.name for vh in config.virtual_hosts]  # type: ignore[attr-defined]
    assert hosts == ["api.example.com", "*.example.com", "*"]
    prefixes = [r.match.prefix for r in config.virtual_hosts[0].routes]  # type: ignore[attr-defined]
    assert prefixes == ["/grpc/", "/", "/extra"]
    # Untouched virtual hosts' messages were reused, not rebuilt.
    memo_before, memo_after = first._memo.vhosts, second._memo.vhosts
    assert memo_after["*"].message is memo_before["*"].message
    assert memo_after["api.example.com"].message is not memo_before["api.example.com"].message
    assert (
        memo_after["api.example.com"].routes[api.routes[0]]
        is (memo_before["api.example.com"].routes[api.routes[0]])
    )


def test_listener_change_replaces_only_that_listener_and_its_route_config() -> None:
    ir = rich_ir()
    first = translate(ir)
    second = translate(
        dataclasses.replace(ir, listeners=(ir.listeners[0], Listener("http-local", 9091))), first
    )
    assert identical(first.resources, second.resources, LISTENER) == {"http"}
    assert identical(first.resources, second.resources, ROUTE) == {"http/routes"}
    assert second.resources.of(CLUSTER) is first.resources.of(CLUSTER)


def test_rotating_an_identity_replaces_only_its_secret() -> None:
    ir = rich_ir()
    first = translate(ir)
    old = ir.secrets[ISTIO_ID]
    assert isinstance(old, IdentitySecret)
    rotated = IdentitySecret(ISTIO_ID, old.cert_chain_pem + "\n", PrivateKey(b"new key"))
    secrets = dict(ir.secrets)
    secrets[ISTIO_ID] = rotated
    second = translate(dataclasses.replace(ir, secrets=FrozenDict(secrets)), first)
    assert identical(first.resources, second.resources, SECRET) == set(ir.secrets) - {ISTIO_ID}
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        assert second.resources.of(type_url) is first.resources.of(type_url)


def test_an_older_translation_stays_valid_after_a_newer_one() -> None:
    ir = rich_ir()
    first = translate(ir)
    snapshot = {t: dict(first.resources.of(t)) for t in ALL_TYPES}
    translate(Ir(), first)  # everything removed
    for type_url in ALL_TYPES:
        assert dict(first.resources.of(type_url)) == snapshot[type_url]
    # Translating from the old one again still reuses its messages.
    assert translate(ir, first).resources.of(CLUSTER) is first.resources.of(CLUSTER)


def test_empty_ir_gives_every_type_empty() -> None:
    res = translate(Ir()).resources
    assert all(len(res.of(t)) == 0 for t in ALL_TYPES)


def test_translation_repr_never_shows_key_material() -> None:
    key_pem = (PKI / "gateway-key.pem").read_text()
    translation = translate(rich_ir())
    secret = translation.resources.of(SECRET)[ISTIO_ID]
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes  # type: ignore[attr-defined]
    body = key_pem.splitlines()[1]
    for text in (repr(translation), str(translation), f"{translation}"):
        assert body not in text
        assert "PRIVATE KEY" not in text
    assert "Secret=6" in repr(translation)


def test_trust_bundle_secret_is_a_validation_context() -> None:
    ir = Ir(secrets=FrozenDict({SecretName("r"): TrustSecret(SecretName("r"), "PEM")}))
    secret = translate(ir).resources.of(SECRET)["r"]
    assert secret.validation_context.trusted_ca.inline_string == "PEM"  # type: ignore[attr-defined]


def test_messages_are_protobuf_messages() -> None:
    translation = translate(rich_ir())
    assert isinstance(translation, Translation)
    for type_url in ALL_TYPES:
        for message in translation.resources.of(type_url).values():
            assert isinstance(message, Message)
            assert type_url.endswith(message.DESCRIPTOR.full_name)


def test_resources_repr_never_shows_key_material() -> None:
    body = (PKI / "gateway-key.pem").read_text().splitlines()[1]
    resources = translate(rich_ir()).resources
    text = repr(resources) + str(resources.of(SECRET)) + f"{resources.by_type}"
    assert body not in text
    assert "PRIVATE KEY" not in text
    assert "istio-identity" in repr(resources.of(SECRET))


def test_discovery_flip_moves_the_upstream_in_and_out_of_eds() -> None:
    ir = rich_ir()
    first = translate(ir)
    web = ir.upstreams[key("default", "web")]
    name = names.cluster_name(web.key)
    as_dns = dataclasses.replace(web, discovery=Discovery.STRICT_DNS, dns=DnsTarget("web", 80))
    second = translate(with_upstream(ir, as_dns), first)
    assert name not in second.resources.of(ENDPOINT)
    assert second.resources.of(CLUSTER)[name].type == cluster_v3.Cluster.STRICT_DNS  # type: ignore[attr-defined]
    third = translate(ir, second)
    assert name in third.resources.of(ENDPOINT)
    assert set(translate(ir).resources.of(ENDPOINT)) == set(third.resources.of(ENDPOINT))


def test_reordered_upstreams_reuse_messages() -> None:
    ir = rich_ir()
    first = translate(ir)
    reordered = dataclasses.replace(
        ir, upstreams=FrozenDict(dict(reversed(list(ir.upstreams.items()))))
    )
    second = translate(reordered, first)
    for type_url in (CLUSTER, ENDPOINT):
        assert set(second.resources.of(type_url)) == set(first.resources.of(type_url))
        assert identical(first.resources, second.resources, type_url) == set(
            first.resources.of(type_url)
        )
