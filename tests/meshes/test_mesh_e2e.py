"""Real Envoys: the gateway (fed by meshbridge's translation and ADS server) reaching
each mesh's sidecar over that mesh's mTLS — and refusing, or being refused, when
an identity is wrong."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from bridge.demo.meshes import (
    DemoMeshCa,
    InlineCert,
    consul_sidecar,
    istio_sidecar,
    linkerd_sidecar,
)
from bridge.identity import pki
from bridge.model.ir import IdentitySecret, Mesh, Secret, SecretName, TrustSecret, UpstreamTls
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.resolve.meshtls import (
    EDGE_HEADERS_TO_REMOVE,
    L5D_DST_OVERRIDE,
    MeshTarget,
    consul_gateway_spiffe,
    linkerd_dst_override,
    mesh_tls,
)
from tests.meshes.harness import BridgeThread, Reply, gateway_bootstrap, get
from tests.meshes.world import echo_listener, make_ir, route, upstream
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.UTC)
CA_START = NOW - dt.timedelta(days=3)
SETTINGS = ResolveSettings()
GW_ISTIO = "spiffe://cluster.local/ns/edge/sa/meshbridge"
GW_LINKERD = "meshbridge.edge.serviceaccount.identity.linkerd.cluster.local"
CART_LINKERD = "cart.shop.serviceaccount.identity.linkerd.cluster.local"


def identity(name: str, issued: pki.Issued) -> IdentitySecret:
    return IdentitySecret(SecretName(name), issued.cert_chain_pem, issued.private_key)


def tls_for(mesh: Mesh, secrets: dict[SecretName, Secret], sa: str = "cart") -> UpstreamTls:
    target = MeshTarget(
        ref=ObjectRef(Kind.SERVICE, "shop", "cart"),
        namespace="shop",
        service="cart",
        port=8080,
        service_accounts=(sa,),
    )
    got = mesh_tls(mesh, target, SETTINGS, secrets)
    assert got.ok and got.tls is not None, got.diagnostics
    return got.tls


@dataclass
class Env:
    gateway: EnvoyProcess
    port: int
    sidecars: dict[str, EnvoyProcess]
    consul_td: str

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return get(self.port, path, headers)

    def stat(self, proc: str, suffix: str, contains: str = "") -> int:
        envoy = self.gateway if proc == "gateway" else self.sidecars[proc]
        stats = envoy.stats()
        hits = [v for k, v in stats.items() if k.endswith(suffix) and contains in k]
        assert hits, f"no stat *{suffix} containing {contains!r} in {proc}"
        return sum(hits)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    istio = DemoMeshCa(Mesh.ISTIO, now=CA_START)
    linkerd = DemoMeshCa(Mesh.LINKERD, now=CA_START)
    consul = DemoMeshCa(Mesh.CONSUL, now=CA_START)
    rogue = DemoMeshCa(Mesh.CONSUL, now=CA_START, name="rogue connect root")

    ports = {
        n: free_port() for n in ("istio", "impostor", "linkerd", "l5d-impostor", "consul", "echo")
    }
    gw_port = free_port()
    gw_consul = consul_gateway_spiffe(consul.trust_domain, SETTINGS.consul)
    istio_boot = istio_sidecar(
        name="istio",
        port=ports["istio"],
        cert=InlineCert.of(istio.issue("shop", "cart", now=NOW)),
        trust=istio.root_pem,
    )
    istio_boot["static_resources"]["listeners"].append(echo_listener(ports["echo"]))
    boots = {
        "istio": istio_boot,
        # Same mesh root, another service account: a valid mesh cert, the wrong identity.
        "impostor": istio_sidecar(
            name="impostor",
            port=ports["impostor"],
            cert=InlineCert.of(istio.issue("shop", "impostor", now=NOW)),
            trust=istio.root_pem,
        ),
        "linkerd": linkerd_sidecar(
            name="linkerd",
            port=ports["linkerd"],
            identity=CART_LINKERD,
            cert=InlineCert.of(linkerd.issue("shop", "cart", now=NOW)),
            trust=linkerd.root_pem,
        ),
        # Accepts the SNI of cart's identity but holds web's (same trust anchor).
        "l5d-impostor": linkerd_sidecar(
            name="l5d-impostor",
            port=ports["l5d-impostor"],
            identity=CART_LINKERD,
            cert=InlineCert.of(linkerd.issue("shop", "web", now=NOW)),
            trust=linkerd.root_pem,
        ),
        "consul": consul_sidecar(
            name="consul",
            port=ports["consul"],
            cert=InlineCert.of(consul.issue("default", "cart", now=NOW)),
            trust=consul.root_pem,
            allow=[gw_consul],
        ),
    }
    secrets: dict[SecretName, Secret] = {
        SecretName("identity/istio"): identity(
            "identity/istio", istio.issue("edge", "meshbridge", now=NOW)
        ),
        SecretName("trust/istio"): TrustSecret(SecretName("trust/istio"), istio.root_pem),
        SecretName("identity/linkerd"): identity(
            "identity/linkerd", linkerd.issue("edge", "meshbridge", now=NOW)
        ),
        SecretName("trust/linkerd"): TrustSecret(SecretName("trust/linkerd"), linkerd.root_pem),
        SecretName("identity/consul"): identity(
            "identity/consul", consul.issue("default", "meshbridge", now=NOW)
        ),
        SecretName("trust/consul"): TrustSecret(
            SecretName("trust/consul"), consul.root_pem, trust_domain=consul.trust_domain
        ),
        # Identities for the refusal cases.
        SecretName("identity/istio-expired"): identity(
            "identity/istio-expired",
            istio.issue("edge", "meshbridge", now=NOW - dt.timedelta(days=2)),
        ),
        SecretName("identity/consul-other"): identity(
            "identity/consul-other", consul.issue("default", "other", now=NOW)
        ),
        SecretName("identity/consul-rogue"): identity(
            "identity/consul-rogue", rogue.issue("default", "meshbridge", now=NOW)
        ),
    }
    istio_tls = tls_for(Mesh.ISTIO, secrets)
    linkerd_tls = tls_for(Mesh.LINKERD, secrets)
    consul_tls = tls_for(Mesh.CONSUL, secrets)
    ups = {
        "istio": upstream("istio", ports["istio"], istio_tls, Mesh.ISTIO),
        "impostor": upstream("impostor", ports["impostor"], istio_tls, Mesh.ISTIO),
        "istio-expired": upstream(
            "istio-expired",
            ports["istio"],
            replace(istio_tls, client_identity=SecretName("identity/istio-expired")),
        ),
        "istio-no-cert": upstream(
            "istio-no-cert", ports["istio"], replace(istio_tls, client_identity=None)
        ),
        "linkerd": upstream("linkerd", ports["linkerd"], linkerd_tls, Mesh.LINKERD),
        "linkerd-tls12": upstream(
            "linkerd-tls12", ports["linkerd"], replace(linkerd_tls, max_version="TLSv1_2")
        ),
        "linkerd-wrong-sni": upstream(
            "linkerd-wrong-sni",
            ports["linkerd"],
            replace(linkerd_tls, sni="web.shop.serviceaccount.identity.linkerd.cluster.local"),
        ),
        "linkerd-impostor": upstream("linkerd-impostor", ports["l5d-impostor"], linkerd_tls),
        "consul": upstream("consul", ports["consul"], consul_tls, Mesh.CONSUL),
        "consul-denied": upstream(
            "consul-denied",
            ports["consul"],
            replace(consul_tls, client_identity=SecretName("identity/consul-other")),
        ),
        "consul-rogue": upstream(
            "consul-rogue",
            ports["consul"],
            replace(consul_tls, client_identity=SecretName("identity/consul-rogue")),
        ),
        "l5d-sidecar": upstream("l5d-sidecar", ports["echo"], None),
        "plain": upstream("plain", ports["echo"], None),
    }
    strip = EDGE_HEADERS_TO_REMOVE
    routes = [route(f"/{n}/", u, remove=strip) for n, u in ups.items() if n != "l5d-sidecar"]
    dst = linkerd_dst_override("cart", "shop", "cluster.local", 8080)
    routes.append(
        route("/l5d-sidecar/", ups["l5d-sidecar"], add=((L5D_DST_OVERRIDE, dst),), remove=strip)
    )

    sidecars: dict[str, EnvoyProcess] = {}
    bridge = BridgeThread()
    gateway = EnvoyProcess(gateway_bootstrap(0))
    try:
        for name, boot in boots.items():
            sidecars[name] = EnvoyProcess(boot).start()
        bridge.start()
        bridge.publish(make_ir(gw_port, routes, list(ups.values()), secrets))
        gateway = EnvoyProcess(gateway_bootstrap(bridge.port))
        gateway.start()
        try:
            wait_for(
                lambda: gateway.stats().get("listener_manager.total_listeners_active", 0) >= 1,
                timeout=20,
                what="gateway listener from ADS",
            )
        except TimeoutError:
            pytest.fail(f"gateway never got its listener; its log:\n{gateway.log()}")
        yield Env(gateway, gw_port, sidecars, consul.trust_domain)
    finally:
        gateway.stop()
        for proc in sidecars.values():
            proc.stop()
        bridge.stop()


# -- Istio -------------------------------------------------------------------------


def test_istio_reaches_the_sidecar_and_is_verified(env: Env) -> None:
    r = env.get("/istio/")
    assert r.status == 200, r
    assert r.headers["x-mesh-sidecar"] == "istio"
    assert r.headers["x-mesh-peer"] == GW_ISTIO


def test_istio_wrong_server_identity_is_refused_before_any_request(env: Env) -> None:
    before = env.stat("impostor", "downstream_cx_total", "listener.")
    r = env.get("/impostor/")
    assert r.status == 503
    # The handshake reached the impostor, the SAN check failed, no request followed.
    assert env.stat("impostor", "downstream_cx_total", "listener.") > before
    assert env.stat("gateway", "ssl.fail_verify_san", "impostor") >= 1
    assert env.stat("impostor", "http.sidecar_impostor.downstream_rq_total") == 0


def test_istio_expired_gateway_certificate_is_refused_by_the_sidecar(env: Env) -> None:
    before = env.stat("istio", "ssl.fail_verify_error", "listener.")
    r = env.get("/istio-expired/")
    assert r.status == 503
    assert env.stat("istio", "ssl.fail_verify_error", "listener.") > before


def test_istio_without_client_certificate_is_refused(env: Env) -> None:
    assert env.get("/istio-no-cert/").status == 503


# -- Linkerd -----------------------------------------------------------------------


def test_linkerd_direct_tls13_with_sni_reaches_the_proxy(env: Env) -> None:
    r = env.get("/linkerd/")
    assert r.status == 200, r
    assert r.headers["x-mesh-sidecar"] == "linkerd"
    assert r.headers["x-mesh-peer"] == GW_LINKERD


def test_linkerd_offered_tls12_only_is_refused(env: Env) -> None:
    # Envoy's upstream default maximum is TLS 1.2: without TLSv1_3 in the IR this fails.
    assert env.get("/linkerd-tls12/").status == 503
    assert env.stat("gateway", "ssl.connection_error", "linkerd-tls12") >= 1


def test_linkerd_other_sni_finds_no_filter_chain(env: Env) -> None:
    before = env.stat("linkerd", "no_filter_chain_match", "listener.")
    assert env.get("/linkerd-wrong-sni/").status == 503
    assert env.stat("linkerd", "no_filter_chain_match", "listener.") > before


def test_linkerd_server_with_another_identity_is_refused(env: Env) -> None:
    assert env.get("/linkerd-impostor/").status == 503
    assert env.stat("gateway", "ssl.fail_verify_san", "linkerd-impostor") >= 1
    assert env.stat("l5d-impostor", "http.sidecar_l5d-impostor.downstream_rq_total") == 0


def test_linkerd_sidecar_mode_sets_dst_override_and_strips_the_clients(env: Env) -> None:
    evil = {"l5d-dst-override": "admin.kube-system.svc.cluster.local:443"}
    r = env.get("/l5d-sidecar/", evil)
    assert r.status == 200
    assert r.headers["x-seen-dst-override"] == "cart.shop.svc.cluster.local:8080"
    # Any other route strips the client's copy: the gateway is no open relay.
    r = env.get("/plain/", evil)
    assert r.status == 200
    assert r.headers.get("x-seen-dst-override", "") == ""


# -- Consul -------------------------------------------------------------------------


def test_consul_reaches_the_sidecar_with_an_allowed_identity(env: Env) -> None:
    r = env.get("/consul/")
    assert r.status == 200, r
    assert r.headers["x-mesh-sidecar"] == "consul"
    assert r.headers["x-mesh-peer"] == f"spiffe://{env.consul_td}/ns/default/dc/dc1/svc/meshbridge"


def test_consul_identity_without_intention_is_denied(env: Env) -> None:
    before = env.stat("consul", "rbac.denied", "sidecar_consul")
    assert env.get("/consul-denied/").status == 503
    assert env.stat("consul", "rbac.denied", "sidecar_consul") > before


def test_consul_certificate_from_another_ca_is_refused(env: Env) -> None:
    before = env.stat("consul", "ssl.fail_verify_error", "listener.")
    assert env.get("/consul-rogue/").status == 503
    assert env.stat("consul", "ssl.fail_verify_error", "listener.") > before
