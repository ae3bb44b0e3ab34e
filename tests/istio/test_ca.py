"""The Istio CA provider against the istiod stand-in, over real gRPC and TLS sockets."""

from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest
from cryptography import x509
from grpc import aio as grpc_aio

from adapters.istio import proto as istioca
from adapters.istio.ca import IstioCaProvider, IstioRoots
from bridge.errors import IdentityError
from bridge.identity import names, pki
from bridge.model.diagnostics import Severity
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.store import Store
from tests.istio.conftest import (
    GATEWAY_NS,
    GATEWAY_SPIFFE,
    make_provider,
    root_config_map,
    running,
)
from tests.standins.istiod_ca import ISTIOD_NAME, IstiodCa
from tests.standins.sa_tokens import FakeTokenRequest
from tests.support.wait import async_wait_for


def served_identity(store: Store) -> IdentitySecret | None:
    world, _ = store.take()
    secret = world.mesh_secrets.get(names.identity_secret(Mesh.ISTIO))
    return secret if isinstance(secret, IdentitySecret) else None


def served_trust(store: Store) -> str:
    world, _ = store.take()
    secret = world.mesh_secrets.get(names.trust_secret(Mesh.ISTIO))
    return secret.ca_bundle_pem if isinstance(secret, TrustSecret) else ""


