"""The demo's meshes: a local CA per mesh, and "sidecar" Envoys that enforce inbound mTLS.

``meshbridge demo`` (and the end-to-end tests) need, for each of Istio,
Linkerd and Consul, a backend that only answers the gateway when it speaks
that mesh's mTLS correctly. Each builder here returns an Envoy bootstrap (a
plain dict, ready for YAML) for one such sidecar:

- Istio: client certificate required and chained to the mesh root; TLS 1.2
  to 1.3; the filter chain matches only the ALPN values Istio's clients offer
  (``istio-http/1.0``, ``istio-http/1.1``, ``istio-h2``), as Istio's inbound
  listener does; the server certificate carries
  ``spiffe://<td>/ns/<ns>/sa/<sa>``.
- Linkerd: TLS 1.3 only; the filter chain matches only SNI equal to the
  server's identity name (any other SNI finds no chain and is refused); client
  certificate required; no ALPN; the server certificate's DNS SAN is the
  identity.
- Consul: client certificate required and chained to the Connect root;
  intentions as Envoy network RBAC on the client's SPIFFE URI SAN (allowed IDs
  pass, every other is refused); the server certificate carries the
  service's SPIFFE ID.

Every sidecar answers (directly, or from a plaintext backend behind it) with
response headers naming the peer it verified: ``x-mesh-peer`` (the client's
URI SAN, or DNS SAN for Linkerd) and ``x-mesh-peer-serial``, plus
``x-mesh-sidecar`` (its name). Stats use the prefix ``sidecar_<name>``.
``max_requests_per_connection`` makes a sidecar close connections after that
many requests, so clients handshake anew and certificate rotations show.

:class:`DemoMeshCa` plays a mesh's CA: it issues the gateway's identities
and the workloads' certificates, and writes an istio-agent style
``OUTPUT_CERTS`` directory for the ``files:DIR`` identity mode. The keys it
writes are throwaway keys of a local demo CA, playing the agent's role; they
go to a directory the caller owns (created 0700, files 0600).

Builders do no I/O; only :meth:`DemoMeshCa.write_output_certs` and
:func:`write_sds_certificate` write (keys 0600 in 0700 directories).

A sidecar's bootstrap may also open an admin port (``admin_port``) so its
starter can tell when it is ready. ``port`` (and ``admin_port``) 0 lets Envoy
pick a free port, which its admin then reports (the listener is named
``inbound_<name>``); the listener binds its port alone (no ``SO_REUSEPORT``),
so a port taken by another process fails Envoy's start instead of sharing it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.identity import pki
from bridge.identity.files import CERT_CHAIN, KEY, ROOT_CERT
from bridge.model.ir import Mesh
from bridge.model.secrets import PrivateKey

TYPE = "type.googleapis.com/"
HCM_TYPE = (
    TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = TYPE + "envoy.extensions.filters.http.router.v3.Router"
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": TYPE + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    },
}
ISTIO_INBOUND_ALPN = ("istio-http/1.0", "istio-http/1.1", "istio-h2")

DEMO_CONSUL_TRUST_DOMAIN = "5f3c1e2a-7d4b-4c1e-9a60-2b8f0c7d1e55.consul"
DEMO_LINKERD_NAMESPACE = "linkerd"
DEMO_TRUST_DOMAIN = "cluster.local"


# -- where a sidecar's certificate and trust come from ---------------------------


@dataclass(frozen=True, slots=True)
class InlineCert:
    cert_chain_pem: str
    private_key: PrivateKey

    @classmethod
    def of(cls, issued: pki.Issued) -> InlineCert:
        return cls(issued.cert_chain_pem, issued.private_key)


@dataclass(frozen=True, slots=True)
class SdsFile:
    """A secret Envoy reads from a file and re-reads when ``directory`` sees a move."""

    name: str
    path: str  # a file inside ``directory``, replaced by rename

    @property
    def directory(self) -> str:
        return str(Path(self.path).parent)

    def config_source(self) -> dict[str, Any]:
        return {
            "path_config_source": {
                "path": self.path,
                "watched_directory": {"path": self.directory},
            },
            "resource_api_version": "V3",
        }


CertSource = InlineCert | SdsFile
TrustSource = str | SdsFile  # a PEM bundle inline, or an SDS file


@dataclass(frozen=True, slots=True)
class Backend:
    """A plaintext backend behind the sidecar (absent: the sidecar answers itself)."""

    host: str
    port: int


# -- builders --------------------------------------------------------------------


def istio_sidecar(
    *,
    name: str,
    port: int,
    cert: CertSource,
    trust: TrustSource,
    backend: Backend | None = None,
    address: str = "127.0.0.1",
    max_requests_per_connection: int = 0,
    admin_port: int | None = None,
) -> dict[str, Any]:
    """An Istio-style inbound sidecar: mTLS 1.2-1.3, Istio ALPN only, client cert required."""
    tls = _downstream_tls(cert, trust, min_version="TLSv1_2", alpn=("h2", "http/1.1"))
    chain = {
        "filter_chain_match": {
            "transport_protocol": "tls",
            "application_protocols": list(ISTIO_INBOUND_ALPN),
        },
        "transport_socket": tls,
        "filters": [
            _hcm(
                name,
                backend,
                peer="%DOWNSTREAM_PEER_URI_SAN%",
                max_requests=max_requests_per_connection,
            )
        ],
    }
    return _bootstrap(name, address, port, [chain], backend, admin_port)


def linkerd_sidecar(
    *,
    name: str,
    port: int,
    identity: str,
    cert: CertSource,
    trust: TrustSource,
    backend: Backend | None = None,
    address: str = "127.0.0.1",
    max_requests_per_connection: int = 0,
    admin_port: int | None = None,
) -> dict[str, Any]:
    """A Linkerd-style inbound proxy: TLS 1.3 only, SNI must be ``identity``, no ALPN."""
    tls = _downstream_tls(cert, trust, min_version="TLSv1_3", alpn=())
    chain = {
        "filter_chain_match": {"transport_protocol": "tls", "server_names": [identity]},
        "transport_socket": tls,
        "filters": [
            _hcm(
                name,
                backend,
                peer="%DOWNSTREAM_PEER_DNS_SAN%",
                max_requests=max_requests_per_connection,
            )
        ],
    }
    return _bootstrap(name, address, port, [chain], backend, admin_port)


def consul_sidecar(
    *,
    name: str,
    port: int,
    cert: CertSource,
    trust: TrustSource,
    allow: Sequence[str],
    backend: Backend | None = None,
    address: str = "127.0.0.1",
    max_requests_per_connection: int = 0,
    admin_port: int | None = None,
) -> dict[str, Any]:
    """A Consul Connect public listener: client cert from the Connect CA, intentions as RBAC.

    ``allow`` lists the SPIFFE IDs with an allow intention (e.g. the gateway's
    ``spiffe://<td>/ns/default/dc/dc1/svc/meshbridge``); every other is refused.
    """
    tls = _downstream_tls(cert, trust, min_version="TLSv1_2", alpn=())
    rbac = {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": f"sidecar_{name}",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "consul-intentions-layer4": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {"authenticated": {"principal_name": {"exact": spiffe}}}
                            for spiffe in allow
                        ],
                    }
                },
            },
        },
    }
    chain = {
        "transport_socket": tls,
        "filters": [
            rbac,
            _hcm(
                name,
                backend,
                peer="%DOWNSTREAM_PEER_URI_SAN%",
                max_requests=max_requests_per_connection,
            ),
        ],
    }
    return _bootstrap(name, address, port, [chain], backend, admin_port)


def _bootstrap(
    name: str,
    address: str,
    port: int,
    chains: list[dict[str, Any]],
    backend: Backend | None,
    admin_port: int | None,
) -> dict[str, Any]:
    clusters = []
    if backend is not None:
        clusters.append(
            {
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "backend",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": backend.host,
                                                "port_value": backend.port,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    boot: dict[str, Any] = {
        "node": {"id": f"sidecar-{name}", "cluster": "meshbridge-demo"},
        "static_resources": {
            "listeners": [
                {
                    "name": f"inbound_{name}",
                    "address": {"socket_address": {"address": address, "port_value": port}},
                    # The port is this sidecar's alone: without this, another process
                    # could listen on it too (SO_REUSEPORT) and get part of its traffic.
                    "enable_reuse_port": False,
                    "listener_filters": [TLS_INSPECTOR],
                    "filter_chains": chains,
                }
            ],
            "clusters": clusters,
        },
    }
    if admin_port is not None:
        boot["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        }
    return boot


def _downstream_tls(
    cert: CertSource, trust: TrustSource, *, min_version: str, alpn: Sequence[str]
) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_params": {
            "tls_minimum_protocol_version": min_version,
            "tls_maximum_protocol_version": "TLSv1_3",
        }
    }
    if alpn:
        common["alpn_protocols"] = list(alpn)
    if isinstance(cert, InlineCert):
        common["tls_certificates"] = [
            {
                "certificate_chain": {"inline_string": cert.cert_chain_pem},
                # The demo workload's throwaway key, handed to its own Envoy.
                "private_key": {"inline_string": cert.private_key.reveal().decode()},
            }
        ]
    else:
        common["tls_certificate_sds_secret_configs"] = [
            {"name": cert.name, "sds_config": cert.config_source()}
        ]
    if isinstance(trust, SdsFile):
        common["validation_context_sds_secret_config"] = {
            "name": trust.name,
            "sds_config": trust.config_source(),
        }
    else:
        common["validation_context"] = {"trusted_ca": {"inline_string": trust}}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": common,
        },
    }


def _hcm(name: str, backend: Backend | None, *, peer: str, max_requests: int) -> dict[str, Any]:
    if backend is not None:
        action: dict[str, Any] = {"route": {"cluster": "backend"}}
    else:
        action = {
            "direct_response": {"status": 200, "body": {"inline_string": f"hello from {name}\n"}}
        }
    headers = {
        "x-mesh-sidecar": name,
        "x-mesh-peer": peer,
        "x-mesh-peer-serial": "%DOWNSTREAM_PEER_SERIAL%",
    }
    options: dict[str, Any] = {}
    if max_requests:
        # Closing connections after N requests makes clients handshake again
        # and again, so certificate rotations show on the wire.
        options["common_http_protocol_options"] = {"max_requests_per_connection": max_requests}
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": f"sidecar_{name}",
            "codec_type": "AUTO",
            **options,
            "route_config": {
                "name": f"sidecar_{name}",
                "virtual_hosts": [
                    {
                        "name": "backend",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **action}],
                        "response_headers_to_add": [
                            {
                                "header": {"key": k, "value": v},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                            for k, v in headers.items()
                        ],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER_TYPE},
                }
            ],
        },
    }


# -- the demo's CAs ---------------------------------------------------------------


class DemoMeshCa:
    """One mesh's CA in the demo: its root, the gateway's identities, workload certs."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        now: dt.datetime,
        trust_domain: str | None = None,
        linkerd_namespace: str = DEMO_LINKERD_NAMESPACE,
        datacenter: str = "dc1",
        name: str | None = None,
    ) -> None:
        self.mesh = mesh
        if trust_domain is None:
            trust_domain = DEMO_CONSUL_TRUST_DOMAIN if mesh is Mesh.CONSUL else DEMO_TRUST_DOMAIN
        self.trust_domain = trust_domain
        self.linkerd_namespace = linkerd_namespace
        self.datacenter = datacenter
        # Consul's roots carry the trust domain as a SPIFFE URI SAN.
        self.ca = pki.LocalCA(
            name=name or f"meshbridge demo {mesh.value} root",
            now=now,
            trust_domain=trust_domain if mesh is Mesh.CONSUL else None,
        )

    @property
    def root_pem(self) -> str:
        return self.ca.root_pem

    def workload_sans(self, namespace: str, name: str) -> tuple[list[str], list[str]]:
        """(URI SANs, DNS SANs) of a workload: ``name`` is the SA (Istio, Linkerd) or service."""
        if self.mesh is Mesh.ISTIO:
            return [f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{name}"], []
        if self.mesh is Mesh.LINKERD:
            return [], [self.linkerd_identity(namespace, name)]
        ns = namespace or "default"
        return [f"spiffe://{self.trust_domain}/ns/{ns}/dc/{self.datacenter}/svc/{name}"], []

    def linkerd_identity(self, namespace: str, service_account: str) -> str:
        return (
            f"{service_account}.{namespace}.serviceaccount.identity."
            f"{self.linkerd_namespace}.{self.trust_domain}"
        )

    def issue(
        self,
        namespace: str,
        name: str,
        *,
        now: dt.datetime,
        validity: dt.timedelta = dt.timedelta(hours=24),
    ) -> pki.Issued:
        """A workload certificate (the gateway's, or a backend's) for ``namespace``/``name``."""
        uris, dns = self.workload_sans(namespace, name)
        return self.ca.issue(now=now, validity=validity, uri_sans=uris, dns_sans=dns)

    def write_output_certs(
        self, directory: str | Path, issued: pki.Issued, *, roots_pem: str | None = None
    ) -> None:
        """Write ``issued`` as an istio-agent with ``OUTPUT_CERTS`` would (each file by rename).

        The chain goes first and the key second, as the agent does; the
        ``files:DIR`` provider waits until both have changed.
        """
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomic(path / CERT_CHAIN, issued.cert_chain_pem.encode())
        _write_atomic(path / KEY, issued.private_key.reveal(), mode=0o600)
        _write_atomic(path / ROOT_CERT, (roots_pem or self.root_pem).encode())


SDS_SECRET_TYPE = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"


def write_sds_certificate(sds: SdsFile, issued: pki.Issued) -> None:
    """Write ``issued`` as the Secret ``sds.name`` for Envoy's file-based SDS (0600, by rename).

    This is how a demo sidecar gets its own certificate: like a mesh agent,
    the demo writes it into a directory only it may read (created 0700); the
    key never goes into an Envoy bootstrap or onto a command line.
    """
    path = Path(sds.path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {
        "resources": [
            {
                "@type": SDS_SECRET_TYPE,
                "name": sds.name,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": issued.cert_chain_pem},
                    # The demo workload's throwaway key, for its own Envoy only.
                    "private_key": {"inline_string": issued.private_key.reveal().decode()},
                },
            }
        ]
    }
    _write_atomic(path, json.dumps(doc).encode(), mode=0o600)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
