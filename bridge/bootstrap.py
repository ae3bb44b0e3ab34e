"""Bootstrap configuration for clients of the bridge: Envoy and proxyless gRPC.

:func:`envoy_bootstrap` makes an Envoy bootstrap (a dict; :func:`bootstrap_yaml`
renders it) whose listeners and clusters all come from the bridge over one ADS
stream — state-of-the-world, or delta with ``delta=True`` (``DELTA_GRPC``).
The bridge is reached over HTTP/2 at ``HOST:PORT`` or at a Unix socket
(``unix:/path``). :func:`grpc_bootstrap` makes the JSON a proxyless gRPC
client reads from ``GRPC_XDS_BOOTSTRAP``.

Pure functions: no I/O, no environment reads.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from bridge.errors import ConfigError

XDS_CLUSTER = "meshbridge_xds"
DEFAULT_NODE_CLUSTER = "meshbridge-gateway"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _xds_address(xds: str) -> dict[str, Any]:
    if xds.startswith("unix:"):
        path = xds.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ConfigError(f"xDS address {xds!r} names no socket path (unix:/path)")
        return {"pipe": {"path": path}}
    host, sep, port = xds.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"xDS address {xds!r} is not HOST:PORT or unix:/path")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def envoy_bootstrap(
    *,
    xds: str,
    node_id: str,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    listen_port: int | None = None,
) -> dict[str, Any]:
    """An Envoy bootstrap that gets everything from the bridge at ``xds`` over ADS.

    ``listen_port`` is recorded in the node metadata only: the gateway's
    listeners (and their ports) are part of the bridge's configuration.
    """
    if not node_id:
        raise ConfigError("an Envoy bootstrap needs a node id (--node-id)")
    ads = {"ads": {}, "resource_api_version": "V3"}
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if listen_port is not None:
        node["metadata"] = {"meshbridge.io/listen-port": listen_port}
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
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _xds_address(xds)}}]}
                        ],
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
            ]
        },
    }


def bootstrap_yaml(
    *,
    xds: str,
    node_id: str,
    listen_port: int | None = None,
    admin_port: int = 9901,
    delta: bool = False,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
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
