"""The intermediate representation: what the edge Envoy must do, mesh-neutral.

``resolve`` makes it from the World; ``bridge.xds.translate`` turns it into
Envoy resources. IR values carry *keys* (:class:`UpstreamKey`, secret names);
Envoy resource names are made from them only in :mod:`bridge.xds.names`.

Every value is frozen and hashable. Unchanged parts of the world keep the very
same IR objects across builds, which is what lets translation be incremental
(``new is old`` ⇒ reuse the previous Envoy resource).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import ObjectRef
from bridge.model.secrets import PrivateKey

SecretName = NewType("SecretName", str)


class Resolver(StrEnum):
    ENDPOINTS = "endpoints"
    SERVICE = "service"
    CONSUL = "consul"


class Mesh(StrEnum):
    AUTO = "auto"
    NONE = "none"
    ISTIO = "istio"
    LINKERD = "linkerd"
    CONSUL = "consul"


class Discovery(StrEnum):
    EDS = "eds"  # endpoints pushed by the bridge
    STRICT_DNS = "strict_dns"  # Envoy resolves a DNS name


class Protocol(StrEnum):
    HTTP1 = "http1"
    HTTP2 = "http2"


@dataclass(frozen=True, slots=True, order=True)
class UpstreamKey:
    """One upstream: a Service port (``port`` is the Service port's name or number)."""

    namespace: str
    service: str
    port: str


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    address: str
    port: int
    zone: str = ""


@dataclass(frozen=True, slots=True)
class DnsTarget:
    host: str
    port: int


@dataclass(frozen=True, slots=True, order=True)
class SanMatch:
    kind: str  # "URI" or "DNS"
    value: str  # exact match


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How the gateway originates TLS to an upstream and whom it accepts."""

    sni: str | None = None
    verify_sans: tuple[SanMatch, ...] = ()
    alpn: tuple[str, ...] = ()
    min_version: str = "TLSv1_2"
    max_version: str = "TLSv1_3"
    client_identity: SecretName | None = None  # SDS tls_certificate
    trust_bundle: SecretName | None = None  # SDS validation_context


@dataclass(frozen=True, slots=True)
class Upstream:
    key: UpstreamKey
    discovery: Discovery
    endpoints: tuple[Endpoint, ...] = ()  # EDS: sorted, ready only
    dns: DnsTarget | None = None  # STRICT_DNS target
    tls: UpstreamTls | None = None
    protocol: Protocol = Protocol.HTTP1
    connect_timeout_ms: int = 5000
    mesh: Mesh = Mesh.NONE


@dataclass(frozen=True, slots=True)
class Route:
    host: str  # the virtual host's domain: exact, "*.example.com" or "*"
    prefix: str
    upstream: UpstreamKey
    source: ObjectRef  # the Service that asked for it
    rewrite: str | None = None
    timeout_ms: int = 15_000
    headers_to_add: tuple[tuple[str, str], ...] = ()  # set (overwrite) on the request
    headers_to_remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualHost:
    host: str
    routes: tuple[Route, ...]  # longest prefix first


@dataclass(frozen=True, slots=True, order=True)
class Listener:
    name: str
    port: int
    address: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class IdentitySecret:
    """The gateway's workload certificate for one mesh (SDS ``tls_certificate``)."""

    name: SecretName
    cert_chain_pem: str
    private_key: PrivateKey
    not_after: str = ""  # RFC 3339, for display


@dataclass(frozen=True, slots=True)
class TrustSecret:
    """A mesh's trust bundle (SDS ``validation_context``)."""

    name: SecretName
    ca_bundle_pem: str
    # The mesh's SPIFFE trust domain when the CA says it (Consul Connect roots'
    # ``TrustDomain``); resolve needs it for SNI and SAN. "" = unknown.
    trust_domain: str = ""


Secret = IdentitySecret | TrustSecret


@dataclass(frozen=True, slots=True)
class Ir:
    listeners: tuple[Listener, ...] = ()
    virtual_hosts: tuple[VirtualHost, ...] = ()  # sorted by host, "*" last
    upstreams: Mapping[UpstreamKey, Upstream] = field(default_factory=FrozenDict)
    secrets: Mapping[SecretName, Secret] = field(default_factory=FrozenDict)


@dataclass(frozen=True, slots=True)
class ServiceResolution:
    """What one Service resolved to, and why — the unit of incremental work."""

    ref: ObjectRef
    exposed: bool
    resolver: Resolver | None = None
    mesh: Mesh | None = None
    mesh_reason: str = ""  # e.g. "namespace label istio-injection=enabled"
    routes: tuple[Route, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()


@dataclass(frozen=True, slots=True)
class Resolved:
    """The output of ``resolve``: per-Service results, the IR and every diagnostic."""

    services: Mapping[ObjectRef, ServiceResolution]
    ir: Ir
    diagnostics: tuple[Diagnostic, ...] = ()
    # ``resolve``'s private state for the next incremental run (the World and
    # settings this was made from, route claims). Opaque to everyone else;
    # not part of equality.
    basis: object = field(default=None, compare=False, repr=False)
