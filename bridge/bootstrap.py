"""Bootstrap configuration for clients of the bridge: Envoy and proxyless gRPC.

:func:`envoy_bootstrap` makes an Envoy bootstrap (a dict; :func:`bootstrap_yaml`
renders it) whose listeners and clusters all come from the bridge over one ADS
stream — state-of-the-world, or delta with ``delta=True`` (``DELTA_GRPC``).
The bridge is reached over HTTP/2 at:

- ``IP:PORT`` — a ``STATIC`` cluster;
- ``HOSTNAME:PORT`` (a Kubernetes Service name, when the gateway and the
  bridge run in separate pods) — a ``STRICT_DNS`` cluster, re-resolved so a
  moved bridge is found again;
- ``unix:/path`` — a Unix socket (same pod).

A name is looked up with Envoy's default family (IPv6 first, then IPv4), as a
Kubernetes Service name resolves; for a bridge in the same pod give its IP
(``127.0.0.1:18000``) or a Unix socket rather than ``localhost``, which may
resolve to ``::1`` while the bridge listens on ``127.0.0.1``.

With :class:`XdsTls` the connection is mutual TLS: Envoy presents the client
certificate and key from files (mounted from a Secret), verifies the bridge
against the CA file and the DNS name it dials (SNI and an exact DNS SAN
match), and offers ALPN ``h2``. The bridge sends secrets (SDS) only over mTLS,
a Unix socket or loopback, so a gateway in another pod needs this.

``listen_port`` is node metadata (``meshbridge.io/listen-port``): the port the
gateway's deployment exposes. The listeners themselves come from the bridge's
configuration over LDS; the bridge compares the two and warns, per node, when
the port the gateway's Service sends traffic to has no listener.

:func:`grpc_bootstrap` makes the JSON a proxyless gRPC client reads from
``GRPC_XDS_BOOTSTRAP``.

Pure functions: no I/O, no environment reads.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from bridge.errors import ConfigError

XDS_CLUSTER = "meshbridge_xds"
DEFAULT_NODE_CLUSTER = "meshbridge-gateway"
LISTEN_PORT_METADATA = "meshbridge.io/listen-port"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


@dataclass(frozen=True, slots=True)
class XdsTls:
    """Mutual TLS from Envoy to the bridge: files Envoy reads, and the name it checks.

    ``server_name`` is sent as SNI and must be a DNS SAN of the bridge's
    certificate; empty means the host of the xDS address (which must then be
    a name, not an IP).
    """

    cert_file: str
    key_file: str
    ca_file: str
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class _Target:
    address: dict[str, Any]
    host: str  # "" for a Unix socket
    is_ip: bool


def _xds_target(xds: str) -> _Target:
    if xds.startswith("unix:"):
        path = xds.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ConfigError(f"xDS address {xds!r} names no socket path (unix:/path)")
        return _Target({"pipe": {"path": path}}, "", False)
    host, sep, port = xds.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"xDS address {xds!r} is not HOST:PORT or unix:/path")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError(
                f"xDS address {xds!r}: {host!r} is neither an IP address nor a DNS name"
            ) from None
        is_ip = False
    return _Target({"socket_address": {"address": host, "port_value": int(port)}}, host, is_ip)


def _xds_address(xds: str) -> dict[str, Any]:
    return _xds_target(xds).address


def _transport_socket(tls: XdsTls, target: _Target, xds: str) -> dict[str, Any]:
    if not target.host:
        raise ConfigError(
            f"xDS address {xds!r}: TLS is for TCP addresses; a Unix socket is already private"
        )
    name = tls.server_name or ("" if target.is_ip else target.host)
    if not name:
        raise ConfigError(
            f"xDS address {xds!r} is an IP address: give the DNS name the bridge's "
            "certificate carries (the TLS server name) to verify it against"
        )
    for what, path in (("certificate", tls.cert_file), ("key", tls.key_file)):
        if not path:
            raise ConfigError(f"xDS mTLS needs the client {what} file of the gateway")
    if not tls.ca_file:
        raise ConfigError("xDS mTLS needs the CA file that signed the bridge's certificate")
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            "sni": name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert_file},
                        "private_key": {"filename": tls.key_file},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca_file},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": name}}
                    ],
                },
            },
        },
    }


def envoy_bootstrap(
    *,
    xds: str,
    node_id: str,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    listen_port: int | None = None,
    tls: XdsTls | None = None,
) -> dict[str, Any]:
    """An Envoy bootstrap that gets everything from the bridge at ``xds`` over ADS.

    ``listen_port`` goes into the node metadata, where the bridge checks it
    against the listeners it serves (see the module docstring). ``tls``
    makes the connection to the bridge mutual TLS.
    """
    if not node_id:
        raise ConfigError("an Envoy bootstrap needs a node id (--node-id)")
    if listen_port is not None and not 0 < listen_port < 65536:
        raise ConfigError(f"listen port {listen_port} is not a TCP port (1-65535)")
    target = _xds_target(xds)
    ads = {"ads": {}, "resource_api_version": "V3"}
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if listen_port is not None:
        node["metadata"] = {LISTEN_PORT_METADATA: listen_port}
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        # A name is resolved (and re-resolved: the bridge's pod may move); an IP or
        # a socket is used as it is.
        "type": "STATIC" if target.is_ip or not target.host else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": target.address}}]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # Notice a dead bridge quickly and reconnect.
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                    }
                },
            }
        },
    }
    if tls is not None:
        xds_cluster["transport_socket"] = _transport_socket(tls, target, xds)
    return {
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [xds_cluster]},
    }


def bootstrap_yaml(
    *,
    xds: str,
    node_id: str,
    listen_port: int | None = None,
    admin_port: int = 9901,
    delta: bool = False,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
    tls: XdsTls | None = None,
) -> str:
    """:func:`envoy_bootstrap` as YAML text (what ``meshbridge bootstrap`` prints)."""
    return yaml.safe_dump(
        envoy_bootstrap(
            xds=xds,
            node_id=node_id,
            node_cluster=node_cluster,
            admin_port=admin_port,
            delta=delta,
            listen_port=listen_port,
            tls=tls,
        ),
        sort_keys=False,
    )


def grpc_bootstrap(
    *, xds: str, node_id: str, node_cluster: str = "", zone: str = ""
) -> dict[str, Any]:
    """A gRPC xDS bootstrap (``GRPC_XDS_BOOTSTRAP``) for proxyless clients of the bridge."""
    if not node_id:
        raise ConfigError("a gRPC xDS bootstrap needs a node id")
    _xds_address(xds)  # validate
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if zone:
        node["locality"] = {"zone": zone}
    return {
        "xds_servers": [
            {
                "server_uri": xds,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": node,
    }


def grpc_bootstrap_json(*, xds: str, node_id: str, node_cluster: str = "", zone: str = "") -> str:
    return json.dumps(
        grpc_bootstrap(xds=xds, node_id=node_id, node_cluster=node_cluster, zone=zone), indent=2
    )
