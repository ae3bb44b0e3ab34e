"""X.509 for the meshes: keys, CSRs, a local CA, chain validation, expiry.

What every mesh identity needs, and nothing mesh-specific beyond the SAN
rules: ECDSA P-256 keys made in memory (RSA 2048 where a mesh asks for it),
certificate signing requests carrying URI or DNS SANs, a small local CA (root
and optional intermediate) that tests and ``meshbridge demo`` use to play the
meshes' CAs, validation of a chain against trusted roots, and the validity
window of a certificate.

This module must not do I/O or read the clock: every time it needs is passed
in (``now``). Private keys leave it only as :class:`PrivateKey`, whose
``repr``/``str`` never show the bytes; nothing here writes keys anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.errors import IdentityError
from bridge.model.secrets import PrivateKey

# RFC 5280 caps commonName at 64 characters; mesh names (Linkerd identities,
# SPIFFE IDs) are often longer, so such a CSR carries its name in the SAN only.
MAX_COMMON_NAME = 64

_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyKind(StrEnum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"


# -- keys ----------------------------------------------------------------------


def generate_key(kind: KeyKind = KeyKind.EC_P256) -> PrivateKey:
    """A new private key, PKCS#8 PEM, in memory only."""
    key: _Key
    if kind is KeyKind.EC_P256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _wrap(key)


def _wrap(key: _Key) -> PrivateKey:
    return PrivateKey(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def load_key(key: PrivateKey) -> _Key:
    """The key object behind a :class:`PrivateKey` (PEM, PKCS#8 or traditional)."""
    try:
        loaded = serialization.load_pem_private_key(key.reveal(), password=None)
    except (ValueError, TypeError) as exc:
        # The library's message may quote the input; say only what failed.
        raise IdentityError("private key is not a readable unencrypted PEM key") from exc
    if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError(f"unsupported private key type {type(loaded).__name__}")
    return loaded


def key_matches_cert(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies the public half of ``key``."""
    mine = (
        load_key(key)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return mine == theirs


# -- CSRs ----------------------------------------------------------------------


def make_csr(
    key: PrivateKey,
    *,
    uri_sans: Sequence[str] = (),
    dns_sans: Sequence[str] = (),
    common_name: str | None = None,
) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` naming the SANs given.

    ``common_name=None`` uses the first SAN as CN when it fits in 64
    characters and leaves the subject empty otherwise; ``""`` always leaves it
    empty (Linkerd's rule).
    """
    if not uri_sans and not dns_sans:
        raise IdentityError("a CSR needs at least one URI or DNS SAN")
    if common_name is None:
        first = (list(uri_sans) + list(dns_sans))[0]
        common_name = first if len(first) <= MAX_COMMON_NAME else ""
    if len(common_name) > MAX_COMMON_NAME:
        raise IdentityError(f"common name longer than {MAX_COMMON_NAME} characters")
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri_sans]
    sans += [x509.DNSName(d) for d in dns_sans]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(load_key(key), hashes.SHA256())
    )


def linkerd_csr(key: PrivateKey, identity: str) -> bytes:
    """Linkerd's CSR, DER: empty CN, exactly one DNS SAN equal to the identity."""
    csr = make_csr(key, dns_sans=[identity], common_name="")
    return csr.public_bytes(serialization.Encoding.DER)


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# -- certificates ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What meshbridge shows and checks about one certificate."""

    subject: str
    issuer: str
    serial: int
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    is_ca: bool
    sha256: str  # hex fingerprint of the DER

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after


def load_pem_chain(pem: str | bytes, what: str = "certificate chain") -> list[x509.Certificate]:
    """Every certificate in a PEM text, in order; an error names ``what`` when none parse."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{what}: not a PEM certificate list ({exc})") from exc
    if not certs:
        raise IdentityError(f"{what}: holds no certificate")
    return certs


def der_to_pem(der: bytes) -> str:
    """One DER certificate as PEM text (Linkerd hands out DER)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"not a DER certificate ({exc})") from exc
    return cert_pem(cert)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_info(cert: x509.Certificate) -> CertInfo:
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        uri_sans=uris,
        dns_sans=dns,
        is_ca=is_ca,
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def leaf_info(chain_pem: str) -> CertInfo:
    """The first certificate of a chain, described."""
    return cert_info(load_pem_chain(chain_pem)[0])


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_chain(chain_pem: str, roots_pem: str, now: dt.datetime) -> CertInfo:
    """Check that the chain's leaf is valid at ``now`` and chains to one of the roots.

    The chain is leaf first, intermediates after (a trailing copy of the root
    is allowed, as istiod sends one). Every link's signature and validity
    window is checked. Returns the leaf's :class:`CertInfo`; raises
    :class:`IdentityError` saying which link failed.
    """
    chain = load_pem_chain(chain_pem, "certificate chain")
    roots = load_pem_chain(roots_pem, "trust bundle")
    root_der = {r.public_bytes(serialization.Encoding.DER) for r in roots}
    for i, cert in enumerate(chain):
        what = "leaf" if i == 0 else f"chain[{i}] ({cert.subject.rfc4514_string()})"
        if now < cert.not_valid_before_utc:
            raise IdentityError(f"{what} is not valid before {rfc3339(cert.not_valid_before_utc)}")
        if now >= cert.not_valid_after_utc:
            raise IdentityError(f"{what} expired at {rfc3339(cert.not_valid_after_utc)}")
        if cert.public_bytes(serialization.Encoding.DER) in root_der:
            return cert_info(chain[0])
        for root in roots:
            if _issued_by(cert, root):
                if now >= root.not_valid_after_utc:
                    raise IdentityError(
                        f"root {root.subject.rfc4514_string()} expired at "
                        f"{rfc3339(root.not_valid_after_utc)}"
                    )
                return cert_info(chain[0])
        if i + 1 >= len(chain):
            break
        if not _issued_by(cert, chain[i + 1]):
            raise IdentityError(f"{what} is not signed by the next certificate in the chain")
    raise IdentityError("certificate chain does not lead to any root in the trust bundle")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- a local CA ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """A leaf issued by :class:`LocalCA`: chain leaf-first, its key, its window."""

    cert_chain_pem: str
    private_key: PrivateKey
    info: CertInfo

    @property
    def leaf_pem(self) -> str:
        return cert_pem(load_pem_chain(self.cert_chain_pem)[0])


