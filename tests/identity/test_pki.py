"""Keys, CSRs, the local CA, chain validation and expiry parsing."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.errors import IdentityError
from bridge.identity import pki
from bridge.model.secrets import PrivateKey

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
SHORT = "spiffe://cluster.local/ns/a/sa/b"
CONSUL_ID = "spiffe://td/ns/default/dc/dc1/svc/meshbridge"
LINKERD_ID = "web-service-account.production.serviceaccount.identity.linkerd.cluster.local"


def test_keys_are_p256_by_default_and_never_print() -> None:
    key = pki.generate_key()
    assert isinstance(key, PrivateKey)
    loaded = pki.load_key(key)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.curve.name == "secp256r1"
    assert "PRIVATE" not in repr(key) + str(key) + f"{key}"
    assert repr(key) == "PrivateKey([redacted])"


def test_rsa_2048_on_request() -> None:
    loaded = pki.load_key(pki.generate_key(pki.KeyKind.RSA_2048))
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.key_size == 2048


def test_unreadable_key_error_does_not_quote_it() -> None:
    with pytest.raises(IdentityError) as err:
        pki.load_key(
            PrivateKey(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
        )
    assert "c2VjcmV0" not in str(err.value)


@pytest.mark.parametrize(
    ("uris", "dns", "cn", "want_cn"),
    [
        pytest.param([SHORT], [], None, SHORT, id="short-uri-cn"),
        pytest.param([], [LINKERD_ID], None, None, id="long-name-no-cn"),
        pytest.param([], ["short.example"], "", None, id="cn-forced-empty"),
        pytest.param([CONSUL_ID], [], "gw", "gw", id="explicit-cn"),
    ],
)
def test_csr_sans_and_common_name(
    uris: list[str], dns: list[str], cn: str | None, want_cn: str | None
) -> None:
    csr = pki.make_csr(pki.generate_key(), uri_sans=uris, dns_sans=dns, common_name=cn)
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == uris
    assert san.get_values_for_type(x509.DNSName) == dns
    cns = [a.value for a in csr.subject]
    assert cns == ([want_cn] if want_cn else [])


def test_linkerd_csr_is_der_with_one_dns_san_and_empty_subject() -> None:
    der = pki.linkerd_csr(pki.generate_key(), LINKERD_ID)
    csr = x509.load_der_x509_csr(der)
    assert len(csr.subject) == 0
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(LINKERD_ID)]
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)


def test_csr_needs_a_san_and_a_short_cn() -> None:
    with pytest.raises(IdentityError, match="at least one"):
        pki.make_csr(pki.generate_key())
    with pytest.raises(IdentityError, match="64"):
        pki.make_csr(pki.generate_key(), dns_sans=["a"], common_name="x" * 65)


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "with-intermediate"])
def test_issued_leaf_validates_and_reports_window(intermediate: bool) -> None:
    ca = pki.LocalCA(now=NOW, intermediate=intermediate)
    leaf = ca.issue(
        now=NOW, validity=dt.timedelta(hours=24), uri_sans=["spiffe://cluster.local/ns/x/sa/y"]
    )
    info = pki.validate_chain(leaf.cert_chain_pem, ca.root_pem, NOW + dt.timedelta(hours=1))
    assert info.uri_sans == ("spiffe://cluster.local/ns/x/sa/y",)
    assert info.not_before == NOW
    assert info.not_after == NOW + dt.timedelta(hours=24)
    assert info.lifetime == dt.timedelta(hours=24)
    assert pki.key_matches_cert(leaf.private_key, pki.load_pem_chain(leaf.cert_chain_pem)[0])
    assert len(pki.load_pem_chain(leaf.cert_chain_pem)) == (2 if intermediate else 1)


def test_chain_with_trailing_root_validates() -> None:
    # istiod's cert_chain ends with the root.
    ca = pki.LocalCA(now=NOW, intermediate=True)
    leaf = ca.issue(now=NOW, dns_sans=["a.b"])
    pki.validate_chain(leaf.cert_chain_pem + ca.root_pem, ca.root_pem, NOW)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        pytest.param(dt.timedelta(hours=25), "leaf expired at 2030-01-02T12:00:00Z", id="expired"),
        pytest.param(-dt.timedelta(hours=1), "not valid before", id="not-yet-valid"),
    ],
)
def test_validity_window_enforced(offset: dt.timedelta, message: str) -> None:
    ca = pki.LocalCA(now=NOW)
    leaf = ca.issue(now=NOW, validity=dt.timedelta(hours=24), dns_sans=["a"])
    with pytest.raises(IdentityError, match=message):
        pki.validate_chain(leaf.cert_chain_pem, ca.root_pem, NOW + offset)


def test_chain_to_another_root_is_rejected() -> None:
    ca, other = pki.LocalCA(now=NOW), pki.LocalCA(now=NOW, name="other root")
    leaf = ca.issue(now=NOW, dns_sans=["a"])
    with pytest.raises(IdentityError, match="does not lead to any root"):
        pki.validate_chain(leaf.cert_chain_pem, other.root_pem, NOW)
    # A bundle holding both roots (mid root rotation) accepts it.
    pki.validate_chain(leaf.cert_chain_pem, other.root_pem + ca.root_pem, NOW)


def test_missing_intermediate_is_rejected() -> None:
    ca = pki.LocalCA(now=NOW, intermediate=True)
    leaf = ca.issue(now=NOW, dns_sans=["a"])
    with pytest.raises(IdentityError, match="does not lead"):
        pki.validate_chain(leaf.leaf_pem, ca.root_pem, NOW)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(IdentityError, match="trust bundle"):
        pki.validate_chain(pki.LocalCA(now=NOW).root_pem, "not pem", NOW)


def test_key_mismatch_detected() -> None:
    ca = pki.LocalCA(now=NOW)
    leaf = ca.issue(now=NOW, dns_sans=["a"])
    cert = pki.load_pem_chain(leaf.cert_chain_pem)[0]
    assert not pki.key_matches_cert(pki.generate_key(), cert)


def test_sign_csr_takes_sans_from_the_ca_when_told() -> None:
    # An istiod-like CA ignores the CSR's SAN and uses the token's identity.
    ca = pki.LocalCA(now=NOW)
    csr = pki.make_csr(pki.generate_key(), uri_sans=["spiffe://evil/ns/x/sa/admin"])
    chain = ca.sign_csr(
        csr, now=NOW, uri_sans=["spiffe://cluster.local/ns/edge/sa/meshbridge"], dns_sans=[]
    )
    assert pki.cert_info(chain[0]).uri_sans == ("spiffe://cluster.local/ns/edge/sa/meshbridge",)
    assert chain[-1] == ca.root
    same = ca.sign_csr(csr, now=NOW)
    assert pki.cert_info(same[0]).uri_sans == ("spiffe://evil/ns/x/sa/admin",)


def test_der_round_trip() -> None:
    ca = pki.LocalCA(now=NOW)
    der = ca.root.public_bytes(serialization.Encoding.DER)
    assert pki.der_to_pem(der) == ca.root_pem
    with pytest.raises(IdentityError):
        pki.der_to_pem(b"junk")
