"""A Linkerd identity stand-in: ``io.linkerd.proxy.identity.Identity/Certify``, for tests.

Built the way Linkerd runs it: the identity controller speaks plaintext
gRPC on loopback (a real grpc.aio server here), and the pod's proxy
terminates TLS in front of it. The proxy is a real Envoy configured as
Linkerd's proxy behaves on the wire:

- TLS 1.3 only (1.2 is refused);
- **no ALPN is negotiated** (the listener has no ``alpn_protocols``): a
  client that insists on ``h2`` by ALPN — grpcio — fails with "missing
  selected ALPN property"; HTTP/2 is spoken without it;
- the filter chain matches only SNI ``linkerd-identity.<ns>.serviceaccount.
  identity.<ns>.<td>``: any other name (or none) finds no chain and the
  connection is closed;
- its certificate carries that DNS SAN, issued by the identity issuer
  (an intermediate) under the trust anchor; it is served over file-based SDS
  so an anchor rotation re-issues it without a restart;
- no client certificate is asked for (workloads have none yet).

Why Envoy and not Python's ``ssl`` + an HTTP/2 server: the gRPC server is
then grpcio's own (framing, trailers, status) and the TLS is a real proxy's,
so the client under test (grpclib over ``ssl``) shares no code with the
peer it talks to, and the quirks come from configuration, not from code of
ours that could be wrong in the same way as the client.

The controller checks what Linkerd's ``controller/identity`` checks, in its
order and with its status codes: ``INVALID_ARGUMENT`` for a missing
identity, token or CSR, an unparsable DER CSR, or a CSR that breaks the rules
(exactly one DNS SAN equal to the identity; CN empty or the identity; no
email, IP or URI SANs; and — DESIGN.md §5 — an ECDSA P-256 key);
``FAILED_PRECONDITION`` when the token does not authenticate (a review for
audience ``identity.l5d.io`` by a :class:`tests.standins.sa_tokens.TokenReviewer`:
the fake TokenRequest's own check, or a TokenReview to the API server
stand-in) or names another identity than the one requested. The answer is
the DER leaf, the DER issuer, and ``valid_until``.

Test controls: :meth:`outage` / :meth:`recover` (``"refuse"``: the proxy
stops, connections are refused; ``"unavailable"``: the controller stops,
the proxy answers ``UNAVAILABLE``), :attr:`fail_with`, anchor rotation in
three steps (:meth:`add_anchor`, :meth:`issue_from_newest`,
:meth:`drop_oldest_anchor`), and :attr:`calls`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio as grpc_aio

from adapters.linkerd import proto as identity_pb
from bridge.demo.meshes import HCM_TYPE, ROUTER_TYPE, TLS_INSPECTOR, TYPE, SdsFile
from bridge.identity import pki
from tests.standins.sa_tokens import TokenError, TokenReviewer
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port

AUDIENCE = "identity.l5d.io"
SECRET_TYPE = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True)
class CertifyCall:
    identity: str
    csr_dns_sans: tuple[str, ...]
    csr_common_name: str
    csr_key: str  # "ec-p256", "rsa-2048", ...
    status: str  # "OK" or the status code name
    message: str = ""
    issued_serial: int = 0


class LinkerdIdentity:
    """The stand-in; ``async with LinkerdIdentity(...) as li:`` starts and stops both parts."""

    def __init__(
        self,
        tokens: TokenReviewer,
        *,
        namespace: str = "linkerd",
        trust_domain: str = "cluster.local",
        lifetime: dt.timedelta = dt.timedelta(hours=24),
    ) -> None:
        self.tokens = tokens
        self.namespace = namespace
        self.trust_domain = trust_domain
        self.lifetime = lifetime
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self.calls: list[CertifyCall] = []
        self.port = free_port()  # the proxy's TLS port (what clients dial)
        self._controller_port = 0
        self._lock = threading.Lock()
        self.anchors: list[pki.LocalCA] = [self._new_anchor(1)]
        self._issuer = self.anchors[0]
        self._dir = Path(tempfile.mkdtemp(prefix="meshbridge-l5d-identity-"))
        self._sds = SdsFile(name="identity", path=str(self._dir / "identity.yaml"))
        self._server: Any = None
        self._proxy: EnvoyProcess | None = None

    # -- names -------------------------------------------------------------------------

    @property
    def service_name(self) -> str:
        """The identity service's own identity: its SNI and its certificate's DNS SAN."""
        return self.identity_name(self.namespace, "linkerd-identity")

    def identity_name(self, namespace: str, service_account: str) -> str:
        return (
            f"{service_account}.{namespace}.serviceaccount.identity."
            f"{self.namespace}.{self.trust_domain}"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> LinkerdIdentity:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> LinkerdIdentity:
        await self._start_controller()
        self._write_serving_cert()
        await self._start_proxy()
        return self

    async def stop(self) -> None:
        await self._stop_proxy()
        await self._stop_controller()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def outage(self, kind: str = "refuse") -> None:
        if kind == "refuse":
            await self._stop_proxy()
        else:
            await self._stop_controller()

    async def recover(self) -> None:
        if self._server is None:
            await self._start_controller()
        if self._proxy is None:
            await self._start_proxy()

    async def _start_controller(self) -> None:
        server = grpc_aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._certify,
            request_deserializer=identity_pb.CertifyRequest.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(identity_pb.SERVICE, {"Certify": handler}),)
        )
        self._controller_port = server.add_insecure_port(f"127.0.0.1:{self._controller_port}")
        await server.start()
        self._server = server

    async def _stop_controller(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(0)

    async def _start_proxy(self) -> None:
        proxy = EnvoyProcess(self._proxy_bootstrap())
        self._proxy = proxy
        await asyncio.to_thread(proxy.start)

    async def _stop_proxy(self) -> None:
        if self._proxy is not None:
            proxy, self._proxy = self._proxy, None
            await asyncio.to_thread(proxy.stop)

    # -- anchors ---------------------------------------------------------------------

    @property
    def bundle_pem(self) -> str:
        """What ``linkerd-identity-trust-roots`` key ``ca-bundle.crt`` holds."""
        return "".join(a.root_pem for a in self.anchors)

    @property
    def issuer(self) -> pki.LocalCA:
        return self._issuer

    def add_anchor(self) -> pki.LocalCA:
        """Rotation step 1: a new trust anchor (with its issuer) is trusted, not used yet."""
        anchor = self._new_anchor(len(self.anchors) + 1)
        self.anchors.append(anchor)
        return anchor

    def issue_from_newest(self) -> None:
        """Rotation step 2: the newest anchor's issuer signs, the service's own cert too."""
        with self._lock:
            self._issuer = self.anchors[-1]
        self._write_serving_cert()

    def drop_oldest_anchor(self) -> None:
        """Rotation step 3: the old anchor leaves the bundle."""
        assert len(self.anchors) > 1 and self.anchors[0] is not self._issuer
        self.anchors.pop(0)

    def issue_workload(
        self, namespace: str, service_account: str, validity: dt.timedelta
    ) -> pki.Issued:
        """A workload certificate (for a backend's proxy) from the current issuer."""
        return self._issuer.issue(
            now=dt.datetime.now(dt.UTC),
            validity=validity,
            dns_sans=[self.identity_name(namespace, service_account)],
        )

    def _new_anchor(self, n: int) -> pki.LocalCA:
        return pki.LocalCA(
            name=f"linkerd stand-in trust anchor {n}",
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
            intermediate=True,
        )

    def _write_serving_cert(self) -> None:
        issued = self._issuer.issue(
            now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
            validity=dt.timedelta(days=1),
            dns_sans=[self.service_name],
        )
        doc = {
            "resources": [
                {
                    "@type": SECRET_TYPE,
                    "name": self._sds.name,
                    "tls_certificate": {
                        "certificate_chain": {"inline_string": issued.cert_chain_pem},
                        # A throwaway key of this test CA, handed to its own proxy.
                        "private_key": {"inline_string": issued.private_key.reveal().decode()},
                    },
                }
            ]
        }
        path = Path(self._sds.path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(path)  # Envoy watches the directory for moves

    def _proxy_bootstrap(self) -> dict[str, Any]:
        tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_3",
                    },
                    # No alpn_protocols: the handshake selects none, as Linkerd's proxy.
                    "tls_certificate_sds_secret_configs": [
                        {"name": self._sds.name, "sds_config": self._sds.config_source()}
                    ],
                },
            },
        }
        hcm = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": "linkerd_identity",
                "codec_type": "HTTP2",
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": "identity",
                            "domains": ["*"],
                            "routes": [
                                {
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": "controller", "timeout": "10s"},
                                }
                            ],
                        }
                    ]
                },
                "http_filters": [
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
                ],
            },
        }
        controller = {
            "name": "controller",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "controller",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": self._controller_port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        return {
            "node": {"id": "linkerd-identity-proxy", "cluster": "linkerd"},
            "static_resources": {
                "listeners": [
                    {
                        "name": "identity_inbound",
                        "address": {
                            "socket_address": {"address": "127.0.0.1", "port_value": self.port}
                        },
                        "listener_filters": [TLS_INSPECTOR],
                        "filter_chains": [
                            {
                                "filter_chain_match": {
                                    "transport_protocol": "tls",
                                    "server_names": [self.service_name],
                                },
                                "transport_socket": tls,
                                "filters": [hcm],
                            }
                        ],
                    }
                ],
                "clusters": [controller],
            },
        }

    # -- the RPC -------------------------------------------------------------------------

    async def _certify(self, request: Any, context: Any) -> Any:
        identity, token, der = identity_pb.read_request(request)
        dns: tuple[str, ...] = ()
        cn, key_kind = "", ""
        csr: x509.CertificateSigningRequest | None = None
        try:
            csr = x509.load_der_x509_csr(der) if der else None
        except ValueError:
            csr = None
        if csr is not None:
            dns, cn, key_kind = _describe(csr)

        async def abort(code: grpc.StatusCode, message: str) -> None:
            self.calls.append(CertifyCall(identity, dns, cn, key_kind, code.name, message=message))
            await context.abort(code, message)

        if self.fail_with is not None:
            await abort(*self.fail_with)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if not identity:
            await abort(invalid, "missing identity")
        if not token:
            await abort(invalid, "missing token")
        if not der:
            await abort(invalid, "missing certificate signing request")
        if csr is None:
            await abort(invalid, "x509: malformed certificate request")
            raise AssertionError  # unreachable: abort raises
        problem = _csr_problem(csr, identity)
        if problem:
            await abort(invalid, problem)
        try:
            # A TokenReview is an HTTP call: off the event loop.
            namespace, sa = await asyncio.to_thread(
                self.tokens.review, token.decode("ascii", "replace"), AUDIENCE
            )
        except TokenError as exc:
            await abort(grpc.StatusCode.FAILED_PRECONDITION, f"authentication failed: {exc}")
            raise  # unreachable
        found = self.identity_name(namespace, sa)
        if identity != found:
            await abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "requested identity did not match provided token: "
                f"requested={identity}; found={found}",
            )
        with self._lock:
            issuer = self._issuer
        chain = issuer.sign_csr(
            csr,
            now=dt.datetime.now(dt.UTC),
            validity=self.lifetime,
            uri_sans=[],
            dns_sans=[identity],
        )
        leaf, intermediates = chain[0], chain[1:-1]
        self.calls.append(
            CertifyCall(identity, dns, cn, key_kind, "OK", issued_serial=leaf.serial_number)
        )
        return identity_pb.certify_response(
            leaf.public_bytes(serialization.Encoding.DER),
            [c.public_bytes(serialization.Encoding.DER) for c in intermediates],
            leaf.not_valid_after_utc,
        )


def _describe(csr: x509.CertificateSigningRequest) -> tuple[tuple[str, ...], str, str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"ec-{key.curve.name}"
    else:
        kind = type(key).__name__
    return dns, str(cns[0].value) if cns else "", kind


def _csr_problem(csr: x509.CertificateSigningRequest, identity: str) -> str:
    """Linkerd's ``checkCSR`` (plus the P-256 key rule); "" when the CSR is acceptable."""
    if not csr.is_signature_valid:
        return "x509: CSR signature does not verify"
    key = csr.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        return "CSR key must be ECDSA P-256"
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    dns = san.get_values_for_type(x509.DNSName)
    if len(dns) != 1:
        return "CSR must have exactly one DNSName"
    if dns[0] != identity:
        return f"CSR name does not match requested identity: csr={dns[0]}; req={identity}"
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn not in ("", identity):
        return f"invalid CommonName: {cn}"
    if san.get_values_for_type(x509.RFC822Name):
        return "cannot validate email addresses"
    if san.get_values_for_type(x509.IPAddress):
        return "cannot validate IP addresses"
    if san.get_values_for_type(x509.UniformResourceIdentifier):
        return "cannot validate URIs"
    return ""
