"""The Linkerd identity provider (``linkerd.mode: ca``): ``Certify`` to Linkerd identity.

What the Linkerd proxy does at start-up, done for the gateway (DESIGN.md §5):

- a new ECDSA P-256 key and a DER CSR per renewal: exactly one DNS SAN,
  the identity ``<sa>.<ns>.serviceaccount.identity.<linkerd-ns>.<td>`` of the
  token's service account, and no CN (names often exceed 64 characters);
- ``io.linkerd.proxy.identity.Identity/Certify`` with that name, the raw
  service-account JWT (audience ``identity.l5d.io``) in the request — not a
  header — and the CSR;
- to ``linkerd-identity-headless.<linkerd-ns>.svc.<cluster-domain>:8080``
  through the identity pod's proxy: TLS 1.3 only, SNI
  ``linkerd-identity.<linkerd-ns>.serviceaccount.identity.<linkerd-ns>.<td>``,
  that DNS SAN verified against the trust anchors, and **no ALPN**;
- trust anchors from ConfigMap ``linkerd-identity-trust-roots`` key
  ``ca-bundle.crt`` as the store holds it (or a file): they verify the
  identity service, they are the trust bundle served to Envoy, and the
  issued leaf must chain to them through the returned intermediates;
- refresh at 70% of the time remaining when the certificate arrived
  (:data:`LINKERD_POLICY`), with jitter and backoff on failure while the
  current certificate keeps being served.

The gRPC client is grpclib over Python's ``ssl``. grpcio cannot be used:
its TLS stack insists that the server select ALPN ``h2`` and fails the
handshake with "missing selected ALPN property" when Linkerd's proxy
selects none. grpclib speaks HTTP/2 (the ``h2`` package) over whatever
``SSLContext`` it is given and does not require ALPN, so this module gives
it one pinned to TLS 1.3, with no ALPN offered and the trust anchors as the
only roots; grpclib still handles framing, deadlines, trailers and
``grpc-status``. Each call gets its own connection, which is waited on
until it is closed (``_OneCallChannel``): a one-shot ``meshbridge resolve``
must not end its event loop with the TLS socket still open.

Watching the anchors (a changed bundle published at once, an immediate
renewal when the leaf no longer chains to it) and keeping the token-refused
diagnostic are :class:`bridge.identity.roots.RootsWatchingCaProvider`'s; a
token the service refuses (``FAILED_PRECONDITION``, ``UNAUTHENTICATED``,
``PERMISSION_DENIED``) is reported there, naming the audience and the
service account. Tokens and keys are never logged.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from typing import Any, cast

from grpclib.client import Channel, Handler, UnaryUnaryMethod
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol

from adapters.linkerd import proto as identity_pb
from bridge.config import parse_address
from bridge.errors import IdentityError, IdentityUnavailable
from bridge.identity import pki
from bridge.identity.provider import IdentityMaterial
from bridge.identity.roots import RootsWatchingCaProvider, TrustRoots
from bridge.identity.rotation import LINKERD_POLICY, Clock, RenewalPolicy
from bridge.identity.tokens import LINKERD_AUDIENCE, ServiceAccount, TokenSource, token_subject
from bridge.model.ir import Mesh
from bridge.model.secrets import SecretBytes
from bridge.store import Store

TRUST_ROOTS_CONFIG_MAP = "linkerd-identity-trust-roots"
TRUST_ROOTS_KEY = "ca-bundle.crt"

_UNAVAILABLE = frozenset(
    {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.RESOURCE_EXHAUSTED}
)
_REJECTED = frozenset(
    {Status.FAILED_PRECONDITION, Status.UNAUTHENTICATED, Status.PERMISSION_DENIED}
)


def identity_name(service_account: str, namespace: str, linkerd_ns: str, trust_domain: str) -> str:
    """``<sa>.<ns>.serviceaccount.identity.<linkerd-ns>.<trust-domain>``."""
    return f"{service_account}.{namespace}.serviceaccount.identity.{linkerd_ns}.{trust_domain}"


@dataclass(frozen=True, slots=True)
class LinkerdIdentitySettings:
    """How to reach Linkerd identity and who the gateway is (from the config file)."""

    # "" = linkerd-identity-headless.<namespace>.svc.<cluster_domain>:8080
    address: str = ""
    namespace: str = "linkerd"
    trust_domain: str = "cluster.local"
    cluster_domain: str = "cluster.local"
    # The gateway's service account when the token does not say (the service
    # checks that the requested identity is the token's).
    gateway_namespace: str = "meshbridge"
    service_account: str = "meshbridge"
    timeout_s: float = 10.0
    roots_poll_s: float = 1.0

    @property
    def target(self) -> tuple[str, int]:
        if self.address:
            return parse_address(self.address)
        return f"linkerd-identity-headless.{self.namespace}.svc.{self.cluster_domain}", 8080

    @property
    def service_name(self) -> str:
        """The identity service's own identity: the SNI and the DNS SAN to verify."""
        return identity_name("linkerd-identity", self.namespace, self.namespace, self.trust_domain)

    def identity_of(self, account: ServiceAccount) -> str:
        return identity_name(account.name, account.namespace, self.namespace, self.trust_domain)


class LinkerdRoots(TrustRoots):
    """The trust anchors: ConfigMap ``linkerd-identity-trust-roots`` key ``ca-bundle.crt``
    in Linkerd's namespace (or a file)."""

    CONFIG_MAP = TRUST_ROOTS_CONFIG_MAP
    KEY = TRUST_ROOTS_KEY
    WHAT = "Linkerd trust anchors"


