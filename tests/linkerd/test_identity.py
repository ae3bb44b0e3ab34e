"""The Linkerd identity provider against the stand-in: TLS 1.3 without ALPN, DER, CSR rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc import aio as grpc_aio
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from adapters.linkerd import proto as identity_pb
from adapters.linkerd.identity import LinkerdIdentitySettings, client_tls
from bridge.identity import names, pki
from bridge.model.diagnostics import Severity
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.store import Store
from tests.linkerd.conftest import GATEWAY_ID, anchors_config_map, make_provider, running
from tests.standins.linkerd_identity import LinkerdIdentity
from tests.standins.sa_tokens import FakeTokenRequest
from tests.support.wait import async_wait_for

pytestmark = pytest.mark.e2e  # the stand-in's proxy is a real Envoy


def served(store: Store) -> tuple[IdentitySecret | None, str]:
    world, _ = store.take()
    ident = world.mesh_secrets.get(names.identity_secret(Mesh.LINKERD))
    trust = world.mesh_secrets.get(names.trust_secret(Mesh.LINKERD))
    return (
        ident if isinstance(ident, IdentitySecret) else None,
        trust.ca_bundle_pem if isinstance(trust, TrustSecret) else "",
    )


async def test_certificate_as_the_linkerd_proxy_asks(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity
) -> None:
    provider = make_provider(store, tokens, li)
    provider.publish(await provider._fetch_checked())

    call = li.calls[-1]
    assert call.status == "OK"
    # DER CSR: P-256, exactly one DNS SAN equal to the identity, no CN.
    assert call.identity == GATEWAY_ID
    assert call.csr_dns_sans == (GATEWAY_ID,)
    assert call.csr_common_name == ""
    assert call.csr_key == "ec-secp256r1"
    assert tokens.issued == ["identity.l5d.io"]

    ident, trust = served(store)
    assert ident is not None
    chain = pki.load_pem_chain(ident.cert_chain_pem)
    # Leaf then the issuer (intermediate), converted from DER; the anchor is not sent.
    assert [c.serial_number for c in chain] == [
        call.issued_serial,
        li.issuer.intermediates[0].serial_number,
    ]
    assert pki.cert_info(chain[0]).dns_sans == (GATEWAY_ID,)
    assert trust == li.bundle_pem
    assert provider.status().identity == GATEWAY_ID


async def test_no_alpn_is_negotiated_and_grpcio_cannot_connect(li: LinkerdIdentity) -> None:
    """The quirk the stand-in reproduces, and the reason the provider does not use grpcio."""
    ctx = client_tls(li.bundle_pem)
    ctx.set_alpn_protocols(["h2"])  # offered, and not selected
    _, writer = await asyncio.open_connection(
        "127.0.0.1", li.port, ssl=ctx, server_hostname=li.service_name
    )
    tls = writer.get_extra_info("ssl_object")
    assert tls.selected_alpn_protocol() is None
    assert tls.version() == "TLSv1.3"
    writer.close()
    await writer.wait_closed()

    creds = grpc.ssl_channel_credentials(root_certificates=li.bundle_pem.encode())
    opts = [("grpc.ssl_target_name_override", li.service_name)]
    async with grpc_aio.secure_channel(li.address, creds, options=opts) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as err:
            await ch.unary_unary(identity_pb.CERTIFY)(b"", timeout=5)
    assert "missing selected ALPN property" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("max_version", "sni"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, None, id="tls-1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, "linkerd-identity-headless.linkerd.svc", id="sni"),
    ],
)
async def test_tls_12_and_other_names_are_refused(
    li: LinkerdIdentity, max_version: ssl.TLSVersion, sni: str | None
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = max_version
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", li.port, ssl=ctx, server_hostname=sni or li.service_name
        )
        writer.close()


def _csr(
    *,
    dns: list[str],
    cn: str = "",
    uris: list[str] | None = None,
    key: Any = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris or []]
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)] if cn else [])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


async def test_the_service_enforces_linkerds_csr_rules(
    li: LinkerdIdentity, tokens: FakeTokenRequest
) -> None:
    other = li.identity_name("shop", "cart")
    token = tokens.issue("edge", "meshbridge", ["identity.l5d.io"]).encode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    BAD, REFUSED = Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION
    cases: list[tuple[str, str, bytes, bytes, Status, str]] = [
        ("accepted", GATEWAY_ID, token, _csr(dns=[GATEWAY_ID]), Status.OK, ""),
        # Linkerd accepts a CN equal to the identity (meshbridge never sends one).
        ("cn-identity", GATEWAY_ID, token, _csr(dns=[GATEWAY_ID], cn=GATEWAY_ID), Status.OK, ""),
        (
            "cn",
            GATEWAY_ID,
            token,
            _csr(dns=[GATEWAY_ID], cn="meshbridge"),
            BAD,
            "invalid CommonName",
        ),
        ("two-sans", GATEWAY_ID, token, _csr(dns=[GATEWAY_ID, other]), BAD, "exactly one DNSName"),
        (
            "uri",
            GATEWAY_ID,
            token,
            _csr(dns=[GATEWAY_ID], uris=["spiffe://x/y"]),
            BAD,
            "cannot validate URIs",
        ),
        ("rsa", GATEWAY_ID, token, _csr(dns=[GATEWAY_ID], key=rsa_key), BAD, "P-256"),
        (
            "san-mismatch",
            GATEWAY_ID,
            token,
            _csr(dns=[other]),
            BAD,
            "does not match requested identity",
        ),
        ("not-der", GATEWAY_ID, token, b"-----BEGIN", BAD, "malformed"),
        ("no-token", GATEWAY_ID, b"", _csr(dns=[GATEWAY_ID]), BAD, "missing token"),
        (
            "other-identity",
            other,
            token,
            _csr(dns=[other]),
            REFUSED,
            "did not match provided token",
        ),
    ]
    channel = Channel(
        "127.0.0.1",
        li.port,
        ssl=client_tls(li.bundle_pem),
        config=Configuration(ssl_target_name_override=li.service_name),
    )
    method = UnaryUnaryMethod[object, object](
        channel, identity_pb.CERTIFY, identity_pb.CertifyRequest, identity_pb.CertifyResponse
    )
    try:
        for name, identity, tok, der, status, text in cases:
            request = identity_pb.certify_request(identity, tok, der)
            if status is Status.OK:
                reply = identity_pb.read_response(await method(request, timeout=5))
                leaf = x509.load_der_x509_certificate(reply.leaf_der)
                assert pki.cert_info(leaf).dns_sans == (GATEWAY_ID,), name
                assert reply.valid_until == leaf.not_valid_after_utc, name
                continue
            with pytest.raises(GRPCError) as err:
                await method(request, timeout=5)
            assert (err.value.status, name) == (status, name)
            assert text in (err.value.message or ""), (name, err.value.message)
    finally:
        channel.close()


async def test_our_csr_passes_for_names_longer_than_a_common_name_allows(
    li: LinkerdIdentity,
) -> None:
    long_sa = "a-service-account-name-that-is-quite-long-indeed"
    tokens = FakeTokenRequest(namespace="edge-gateways", service_account=long_sa, key=li.tokens.key)
    store = Store()
    store.upsert("kubernetes", anchors_config_map(li.bundle_pem))
    m = await make_provider(store, tokens, li).fetch()
    assert len(m.identity) > 64
    assert li.calls[-1].csr_common_name == "" and li.calls[-1].csr_dns_sans == (m.identity,)


async def test_refused_token_is_a_diagnostic_naming_audience_and_account(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity
) -> None:
    tokens.audience_override = "istio-ca"
    provider = make_provider(store, tokens, li)
    async with running(provider):
        await async_wait_for(
            lambda: any(d.code == "linkerd.token_rejected" for d in provider.diagnostics),
            timeout=10,
            what="token diagnostic",
        )
    diag = next(d for d in provider.diagnostics if d.code == "linkerd.token_rejected")
    assert "audience identity.l5d.io" in diag.message
    assert "edge/meshbridge" in diag.message and "edge/meshbridge" in diag.fix
    assert "FAILED_PRECONDITION" in diag.message
    assert diag.severity is Severity.ERROR
    assert "eyJ" not in str(provider.diagnostics)
    world, _ = store.take()
    assert diag in world.source_diagnostics


async def test_refreshes_at_70_percent_of_the_remaining_time(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity
) -> None:
    li.lifetime = dt.timedelta(seconds=4)
    provider = make_provider(store, tokens, li)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        due = provider.next_renewal()
        assert first is not None and due is not None
        # Due 70% of the remaining time after arrival (≤ 5% earlier by jitter); the
        # leaf's not_after is truncated to the second, so allow one second of slack.
        arrived_latest = due - dt.timedelta(seconds=0.7 * 4 * 0.95 - 1)
        assert first.not_before - dt.timedelta(seconds=1) <= arrived_latest
        assert due < first.not_before + dt.timedelta(seconds=0.7 * 4 + 1)
        await async_wait_for(lambda: provider.current is not first, timeout=10, what="refresh")


@pytest.mark.parametrize("kind", ["refuse", "unavailable"])
async def test_outage_keeps_the_current_certificate_and_recovers(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity, kind: str
) -> None:
    li.lifetime = dt.timedelta(seconds=6)
    provider = make_provider(store, tokens, li)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        before, _ = served(store)
        await li.outage(kind)
        await async_wait_for(lambda: provider.rotator.failures >= 1, timeout=10, what="failure")
        assert "unreachable" in provider.error() or "UNAVAILABLE" in provider.error()
        assert provider.current is first and served(store)[0] == before
        assert all(d.severity is not Severity.ERROR for d in provider.diagnostics)
        await li.recover()
        await async_wait_for(lambda: provider.current is not first, timeout=15, what="renewal")
        assert provider.rotator.failures == 0


async def test_anchor_rotation_publishes_both_then_renews_under_the_new(
    store: Store, tokens: FakeTokenRequest, li: LinkerdIdentity
) -> None:
    provider = make_provider(store, tokens, li)
    async with running(provider):
        await async_wait_for(lambda: provider.current is not None, timeout=10, what="first")
        first = provider.current
        a1 = li.anchors[0]
        a2 = li.add_anchor()
        store.upsert("kubernetes", anchors_config_map(li.bundle_pem))
        await async_wait_for(lambda: a2.root_pem in served(store)[1], timeout=5, what="A1+A2")
        assert a1.root_pem in served(store)[1] and provider.current is first
        li.issue_from_newest()
        li.drop_oldest_anchor()
        store.upsert("kubernetes", anchors_config_map(li.bundle_pem))
        await async_wait_for(lambda: provider.current is not first, timeout=10, what="renewal")
    cur = provider.current
    assert cur is not None
    assert cur.leaf.issuer == a2.intermediates[0].subject.rfc4514_string()
    assert served(store)[1] == a2.root_pem


def test_default_address_and_service_name() -> None:
    s = LinkerdIdentitySettings(namespace="linkerd", trust_domain="example.org")
    assert s.target == ("linkerd-identity-headless.linkerd.svc.cluster.local", 8080)
    assert s.service_name == (
        "linkerd-identity.linkerd.serviceaccount.identity.linkerd.example.org"
    )
