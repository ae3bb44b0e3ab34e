"""An istiod CA stand-in: ``IstioCertificateService/CreateCertificate`` over TLS, for tests.

A real grpc.aio server on 127.0.0.1 that behaves as istiod's CA does toward
istio-agent (``security/pkg/server/ca/server.go``):

- TLS only; the serving certificate names ``istiod.istio-system.svc`` (no
  cluster domain, not ``127.0.0.1``), signed by the mesh root that signs the
  workloads, so a client must override the TLS target name and verify
  against ``istio-ca-root-cert``; it follows a root switch (the certificate
  is re-read on each handshake);
- authentication: metadata ``authorization: Bearer <JWT>`` reviewed for
  audience ``istio-ca`` by a :class:`tests.standins.sa_tokens.TokenReviewer`:
  :class:`~tests.standins.sa_tokens.FakeTokenRequest` (signature, expiry,
  audience) or, as istiod does it in a cluster,
  :class:`~tests.standins.sa_tokens.ApiServerTokenReview` (a TokenReview to
  the API server stand-in); and ``clusterid`` naming the cluster the token
  is from; anything wrong is ``UNAUTHENTICATED: request authenticate
  failure``, as istiod answers;
- the issued URI SAN is ``spiffe://<td>/ns/<ns>/sa/<sa>`` of the token, never
  what the CSR asks for; the CSR's signature must verify;
- TTL: ``validity_duration`` seconds (0 → the default TTL); more than the
  maximum is ``INVALID_ARGUMENT`` (istiod refuses rather than trims);
- the answer is PEM, leaf first and the signing root last.

Test controls: :meth:`IstiodCa.outage` / :meth:`IstiodCa.recover` stop and
restart the server on the same port (connection refused between);
:attr:`IstiodCa.fail_with` answers every call with a status; root rotation
in three steps (:meth:`add_root`, :meth:`sign_with_newest`,
:meth:`drop_oldest_root`). Every call is recorded (:attr:`calls`) with the
token masked.

Left out: impersonation (``metadata`` Struct), multi-cluster secrets, the
XDS-side of istiod, SDS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from grpc import aio as grpc_aio

from adapters.istio import proto as istioca
from bridge.identity import pki
from tests.standins.sa_tokens import TokenError, TokenReviewer

ISTIOD_NAME = "istiod.istio-system.svc"
AUDIENCE = "istio-ca"


@dataclass(frozen=True)
class CaCall:
    """One CreateCertificate call as the CA saw it."""

    metadata: dict[str, str]  # authorization value replaced by "<bearer>"
    csr_uri_sans: tuple[str, ...]
    csr_dns_sans: tuple[str, ...]
    csr_common_name: str
    validity_asked: int
    status: str  # "OK" or the status code name
    issued_san: str = ""
    issued_serial: int = 0
    ttl_s: int = 0
    why: str = ""  # why authentication failed (istiod logs it; the caller only sees the code)


class IstiodCa:
    """The stand-in; ``async with IstiodCa(...) as ca:`` starts and stops it."""

    def __init__(
        self,
        tokens: TokenReviewer,
        *,
        trust_domain: str = "cluster.local",
        cluster_id: str = "Kubernetes",
        default_ttl: dt.timedelta = dt.timedelta(hours=24),
        max_ttl: dt.timedelta = dt.timedelta(days=90),
    ) -> None:
        self.tokens = tokens
        self.trust_domain = trust_domain
        self.cluster_id = cluster_id
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self.calls: list[CaCall] = []
        self.port = 0
        self._lock = threading.Lock()
        now = dt.datetime.now(dt.UTC)
        self.cas: list[pki.LocalCA] = [self._new_root(now, 1)]
        self._signer = self.cas[0]
        self._serving = self._serving_pair()
        self._server: Any = None

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> IstiodCa:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> IstiodCa:
        server = grpc_aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._create_certificate, request_deserializer=None, response_serializer=None
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(istioca.SERVICE, {"CreateCertificate": handler}),)
        )
        creds = grpc.dynamic_ssl_server_credentials(
            self._cert_config(), self._fetch_cert_config, require_client_authentication=False
        )
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(0)

    async def outage(self) -> None:
        """Stop serving: connections are refused until :meth:`recover`."""
        await self.stop()

    async def recover(self) -> None:
        await self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- roots -----------------------------------------------------------------------

    @property
    def roots_pem(self) -> str:
        """What ``istio-ca-root-cert`` holds: every trusted root, oldest first."""
        return "".join(ca.root_pem for ca in self.cas)

    @property
    def signer(self) -> pki.LocalCA:
        return self._signer

    def add_root(self) -> pki.LocalCA:
        """Rotation step 1: a new root is trusted (listed) but does not sign yet."""
        ca = self._new_root(dt.datetime.now(dt.UTC), len(self.cas) + 1)
        self.cas.append(ca)
        return ca

    def sign_with_newest(self) -> None:
        """Rotation step 2: the newest root signs workloads and istiod's own certificate."""
        with self._lock:
            self._signer = self.cas[-1]
        self._serving = self._serving_pair()

    def drop_oldest_root(self) -> None:
        """Rotation step 3: the old root is no longer trusted."""
        assert len(self.cas) > 1 and self.cas[0] is not self._signer
        self.cas.pop(0)

    def issue_workload(
        self, namespace: str, service_account: str, validity: dt.timedelta
    ) -> pki.Issued:
        """A workload certificate (for a backend's sidecar) from the signing root."""
        return self._signer.issue(
            now=dt.datetime.now(dt.UTC),
            validity=validity,
            uri_sans=[self.spiffe(namespace, service_account)],
        )

    def spiffe(self, namespace: str, service_account: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"

    def _new_root(self, now: dt.datetime, n: int) -> pki.LocalCA:
        return pki.LocalCA(name=f"istiod stand-in root {n}", now=now - dt.timedelta(hours=1))

    def _serving_pair(self) -> tuple[bytes, bytes]:
        issued = self._signer.issue(
            now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
            validity=dt.timedelta(days=1),
            dns_sans=[ISTIOD_NAME, "istiod.istio-system", "istiod"],
        )
        return issued.private_key.reveal(), issued.cert_chain_pem.encode()

    def _cert_config(self) -> Any:
        return grpc.ssl_server_certificate_configuration([self._serving])

    def _fetch_cert_config(self) -> Any:
        # Called by gRPC on each handshake: hand out the current certificate.
        return self._cert_config()

    # -- the RPC -------------------------------------------------------------------------

    async def _create_certificate(self, request: bytes, context: Any) -> bytes:
        md = {k: str(v) for k, v in context.invocation_metadata()}
        shown = {k: ("<bearer>" if k == "authorization" else v) for k, v in md.items()}
        csr_pem, validity = istioca.decode_request(request)
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            csr = None
        uris: tuple[str, ...] = ()
        dns: tuple[str, ...] = ()
        cn = ""
        if csr is not None:
            try:
                san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
                dns = tuple(san.get_values_for_type(x509.DNSName))
            except x509.ExtensionNotFound:
                pass
            cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            cn = str(cns[0].value) if cns else ""

        def record(status: str, **kw: Any) -> None:
            self.calls.append(CaCall(shown, uris, dns, cn, validity, status, **kw))

        async def abort(code: grpc.StatusCode, message: str, why: str = "") -> None:
            record(code.name, why=why)
            await context.abort(code, message)

        if self.fail_with is not None:
            await abort(*self.fail_with)
        auth = md.get("authorization", "")
        if not auth.startswith("Bearer "):
            await abort(grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
        if md.get("clusterid", self.cluster_id) != self.cluster_id:
            # istiod looks up the token's cluster by this id: an unknown one fails auth.
            await abort(grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
        try:
            # A TokenReview is an HTTP call: off the event loop, as istiod's is off its handler.
            namespace, sa = await asyncio.to_thread(
                self.tokens.review, auth[len("Bearer ") :], AUDIENCE
            )
        except TokenError as exc:
            await abort(grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure", str(exc))
            raise  # unreachable: abort raises
        if csr is None or not csr.is_signature_valid:
            await abort(grpc.StatusCode.INVALID_ARGUMENT, "CSR signing error (invalid CSR)")
            raise AssertionError  # unreachable
        ttl = dt.timedelta(seconds=validity) if validity > 0 else self.default_ttl
        if ttl > self.max_ttl:
            await abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"CSR signing error (requested TTL {ttl} is greater than the max allowed TTL "
                f"{self.max_ttl})",
            )
        with self._lock:
            signer = self._signer
        san_uri = self.spiffe(namespace, sa)
        chain = signer.sign_csr(
            csr, now=dt.datetime.now(dt.UTC), validity=ttl, uri_sans=[san_uri], dns_sans=[]
        )
        record(
            "OK",
            issued_san=san_uri,
            issued_serial=chain[0].serial_number,
            ttl_s=int(ttl.total_seconds()),
        )
        return istioca.encode_response([pki.cert_pem(c) for c in chain])
