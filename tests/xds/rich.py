"""A rich IR exercising every translation feature at once, for unit and Envoy tests."""

from __future__ import annotations

from pathlib import Path

from bridge.model.frozen import FrozenDict
from bridge.model.ir import Discovery as D
from bridge.model.ir import (
    DnsTarget,
    Endpoint,
    IdentitySecret,
    Ir,
    Listener,
    Mesh,
    Protocol,
    Route,
    SanMatch,
    Secret,
    SecretName,
    TrustSecret,
    Upstream,
    UpstreamKey,
    UpstreamTls,
    VirtualHost,
)
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.secrets import PrivateKey

PKI = Path(__file__).parents[1] / "golden" / "ir_to_xds" / "testdata" / "pki"
ISTIO_ID, ISTIO_ROOTS = SecretName("istio-identity"), SecretName("istio-roots")
LINKERD_ID, LINKERD_ROOTS = SecretName("linkerd-identity"), SecretName("linkerd-roots")
CONSUL_ID, CONSUL_ROOTS = SecretName("consul-identity"), SecretName("consul-roots")


def key(ns: str, svc: str, port: str = "http") -> UpstreamKey:
    return UpstreamKey(ns, svc, port)


def route(host: str, prefix: str, k: UpstreamKey, **kw: object) -> Route:
    return Route(host, prefix, k, ObjectRef(Kind.SERVICE, k.namespace, k.service), **kw)  # type: ignore[arg-type]


def pki_secrets() -> dict[SecretName, Secret]:
    cert = (PKI / "gateway.pem").read_text()
    private_key = PrivateKey((PKI / "gateway-key.pem").read_bytes())
    roots = (PKI / "root.pem").read_text()
    out: dict[SecretName, Secret] = {}
    for identity, bundle in ((ISTIO_ID, ISTIO_ROOTS), (LINKERD_ID, LINKERD_ROOTS)):
        out[identity] = IdentitySecret(identity, cert, private_key)
        out[bundle] = TrustSecret(bundle, roots)
    out[CONSUL_ID] = IdentitySecret(CONSUL_ID, cert, private_key)
    out[CONSUL_ROOTS] = TrustSecret(CONSUL_ROOTS, roots)
    return out


def rich_upstreams() -> list[Upstream]:
    istio = UpstreamTls(
        sni="outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
        verify_sans=(SanMatch("URI", "spiffe://cluster.local/ns/bookinfo/sa/reviews"),),
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        client_identity=ISTIO_ID,
        trust_bundle=ISTIO_ROOTS,
    )
    linkerd_name = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    linkerd = UpstreamTls(
        sni=linkerd_name,
        verify_sans=(SanMatch("DNS", linkerd_name),),
        min_version="TLSv1_3",
        max_version="TLSv1_3",
        client_identity=LINKERD_ID,
        trust_bundle=LINKERD_ROOTS,
    )
    consul = UpstreamTls(
        sni="billing.default.dc1.internal.1111.consul",
        verify_sans=(SanMatch("URI", "spiffe://1111.consul/ns/default/dc/dc1/svc/billing"),),
        client_identity=CONSUL_ID,
        trust_bundle=CONSUL_ROOTS,
    )
    return [
        Upstream(
            key("default", "web"),
            D.EDS,
            endpoints=(
                Endpoint("10.0.0.1", 8080, "zone-a"),
                Endpoint("10.0.0.2", 8080, "zone-b"),
                Endpoint("10.0.0.3", 8080),
            ),
        ),
        Upstream(key("default", "idle"), D.EDS),
        Upstream(
            key("shop", "cart", "80"),
            D.STRICT_DNS,
            dns=DnsTarget("cart.shop.svc.cluster.local", 80),
            connect_timeout_ms=250,
        ),
        Upstream(
            key("default", "grpc", "grpc"),
            D.EDS,
            endpoints=(Endpoint("10.0.0.9", 9000),),
            protocol=Protocol.HTTP2,
        ),
        Upstream(
            key("bookinfo", "reviews"),
            D.EDS,
            endpoints=(Endpoint("10.0.1.7", 9080),),
            tls=istio,
            mesh=Mesh.ISTIO,
        ),
        Upstream(
            key("emojivoto", "web-svc"),
            D.EDS,
            endpoints=(Endpoint("10.0.2.7", 8080),),
            tls=linkerd,
            mesh=Mesh.LINKERD,
        ),
        Upstream(
            key("default", "billing", "21000"),
            D.EDS,
            endpoints=(Endpoint("10.0.3.7", 21000),),
            tls=consul,
            mesh=Mesh.CONSUL,
            protocol=Protocol.HTTP2,
        ),
    ]


def rich_ir() -> Ir:
    ups = rich_upstreams()
    k = {u.key.service: u.key for u in ups}
    vhosts = (
        VirtualHost(
            "api.example.com",
            (
                route("api.example.com", "/grpc/", k["grpc"], rewrite="/", timeout_ms=0),
                route("api.example.com", "/", k["web"], timeout_ms=2500),
            ),
        ),
        VirtualHost("*.example.com", (route("*.example.com", "/", k["reviews"]),)),
        VirtualHost(
            "*",
            (
                route("*", "/shop/", k["cart"], rewrite="/"),
                route(
                    "*",
                    "/emoji",
                    k["web-svc"],
                    headers_to_add=(("l5d-dst-override", "web-svc.emojivoto:80"), ("x-p", "5%")),
                    headers_to_remove=("l5d-dst-override", "x-debug"),
                ),
                route("*", "/billing", k["billing"]),
                route("*", "/idle", k["idle"]),
                route("*", "/", k["web"]),
            ),
        ),
    )
    return Ir(
        listeners=(Listener("http", 8080), Listener("http-local", 8081, "127.0.0.1")),
        virtual_hosts=vhosts,
        upstreams=FrozenDict({u.key: u for u in ups}),
        secrets=FrozenDict(pki_secrets()),
    )
