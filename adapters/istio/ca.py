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

Roots are re-read every ``roots_poll_s``. A changed bundle is published at
once (a new root is added before the old one goes, so peers under either
root keep verifying); if the current leaf no longer chains to it, or there
is no leaf yet, a renewal starts at once instead of waiting its turn.

A token istiod refuses (``UNAUTHENTICATED``/``PERMISSION_DENIED``) is a
diagnostic naming the audience and the service account, right away — it
will not heal by retrying. Tokens and keys are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio as grpc_aio

from adapters.istio import proto as istioca
from bridge.errors import IdentityError, IdentityUnavailable
from bridge.identity import pki
from bridge.identity.provider import CaIdentityProvider, IdentityMaterial
from bridge.identity.rotation import ISTIO_POLICY, Clock, RenewalPolicy
from bridge.identity.tokens import ISTIO_CA_AUDIENCE, ServiceAccount, TokenSource, token_subject
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh
from bridge.model.k8s import K8sConfigMap, Kind, ObjectRef
from bridge.model.secrets import SecretBytes
from bridge.store import Store

log = logging.getLogger(__name__)

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


class IstioRoots:
    """Where istiod's roots come from: the ConfigMap held in the store, or a file."""

    def __init__(self, *, store: Store | None = None, namespace: str = "", path: str = "") -> None:
        if (store is None) == (not path):
            raise ValueError("give either a store and namespace, or a path")
        self._store = store
        self.namespace = namespace
        self.path = path

    @classmethod
    def config_map(cls, store: Store, namespace: str) -> IstioRoots:
        """``istio-ca-root-cert`` in ``namespace`` (istiod copies it into every namespace)."""
        return cls(store=store, namespace=namespace)

    @classmethod
    def file(cls, path: str | Path) -> IstioRoots:
        return cls(path=str(path))

    def __str__(self) -> str:
        if self.path:
            return f"file {self.path}"
        return f"ConfigMap {self.namespace}/{ROOT_CONFIG_MAP} key {ROOT_KEY}"

    def read(self) -> str:
        """The PEM bundle; :class:`IdentityError` naming the source when absent or unreadable."""
        if self.path:
            try:
                text = Path(self.path).read_text()
            except OSError as exc:
                raise IdentityError(f"cannot read Istio roots {self}: {exc.strerror}") from exc
        else:
            assert self._store is not None
            cm = self._store.get(ObjectRef(Kind.CONFIG_MAP, self.namespace, ROOT_CONFIG_MAP))
            if not isinstance(cm, K8sConfigMap):
                raise IdentityError(f"no Istio roots yet: {self} not found")
            text = cm.data.get(ROOT_KEY, "")
            if not text.strip():
                raise IdentityError(f"no Istio roots yet: {self} is missing or empty")
        pki.load_pem_chain(text, f"Istio roots ({self})")
        return text


class IstioCaProvider(CaIdentityProvider):
    """The gateway's Istio certificate from istiod's CA, kept current in the store."""

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
        super().__init__(Mesh.ISTIO, store, policy=policy, clock=clock, rand=rand)
        self.tokens = tokens
        self.roots = roots
        self.settings = settings
        self.requests = 0  # CreateCertificate calls made (for /debug and tests)
        self._renew_now = asyncio.Event()
        self._rotator_diags: tuple[Diagnostic, ...] = ()
        self._rejected: Diagnostic | None = None
        self._roots_error = ""

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Renew on schedule, and at once when the roots no longer cover the leaf."""
        watch = asyncio.create_task(self._watch_roots(), name="istio-roots")
        try:
            while True:
                self._renew_now.clear()
                rotate = asyncio.create_task(self.rotator.run(), name="istio-ca-rotator")
                wake = asyncio.create_task(self._renew_now.wait())
                try:
                    await asyncio.wait({rotate, wake}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (rotate, wake):
                        t.cancel()
                    await asyncio.gather(rotate, wake, return_exceptions=True)
                if not rotate.cancelled() and rotate.exception() is not None:
                    raise IdentityError("Istio CA renewal loop stopped") from rotate.exception()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _watch_roots(self) -> None:
        while True:
            await asyncio.sleep(self.settings.roots_poll_s)
            self.check_roots()

    def check_roots(self) -> None:
        """Publish a changed bundle; ask for a renewal if the leaf no longer chains to it."""
        try:
            bundle = self.roots.read()
        except IdentityError as exc:
            if str(exc) != self._roots_error:
                self._roots_error = str(exc)
                log.warning("Istio identity: %s", exc)
            return
        self._roots_error = ""
        cur = self.current
        if cur is None:
            if self.rotator.failures:
                self._renew_now.set()  # roots may be what was missing: retry now
            return
        if bundle == self.trust_pem:
            return
        log.info("Istio identity: roots changed in %s", self.roots)
        self.publish_trust(bundle, self.settings.trust_domain)
        try:
            pki.validate_chain(cur.cert_chain_pem, bundle, self.clock.now())
        except IdentityError as exc:
            log.info("Istio identity: current certificate no longer chains (%s): renewing", exc)
            self._renew_now.set()

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

    # -- diagnostics -------------------------------------------------------------

    def _reject(self, account: ServiceAccount, why: str) -> None:
        cur = self.current
        until = (
            f"; the current certificate stays in use until {cur.not_after.isoformat()}"
            if cur is not None
            else ""
        )
        self._rejected = Diagnostic(
            ref=self.ref,
            field="identity.token",
            message=(
                f"istiod rejected the service-account token of {account} "
                f"(audience {ISTIO_CA_AUDIENCE}): {why}{until}"
            ),
            fix=(
                f"issue the token for service account {account} with audience "
                f"{ISTIO_CA_AUDIENCE} (TokenRequest audiences, or the projected volume's "
                "audience) and check that istiod trusts this cluster's token issuer"
            ),
            severity=Severity.ERROR if cur is None else Severity.WARNING,
            code="istio.token_rejected",
        )
        self._show_diagnostics()

    def set_diagnostics(self, diags: tuple[Diagnostic, ...]) -> None:
        self._rotator_diags = diags
        self._show_diagnostics()

    def publish(self, material: IdentityMaterial) -> None:
        super().publish(material)
        if self._rejected is not None:
            self._rejected = None
            self._show_diagnostics()

    def _show_diagnostics(self) -> None:
        extra = (self._rejected,) if self._rejected is not None else ()
        super().set_diagnostics(self._rotator_diags + extra)


def _pem_block(pem: str) -> str:
    text = pem.strip()
    return text + "\n" if text else ""