async def test_certificate_from_istiod_as_istio_agent_asks(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    provider = make_provider(store, tokens, ca, validity_s=7200)
    m = await provider._fetch_checked()
    provider.publish(m)

    call = ca.calls[-1]
    assert call.status == "OK"
    assert call.metadata["authorization"] == "<bearer>"
    assert call.metadata["clusterid"] == "Kubernetes"
    assert call.validity_asked == 7200 and call.ttl_s == 7200
    # The CSR: one URI SAN, the SPIFFE ID of the token's account; no CN, no DNS SAN.
    assert call.csr_uri_sans == (GATEWAY_SPIFFE,)
    assert call.csr_dns_sans == () and call.csr_common_name == ""
    assert tokens.issued == ["istio-ca"]

    served = served_identity(store)
    assert served is not None
    chain = pki.load_pem_chain(served.cert_chain_pem)
    # The root istiod appends is not served: peers have it.
    assert len(chain) == 1 and chain[0].serial_number == call.issued_serial
    assert pki.cert_info(chain[0]).uri_sans == (GATEWAY_SPIFFE,)
    assert pki.key_matches_cert(served.private_key, chain[0])
    assert served_trust(store) == ca.roots_pem
    assert m.trust_domain == "cluster.local"
    assert provider.status().identity == GATEWAY_SPIFFE


async def test_identity_comes_from_the_token_not_the_config(store: Store, ca: IstiodCa) -> None:
    # The config names another account; istiod certifies the token's, and so do we.
    tokens = FakeTokenRequest(namespace="gw", service_account="edge-proxy", key=ca.tokens.key)
    ca.tokens = tokens
    provider = make_provider(store, tokens, ca)
    m = await provider.fetch()
    assert m.identity == "spiffe://cluster.local/ns/gw/sa/edge-proxy"
    assert ca.calls[-1].csr_uri_sans == (m.identity,)


async def test_istiod_ignores_the_csr_san(ca: IstiodCa, tokens: FakeTokenRequest) -> None:
    """The stand-in, as istiod: a CSR asking for another identity gets the token's."""
    key = pki.generate_key()
    csr = pki.csr_pem(
        pki.make_csr(key, uri_sans=["spiffe://cluster.local/ns/kube-system/sa/admin"])
    )
    token = tokens.issue(GATEWAY_NS, "meshbridge", ["istio-ca"])
    creds = grpc.ssl_channel_credentials(root_certificates=ca.roots_pem.encode())
    opts = [("grpc.ssl_target_name_override", ISTIOD_NAME)]
    async with grpc_aio.secure_channel(ca.address, creds, options=opts) as ch:
        data = await ch.unary_unary(istioca.CREATE_CERTIFICATE)(
            istioca.encode_request(csr, 600),
            metadata=(("authorization", f"Bearer {token}"), ("clusterid", "Kubernetes")),
            timeout=5,
        )
    chain = istioca.decode_response(data)
    assert len(chain) == 2  # leaf first, root last
    assert pki.leaf_info(chain[0]).uri_sans == (GATEWAY_SPIFFE,)
    assert chain[1].strip() == ca.cas[0].root_pem.strip()


async def test_istiod_serving_name_needs_the_override(ca: IstiodCa) -> None:
    """Dialed by address without the override, istiod's certificate does not verify."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca.roots_pem.encode())
    async with grpc_aio.secure_channel(ca.address, creds) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as err:
            await ch.unary_unary(istioca.CREATE_CERTIFICATE)(b"", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ca.calls == []


@pytest.mark.parametrize(
    ("audience", "cluster_id"),
    [
        pytest.param("kubernetes.default.svc", "Kubernetes", id="wrong-audience"),
        pytest.param(None, "other-cluster", id="unknown-cluster-id"),
    ],
)
async def test_rejected_token_is_a_diagnostic_naming_audience_and_account(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa, audience: str | None, cluster_id: str
) -> None:
    tokens.audience_override = audience
    provider = make_provider(store, tokens, ca, cluster_id=cluster_id)
    async with running(provider):
        await async_wait_for(
            lambda: any(d.code == "istio.token_rejected" for d in provider.diagnostics),
            timeout=10,
            what="token diagnostic",
        )
    diag = next(d for d in provider.diagnostics if d.code == "istio.token_rejected")
    assert "audience istio-ca" in diag.message
    assert "edge/meshbridge" in diag.message and "edge/meshbridge" in diag.fix
    assert "UNAUTHENTICATED" in diag.message
    assert diag.severity is Severity.ERROR  # there is no certificate to fall back on
    assert ca.calls[-1].status == "UNAUTHENTICATED"
    world, _ = store.take()
    assert diag in world.source_diagnostics
    assert "eyJ" not in str(provider.diagnostics)  # no token in what is shown

    # Fixed: the next renewal succeeds and the diagnostic goes.
    tokens.audience_override = None
    provider.settings = dataclasses.replace(provider.settings, cluster_id="Kubernetes")
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="cert")
    assert provider.diagnostics == ()


async def test_renews_at_half_the_lifetime(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    provider = make_provider(store, tokens, ca, validity_s=4)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        assert first is not None
        due = provider.next_renewal()
        assert due is not None
        half = first.not_before + (first.not_after - first.not_before) * 0.5
        # Renewal at 50% of the lifetime, moved earlier by at most 5% jitter.
        assert half - dt.timedelta(seconds=0.25) <= due <= half + dt.timedelta(seconds=0.05)
        await async_wait_for(
            lambda: provider.current is not first, timeout=10, what="renewed certificate"
        )
    assert len([c for c in ca.calls if c.status == "OK"]) >= 2


async def test_outage_keeps_the_current_certificate_and_recovers(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    provider = make_provider(store, tokens, ca, validity_s=4)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        served = served_identity(store)
        await ca.outage()
        await async_wait_for(lambda: provider.rotator.failures >= 2, timeout=10, what="failures")
        assert "unreachable" in provider.error() and "UNAVAILABLE" in provider.error()
        # Still serving the certificate it had; no diagnostic while it has life left.
        assert provider.current is first and served_identity(store) == served
        assert all(d.severity is not Severity.ERROR for d in provider.diagnostics)
        await ca.recover()
        await async_wait_for(
            lambda: provider.current is not first, timeout=10, what="renewal after outage"
        )
        assert provider.rotator.failures == 0 and provider.error() == ""


async def test_roots_that_arrive_late_start_a_renewal_at_once(
    tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    store = Store()  # no istio-ca-root-cert yet (the cluster source has not synced)
    provider = make_provider(store, tokens, ca)
    provider.rotator.policy = provider.rotator.policy.__class__(backoff_initial=30.0)
    async with running(provider):
        await async_wait_for(lambda: provider.diagnostics, timeout=10, what="diagnostic")
        assert "ConfigMap edge/istio-ca-root-cert" in provider.diagnostics[0].message
        assert provider.synced  # a CA without roots does not hold back other meshes
        store.upsert("kubernetes", root_config_map(ca.roots_pem))
        # Without the roots watch this would wait out a 30 s backoff.
        await async_wait_for(lambda: provider.current is not None, timeout=5, what="cert")
    assert provider.diagnostics == ()


async def test_root_rotation_publishes_both_roots_then_renews_under_the_new(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    provider = make_provider(store, tokens, ca, validity_s=3600)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        assert first is not None
        r1 = ca.cas[0]
        r2 = ca.add_root()
        store.upsert("kubernetes", root_config_map(ca.roots_pem))
        await async_wait_for(lambda: r2.root_pem in served_trust(store), timeout=5, what="R1+R2")
        assert r1.root_pem in served_trust(store)
        assert provider.current is first  # adding a root renews nothing
        ca.sign_with_newest()  # istiod's own certificate moves to R2 as well
        ca.drop_oldest_root()
        store.upsert("kubernetes", root_config_map(ca.roots_pem))
        # The leaf (under R1) no longer chains to the bundle: renew now, not in 30 minutes.
        await async_wait_for(
            lambda: provider.current is not first, timeout=10, what="renewal under R2"
        )
    cur = provider.current
    assert cur is not None and cur.leaf.issuer == r2.root.subject.rfc4514_string()
    assert served_trust(store) == r2.root_pem


async def test_ttl_over_istiod_maximum_is_reported(
    store: Store, tokens: FakeTokenRequest, ca: IstiodCa
) -> None:
    ca.max_ttl = dt.timedelta(hours=1)
    provider = make_provider(store, tokens, ca, validity_s=7200)
    with pytest.raises(IdentityError, match=r"INVALID_ARGUMENT.*max allowed TTL"):
        await provider.fetch()


async def test_roots_from_a_file(tmp_path, tokens: FakeTokenRequest, ca: IstiodCa) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "root-cert.pem"
    path.write_text(ca.roots_pem)
    store = Store()
    provider = IstioCaProvider(
        store,
        tokens,
        IstioRoots.file(path),
        make_provider(Store(), tokens, ca).settings,
    )
    m = await provider.fetch()
    assert m.identity == GATEWAY_SPIFFE
    path.write_text("not a certificate")
    with pytest.raises(IdentityError, match=f"Istio roots \\(file {path}\\)"):
        await provider.fetch()


def test_csr_has_no_common_name_even_when_short() -> None:
    key = pki.generate_key()
    csr = pki.make_csr(key, uri_sans=["spiffe://td/ns/a/sa/b"], common_name="")
    assert csr.subject == x509.Name([])