class LocalCA:
    """A root CA (and optionally one intermediate) held in memory.

    Used by tests and ``meshbridge demo`` to stand in for a mesh's CA. Leaves
    carry exactly the SANs asked for, both server and client auth (as mesh
    workload certificates do), and the validity window asked for, counted
    from the ``now`` given.
    """

    def __init__(
        self,
        *,
        name: str = "meshbridge local root",
        now: dt.datetime,
        validity: dt.timedelta = dt.timedelta(days=365),
        intermediate: bool = False,
        key_kind: KeyKind = KeyKind.EC_P256,
        trust_domain: str | None = None,
    ) -> None:
        self._key_kind = key_kind
        self.root_key = load_key(generate_key(key_kind))
        root_sans = [f"spiffe://{trust_domain}"] if trust_domain else []
        self.root = _sign(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            issuer=None,
            public_key=self.root_key.public_key(),
            signer=self.root_key,
            not_before=now - dt.timedelta(minutes=5),
            not_after=now + validity,
            ca=True,
            uri_sans=root_sans,
        )
        self.signer_key: _Key = self.root_key
        self.signer: x509.Certificate = self.root
        self.intermediates: list[x509.Certificate] = []
        if intermediate:
            ikey = load_key(generate_key(key_kind))
            iname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} intermediate")])
            icert = _sign(
                subject=iname,
                issuer=self.root,
                public_key=ikey.public_key(),
                signer=self.root_key,
                not_before=now - dt.timedelta(minutes=5),
                not_after=now + validity,
                ca=True,
                uri_sans=root_sans,
            )
            self.signer_key, self.signer = ikey, icert
            self.intermediates = [icert]

    @property
    def root_pem(self) -> str:
        return cert_pem(self.root)

    def issue(
        self,
        *,
        now: dt.datetime,
        validity: dt.timedelta = dt.timedelta(hours=24),
        uri_sans: Sequence[str] = (),
        dns_sans: Sequence[str] = (),
        key: PrivateKey | None = None,
        not_before: dt.datetime | None = None,
    ) -> Issued:
        """A leaf for a new (or the given) key, valid from ``now`` for ``validity``."""
        key = key if key is not None else generate_key(self._key_kind)
        start = not_before if not_before is not None else now
        cert = _sign(
            subject=x509.Name([]),
            issuer=self.signer,
            public_key=load_key(key).public_key(),
            signer=self.signer_key,
            not_before=start,
            not_after=start + validity,
            ca=False,
            uri_sans=uri_sans,
            dns_sans=dns_sans,
        )
        chain = "".join(cert_pem(c) for c in [cert, *self.intermediates])
        return Issued(cert_chain_pem=chain, private_key=key, info=cert_info(cert))

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        now: dt.datetime,
        validity: dt.timedelta = dt.timedelta(hours=24),
        uri_sans: Sequence[str] | None = None,
        dns_sans: Sequence[str] | None = None,
    ) -> list[x509.Certificate]:
        """Sign a CSR: the chain leaf first, the root last.

        SANs default to the CSR's; a CA that takes the identity from elsewhere
        (istiod takes it from the token) passes its own.
        """
        if not csr.is_signature_valid:
            raise IdentityError("CSR signature does not verify")
        if uri_sans is None or dns_sans is None:
            try:
                san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                san = x509.SubjectAlternativeName([])
            if uri_sans is None:
                uri_sans = san.get_values_for_type(x509.UniformResourceIdentifier)
            if dns_sans is None:
                dns_sans = san.get_values_for_type(x509.DNSName)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise IdentityError(f"unsupported CSR key type {type(public_key).__name__}")
        cert = _sign(
            subject=x509.Name([]),
            issuer=self.signer,
            public_key=public_key,
            signer=self.signer_key,
            not_before=now,
            not_after=now + validity,
            ca=False,
            uri_sans=uri_sans,
            dns_sans=dns_sans,
        )
        return [cert, *self.intermediates, self.root]


def _sign(
    *,
    subject: x509.Name,
    issuer: x509.Certificate | None,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    signer: _Key,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool,
    uri_sans: Sequence[str] = (),
    dns_sans: Sequence[str] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri_sans]
    sans += [x509.DNSName(d) for d in dns_sans]
    if sans:
        # An empty subject requires a critical SAN (RFC 5280 §4.2.1.6).
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=len(subject) == 0
        )
    return builder.sign(signer, hashes.SHA256())
