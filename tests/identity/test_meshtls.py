"""Each mesh's upstream TLS and route headers, exactly as DESIGN.md §5 says."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.model.diagnostics import Severity
from bridge.model.ir import (
    IdentitySecret,
    Mesh,
    Protocol,
    SanMatch,
    Secret,
    SecretName,
    TrustSecret,
    UpstreamTls,
)
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.secrets import PrivateKey
from bridge.model.settings import ConsulSettings, LinkerdSettings, ResolveSettings
from bridge.resolve.meshtls import (
    EDGE_HEADERS_TO_REMOVE,
    MeshTarget,
    MeshTls,
    consul_gateway_spiffe,
    mesh_tls,
)

REF = ObjectRef(Kind.SERVICE, "shop", "cart")


def _secrets(*meshes: str, consul_td: str = "11111111-2222.consul") -> dict[SecretName, Secret]:
    out: dict[SecretName, Secret] = {}
    for m in meshes:
        out[SecretName(f"identity/{m}")] = IdentitySecret(
            SecretName(f"identity/{m}"), "CHAIN", PrivateKey(b"k")
        )
        out[SecretName(f"trust/{m}")] = TrustSecret(
            SecretName(f"trust/{m}"), "ROOTS", trust_domain=consul_td if m == "consul" else ""
        )
    return out


ALL = _secrets("istio", "linkerd", "consul")
SETTINGS = ResolveSettings()


def target(*sas: str, **kw: object) -> MeshTarget:
    return MeshTarget(
        ref=REF, namespace="shop", service="cart", port=8080, service_accounts=sas, **kw
    )  # type: ignore[arg-type]


ISTIO_TLS = UpstreamTls(
    sni="outbound_.8080_._.cart.shop.svc.cluster.local",
    verify_sans=(SanMatch("URI", "spiffe://cluster.local/ns/shop/sa/cart"),),
    alpn=("istio-http/1.1", "istio", "http/1.1"),
    min_version="TLSv1_2",
    max_version="TLSv1_3",
    client_identity=SecretName("identity/istio"),
    trust_bundle=SecretName("trust/istio"),
)
L5D_NAME = "cart.shop.serviceaccount.identity.linkerd.cluster.local"
LINKERD_TLS = UpstreamTls(
    sni=L5D_NAME,
    verify_sans=(SanMatch("DNS", L5D_NAME),),
    alpn=(),
    min_version="TLSv1_3",
    max_version="TLSv1_3",
    client_identity=SecretName("identity/linkerd"),
    trust_bundle=SecretName("trust/linkerd"),
)
CONSUL_TLS = UpstreamTls(
    sni="cart.default.dc1.internal.11111111-2222.consul",
    verify_sans=(SanMatch("URI", "spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/cart"),),
    alpn=(),
    min_version="TLSv1_2",
    max_version="TLSv1_3",
    client_identity=SecretName("identity/consul"),
    trust_bundle=SecretName("trust/consul"),
)


def _replace(tls: UpstreamTls, **kw: object) -> UpstreamTls:
    return replace(tls, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mesh", "tgt", "settings", "want"),
    [
        pytest.param(Mesh.NONE, target("cart"), SETTINGS, MeshTls(), id="none-plaintext"),
        pytest.param(
            Mesh.ISTIO, target("cart", "cart"), SETTINGS, MeshTls(tls=ISTIO_TLS), id="istio"
        ),
        pytest.param(
            Mesh.ISTIO,
            target("cart", "cart-v2", "cart"),
            SETTINGS,
            MeshTls(
                tls=_replace(
                    ISTIO_TLS,
                    verify_sans=(
                        SanMatch("URI", "spiffe://cluster.local/ns/shop/sa/cart"),
                        SanMatch("URI", "spiffe://cluster.local/ns/shop/sa/cart-v2"),
                    ),
                )
            ),
            id="istio-several-sas-several-exact-matchers",
        ),
        pytest.param(
            Mesh.ISTIO,
            target("cart", protocol=Protocol.HTTP2),
            SETTINGS,
            MeshTls(tls=_replace(ISTIO_TLS, alpn=("istio-h2", "istio", "h2"))),
            id="istio-h2",
        ),
        pytest.param(
            Mesh.ISTIO,
            target("cart"),
            ResolveSettings(
                cluster_domain="corp.example", istio=type(SETTINGS.istio)("td.example")
            ),
            MeshTls(
                tls=_replace(
                    ISTIO_TLS,
                    sni="outbound_.8080_._.cart.shop.svc.corp.example",
                    verify_sans=(SanMatch("URI", "spiffe://td.example/ns/shop/sa/cart"),),
                )
            ),
            id="istio-custom-domain-and-trust-domain",
        ),
        pytest.param(
            Mesh.LINKERD, target("cart"), SETTINGS, MeshTls(tls=LINKERD_TLS), id="linkerd-direct"
        ),
        pytest.param(
            Mesh.LINKERD,
            target("cart"),
            ResolveSettings(linkerd=LinkerdSettings(namespace="l5d", trust_domain="prod.local")),
            MeshTls(
                tls=_replace(
                    LINKERD_TLS,
                    sni="cart.shop.serviceaccount.identity.l5d.prod.local",
                    verify_sans=(
                        SanMatch("DNS", "cart.shop.serviceaccount.identity.l5d.prod.local"),
                    ),
                )
            ),
            id="linkerd-custom-namespace-and-trust-domain",
        ),
        pytest.param(
            Mesh.LINKERD,
            target(),
            ResolveSettings(linkerd=LinkerdSettings(mode="sidecar")),
            MeshTls(headers_to_add=(("l5d-dst-override", "cart.shop.svc.cluster.local:8080"),)),
            id="linkerd-sidecar-plaintext-with-override",
        ),
        pytest.param(Mesh.CONSUL, target(), SETTINGS, MeshTls(tls=CONSUL_TLS), id="consul"),
        pytest.param(
            Mesh.CONSUL,
            target(consul_service="cart-api", consul_datacenter="eu1"),
            SETTINGS,
            MeshTls(
                tls=_replace(
                    CONSUL_TLS,
                    sni="cart-api.default.eu1.internal.11111111-2222.consul",
                    verify_sans=(
                        SanMatch(
                            "URI", "spiffe://11111111-2222.consul/ns/default/dc/eu1/svc/cart-api"
                        ),
                    ),
                )
            ),
            id="consul-service-name-and-datacenter",
        ),
        pytest.param(
            Mesh.CONSUL,
            target(),
            ResolveSettings(consul=ConsulSettings(namespace="team", partition="ap1")),
            MeshTls(
                tls=_replace(
                    CONSUL_TLS,
                    sni="cart.team.ap1.dc1.internal-v1.11111111-2222.consul",
                    verify_sans=(
                        SanMatch(
                            "URI", "spiffe://11111111-2222.consul/ap/ap1/ns/team/dc/dc1/svc/cart"
                        ),
                    ),
                )
            ),
            id="consul-partition-form",
        ),
        pytest.param(
            Mesh.CONSUL,
            target(),
            ResolveSettings(consul=ConsulSettings(partition="default")),
            MeshTls(tls=CONSUL_TLS),
            id="consul-default-partition-is-the-plain-form",
        ),
    ],
)
def test_mesh_tls(mesh: Mesh, tgt: MeshTarget, settings: ResolveSettings, want: MeshTls) -> None:
    got = mesh_tls(mesh, tgt, settings, ALL)
    assert got == want
    assert got.ok
    if got.tls is not None:
        assert "istio-peer-exchange" not in got.tls.alpn


@pytest.mark.parametrize(
    ("mesh", "tgt", "secrets", "codes"),
    [
        pytest.param(
            Mesh.ISTIO,
            target("cart"),
            {},
            ["mesh.identity.missing", "mesh.trust.missing"],
            id="istio-no-identity",
        ),
        pytest.param(
            Mesh.ISTIO, target(), ALL, ["mesh.istio.no-service-account"], id="istio-no-sa"
        ),
        pytest.param(
            Mesh.LINKERD, target(), ALL, ["mesh.linkerd.no-service-account"], id="linkerd-no-sa"
        ),
        pytest.param(
            Mesh.LINKERD,
            target("a"),
            _secrets("istio"),
            ["mesh.identity.missing", "mesh.trust.missing"],
            id="linkerd-no-identity",
        ),
        pytest.param(
            Mesh.CONSUL,
            target(),
            _secrets("consul", consul_td=""),
            ["mesh.consul.no-trust-domain"],
            id="consul-no-trust-domain",
        ),
        pytest.param(
            Mesh.CONSUL,
            target(),
            _secrets("istio"),
            ["mesh.identity.missing", "mesh.trust.missing"],
            id="consul-no-roots",
        ),
    ],
)
def test_errors_leave_no_tls(
    mesh: Mesh, tgt: MeshTarget, secrets: dict[SecretName, Secret], codes: list[str]
) -> None:
    got = mesh_tls(mesh, tgt, SETTINGS, secrets)
    assert got.tls is None and not got.ok
    assert [d.code for d in got.diagnostics] == codes
    assert all(d.ref == REF and d.severity is Severity.ERROR and d.fix for d in got.diagnostics)


def test_no_identity_message_says_what_to_configure() -> None:
    (d, _) = mesh_tls(Mesh.ISTIO, target("cart"), SETTINGS, {}).diagnostics
    assert "no identity for mesh istio yet" in d.message
    assert "istio.identity" in d.fix


def test_linkerd_several_accounts_uses_the_majority_and_warns() -> None:
    got = mesh_tls(Mesh.LINKERD, target("old", "new", "new"), SETTINGS, ALL)
    assert got.ok and got.tls is not None
    assert got.tls.sni == "new.shop.serviceaccount.identity.linkerd.cluster.local"
    (warning,) = got.diagnostics
    assert warning.severity is Severity.WARNING
    assert warning.code == "mesh.linkerd.several-service-accounts"
    assert "old" in warning.message
    # Ties go by name, so the result is deterministic.
    tie = mesh_tls(Mesh.LINKERD, target("b", "a"), SETTINGS, ALL)
    assert tie.tls is not None and tie.tls.sni.startswith("a.shop.")


def test_sidecar_mode_needs_no_secrets() -> None:
    got = mesh_tls(
        Mesh.LINKERD, target(), ResolveSettings(linkerd=LinkerdSettings(mode="sidecar")), {}
    )
    assert got.ok and got.tls is None


def test_edge_strips_client_dst_override() -> None:
    assert EDGE_HEADERS_TO_REMOVE == ("l5d-dst-override",)


def test_gateway_spiffe_in_consul() -> None:
    assert (
        consul_gateway_spiffe("td.consul", ConsulSettings())
        == "spiffe://td.consul/ns/default/dc/dc1/svc/meshbridge"
    )


def test_auto_must_be_resolved_first() -> None:
    with pytest.raises(ValueError, match="concrete mesh"):
        mesh_tls(Mesh.AUTO, target("a"), SETTINGS, ALL)
