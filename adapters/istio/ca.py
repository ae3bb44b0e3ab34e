"""The Istio CA identity provider (``istio.identity: ca``): a CSR to istiod, no sidecar.

What istio-agent does for a workload, done for the gateway (DESIGN.md §5):

- a new ECDSA P-256 key and a CSR per renewal, its URI SAN the SPIFFE ID
  ``spiffe://<td>/ns/<ns>/sa/<sa>`` of the token's service account, no CN;
- ``istio.v1.auth.IstioCertificateService/CreateCertificate`` over TLS with
  grpcio, metadata ``authorization: Bearer <JWT, audience istio-ca>`` and
  ``clusterid: <cluster id>`` (lower case: grpcio rejects ``ClusterID``);
- istiod's serving certificate names ``istiod.istio-system.svc`` (no
  cluster domain): the TLS target name is overridden to that name, and the
  certificate is verified against the mesh roots;
- the roots are ConfigMap ``istio-ca-root-cert`` key ``root-cert.pem`` as the
  store holds it (or a file): they verify istiod, they are the trust bundle
  served to Envoy, and the issued chain must lead to one of them;
- the answer is PEM, leaf first and root last; the leaf and intermediates
  are served, the root is not (peers have it);
- renewal at 50% of the lifetime (:data:`ISTIO_POLICY`), with jitter; a
  failure is retried with backoff while the current certificate keeps being
  served (:class:`CaIdentityProvider`).

Watching the roots (a changed bundle published at once, an immediate
renewal when the leaf no longer chains to it) and keeping the token-refused
diagnostic are :class:`bridge.identity.roots.RootsWatchingCaProvider`'s.

A token istiod refuses (``UNAUTHENTICATED``/``PERMISSION_DENIED``) is a
diagnostic naming the audience and the service account, right away — it
will not heal by retrying. Tokens and keys are never logged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc
from grpc import aio as grpc_aio

from adapters.istio import proto as istioca
from bridge.errors import IdentityError, IdentityUnavailable
from bridge.identity import pki
from bridge.identity.provider import IdentityMaterial
from bridge.identity.roots import RootsWatchingCaProvider, TrustRoots
from bridge.identity.rotation import ISTIO_POLICY, Clock, RenewalPolicy
from bridge.identity.tokens import ISTIO_CA_AUDIENCE, ServiceAccount, TokenSource, token_subject
from bridge.model.ir import Mesh
from bridge.model.secrets import SecretBytes
from bridge.store import Store

ROOT_CONFIG_MAP = "istio-ca-root-cert"
ROOT_KEY = "root-cert.pem"
ISTIOD_SERVER_NAME = "istiod.istio-system.svc"

_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_REJECTED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


@dataclass(frozen=True, slots=True)
class IstioCaSettings:
    """How to reach istiod and who the gateway is (from the config file)."""

    address: str = "istiod.istio-system.svc:15012"
    server_name: str = ISTIOD_SERVER_NAME
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    # The gateway's service account: named in the CSR and in diagnostics when
    # the token does not say (istiod takes the identity from the token anyway).
    namespace: str = "meshbridge"
    service_account: str = "meshbridge"
    validity_s: int = 24 * 3600  # asked for; istiod caps it
    timeout_s: float = 10.0
    roots_poll_s: float = 1.0


class IstioRoots(TrustRoots):
    """istiod's roots: ConfigMap ``istio-ca-root-cert`` key ``root-cert.pem`` (or a file).

    istiod copies the ConfigMap into every namespace; the gateway reads its own.
    """

    CONFIG_MAP = ROOT_CONFIG_MAP
    KEY = ROOT_KEY
    WHAT = "Istio roots"


class IstioCaProvider(RootsWatchingCaProvider):
    """The gateway's Istio certificate from istiod's CA, kept current in the store."""

    roots: IstioRoots

    def __init__(
        self,
        store: Store,
        tokens: TokenSource,
        roots: IstioRoots,
        settings: IstioCaSettings = IstioCaSettings(),
        *,
        policy: RenewalPolicy = ISTIO_POLICY,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        super().__init__(
            Mesh.ISTIO,
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
        self.requests = 0  # CreateCertificate calls made (for /debug and tests)

    # -- one certificate -------------------------------------------------------

    async def fetch(self) -> IdentityMaterial:
        roots = self.roots.read()
        token = await self.tokens.token(ISTIO_CA_AUDIENCE)
        account = token_subject(token) or ServiceAccount(
            self.settings.namespace, self.settings.service_account
        )
        spiffe = f"spiffe://{self.settings.trust_domain}/ns/{account.namespace}/sa/{account.name}"
        key = pki.generate_key()
        csr = pki.csr_pem(pki.make_csr(key, uri_sans=[spiffe], common_name=""))
        pems = await self._create_certificate(csr, token, roots, account)
        if len(pems) < 2:
            raise IdentityError(
                f"istiod returned {len(pems)} certificate(s); a chain needs the leaf and the root"
            )
        served = "".join(_pem_block(p) for p in pems[:-1])
        try:
            return IdentityMaterial.checked(
                cert_chain_pem=served,
                private_key=key,
                trust_bundle_pem=roots,
                trust_domain=self.settings.trust_domain,
                now=self.clock.now(),
            )
        except IdentityError as exc:
            raise IdentityError(
                f"the certificate istiod issued does not verify against {self.roots}: {exc}"
            ) from exc

    async def _create_certificate(
        self, csr_pem: str, token: SecretBytes, roots: str, account: ServiceAccount
    ) -> list[str]:
        s = self.settings
        creds = grpc.ssl_channel_credentials(root_certificates=roots.encode())
        options = [
            ("grpc.ssl_target_name_override", s.server_name),
            ("grpc.default_authority", s.server_name),
        ]
        metadata = (
            ("authorization", "Bearer " + token.reveal().decode("ascii", "replace")),
            ("clusterid", s.cluster_id),
        )
        self.requests += 1
        async with grpc_aio.secure_channel(s.address, creds, options=options) as channel:
            call = channel.unary_unary(
                istioca.CREATE_CERTIFICATE,
                request_serializer=None,
                response_deserializer=None,
            )
            try:
                data = await call(
                    istioca.encode_request(csr_pem, s.validity_s),
                    metadata=metadata,
                    timeout=s.timeout_s,
                )
            except grpc_aio.AioRpcError as exc:
                raise self._rpc_error(exc, account) from None
        return istioca.decode_response(bytes(data))

    def _rpc_error(self, exc: grpc_aio.AioRpcError, account: ServiceAccount) -> IdentityError:
        code, details = exc.code(), exc.details() or ""
        where = f"istiod CA at {self.settings.address}"
        if code in _REJECTED:
            self._reject(account, f"{code.name}: {details}")
            return IdentityError(
                f"{where} rejected the token of service account {account} "
                f"(audience {ISTIO_CA_AUDIENCE}): {code.name}: {details}"
            )
        if code in _UNAVAILABLE:
            hint = ""
            if any(w in details.lower() for w in ("ssl", "handshake", "certificate")):
                hint = (
                    f" (istiod's certificate is verified as {self.settings.server_name!r} "
                    f"against {self.roots})"
                )
            return IdentityUnavailable(f"{where} unreachable: {code.name}: {details}{hint}")
        return IdentityError(f"{where}: CreateCertificate failed: {code.name}: {details}")

    def _reject(self, account: ServiceAccount, why: str) -> None:
        self.token_rejected(
            message=(
                f"istiod rejected the service-account token of {account} "
                f"(audience {ISTIO_CA_AUDIENCE}): {why}"
            ),
            fix=(
                f"issue the token for service account {account} with audience "
                f"{ISTIO_CA_AUDIENCE} (TokenRequest audiences, or the projected volume's "
                "audience) and check that istiod trusts this cluster's token issuer"
            ),
            code="istio.token_rejected",
        )


def _pem_block(pem: str) -> str:
    text = pem.strip()
    return text + "\n" if text else ""