def client_tls(anchors_pem: str) -> ssl.SSLContext:
    """TLS as Linkerd's proxy expects it: 1.3 only, anchors as the only roots, no ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=anchors_pem)
    # No set_alpn_protocols(): the identity service's proxy negotiates none.
    return ctx


class _ClosingProtocol(H2Protocol):
    """grpclib's connection protocol, telling when its TLS connection is really gone."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.lost.set()


class _OneCallChannel(Channel):
    """A grpclib channel for one call that :meth:`shut` closes completely.

    ``Channel.close`` only starts TLS's closing exchange and returns; the
    socket is released once the peer answers. A one-shot process
    (``meshbridge resolve``) may end its event loop before that and leave
    the socket open, so :meth:`shut` waits for the connection to be lost,
    and aborts it when the peer does not answer within ``grace_s``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: list[_ClosingProtocol] = []

    def _protocol_factory(self) -> H2Protocol:
        # grpclib's own factory, with the protocol that reports its end.
        protocol = _ClosingProtocol(Handler(), self._config, self._h2_config)
        self._protocols.append(protocol)
        return protocol

    async def shut(self, grace_s: float = 1.0) -> None:
        self.close()
        for protocol in self._protocols:
            if protocol.transport is None or protocol.lost.is_set():
                continue
            try:
                await asyncio.wait_for(protocol.lost.wait(), grace_s)
            except TimeoutError:
                protocol.transport.abort()
            except asyncio.CancelledError:
                protocol.transport.abort()
                raise


class LinkerdIdentityProvider(RootsWatchingCaProvider):
    """The gateway's Linkerd certificate from Linkerd identity, kept current in the store."""

    roots: LinkerdRoots

    def __init__(
        self,
        store: Store,
        tokens: TokenSource,
        roots: LinkerdRoots,
        settings: LinkerdIdentitySettings = LinkerdIdentitySettings(),
        *,
        policy: RenewalPolicy = LINKERD_POLICY,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        super().__init__(
            Mesh.LINKERD,
            store,
            roots,
            trust_domain=settings.trust_domain,
            roots_poll_s=settings.roots_poll_s,
            policy=policy,
            clock=clock,
            rand=rand,
        )
        self.tokens = tokens
        self.settings = settings
        self.requests = 0  # Certify calls made (for /debug and tests)

    # -- one certificate -------------------------------------------------------

    async def fetch(self) -> IdentityMaterial:
        anchors = self.roots.read()
        token = await self.tokens.token(LINKERD_AUDIENCE)
        account = token_subject(token) or ServiceAccount(
            self.settings.gateway_namespace, self.settings.service_account
        )
        name = self.settings.identity_of(account)
        key = pki.generate_key(pki.KeyKind.EC_P256)
        certified = await self._certify(name, token, pki.linkerd_csr(key, name), anchors, account)
        chain = pki.der_to_pem(certified.leaf_der) + "".join(
            pki.der_to_pem(d) for d in certified.intermediates_der
        )
        try:
            material = IdentityMaterial.checked(
                cert_chain_pem=chain,
                private_key=key,
                trust_bundle_pem=anchors,
                trust_domain=self.settings.trust_domain,
                now=self.clock.now(),
            )
        except IdentityError as exc:
            raise IdentityError(
                f"the certificate Linkerd identity issued does not verify against "
                f"{self.roots}: {exc}"
            ) from exc
        if material.leaf.dns_sans != (name,):
            raise IdentityError(
                f"Linkerd identity issued a certificate for {material.leaf.dns_sans}, not {name!r}"
            )
        return material

    async def _certify(
        self,
        name: str,
        token: SecretBytes,
        csr_der: bytes,
        anchors: str,
        account: ServiceAccount,
    ) -> identity_pb.Certified:
        s = self.settings
        host, port = s.target
        where = f"Linkerd identity at {host}:{port}"
        channel = _OneCallChannel(
            host,
            port,
            ssl=client_tls(anchors),
            config=Configuration(ssl_target_name_override=s.service_name),
        )
        method = UnaryUnaryMethod[object, object](
            channel, identity_pb.CERTIFY, identity_pb.CertifyRequest, identity_pb.CertifyResponse
        )
        self.requests += 1
        try:
            reply = await method(
                identity_pb.certify_request(name, token.reveal(), csr_der), timeout=s.timeout_s
            )
        except GRPCError as exc:
            raise self._rpc_error(where, exc, account) from None
        except ssl.SSLCertVerificationError as exc:
            raise IdentityError(
                f"{where}: its certificate does not verify as {s.service_name!r} against "
                f"{self.roots}: {exc.verify_message}"
            ) from None
        except (OSError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
            raise IdentityUnavailable(f"{where} unreachable: {type(exc).__name__}: {exc}") from None
        finally:
            await channel.shut()
        return identity_pb.read_response(reply)

    def _rpc_error(self, where: str, exc: GRPCError, account: ServiceAccount) -> IdentityError:
        status, message = exc.status, exc.message or ""
        if status in _REJECTED:
            self._reject(account, f"{status.name}: {message}")
            return IdentityError(
                f"{where} refused the token of service account {account} "
                f"(audience {LINKERD_AUDIENCE}): {status.name}: {message}"
            )
        if status in _UNAVAILABLE:
            return IdentityUnavailable(f"{where} unavailable: {status.name}: {message}")
        return IdentityError(f"{where}: Certify failed: {status.name}: {message}")

    def _reject(self, account: ServiceAccount, why: str) -> None:
        self.token_rejected(
            message=(
                f"Linkerd identity refused the service-account token of {account} "
                f"(audience {LINKERD_AUDIENCE}): {why}"
            ),
            fix=(
                f"issue the token for service account {account} with audience "
                f"{LINKERD_AUDIENCE} (TokenRequest audiences, or the projected volume's "
                "audience); the requested identity must be that account's"
            ),
            code="linkerd.token_rejected",
        )
