"""Resources for proxyless gRPC clients (grpcio ``xds:///`` targets).

A gRPC client dialing ``xds:///<service>.<namespace>:<port>`` asks LDS for the
listener of that exact name, then RDS, CDS and EDS. For each IR
:class:`~bridge.model.ir.Upstream` this module makes:

- a Listener named :func:`listener_name` (``web.default:8080``; ``<port>`` is
  the Service port as the IR names it, so a named port reads
  ``web.default:http``) holding an ``api_listener`` with an
  HttpConnectionManager that takes its routes over ADS (RDS) and whose HTTP
  filters end with the router — gRPC NACKs anything else;
- a RouteConfiguration of the same name whose only virtual host (``*``) sends
  every request to the upstream's normal cluster
  (:func:`bridge.xds.names.cluster_name`).

The clusters and endpoints are the ones translation already makes (EDS over
ADS, round robin, every locality entry with ``locality`` and a weight).

Listeners with an ``api_listener`` are for gRPC clients only: Envoy refuses
them over LDS. Serve these to the proxyless clients' own node group.

Pure functions of their arguments: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.model.ir import Upstream, UpstreamKey
from bridge.xds import names
from bridge.xds.resources import LISTENER, ROUTE

ROUTER_FILTER = "envoy.filters.http.router"


def listener_name(key: UpstreamKey) -> str:
    """``<service>.<namespace>:<port>``: what a client puts after ``xds:///``."""
    return f"{key.service}.{key.namespace}:{key.port}"


def target(key: UpstreamKey) -> str:
    """The gRPC target a client dials for ``key``."""
    return f"xds:///{listener_name(key)}"


def _ads() -> config_source_v3.ConfigSource:
    source = config_source_v3.ConfigSource(resource_api_version=config_source_v3.ApiVersion.V3)
    source.ads.SetInParent()
    return source


def build_api_listener(key: UpstreamKey) -> listener_v3.Listener:
    name = listener_name(key)
    hcm = hcm_v3.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = name
    hcm.rds.config_source.CopyFrom(_ads())
    router = hcm.http_filters.add(name=ROUTER_FILTER)  # must be last
    router.typed_config.Pack(router_v3.Router())
    out = listener_v3.Listener(name=name)
    out.api_listener.api_listener.Pack(hcm)
    return out


def build_route_configuration(key: UpstreamKey) -> route_v3.RouteConfiguration:
    name = listener_name(key)
    rc = route_v3.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name=name, domains=["*"])
    vh.routes.add(
        match=route_components_v3.RouteMatch(prefix=""),
        route=route_components_v3.RouteAction(cluster=names.cluster_name(key)),
    )
    return rc


def proxyless_resources(
    upstreams: Iterable[Upstream],
) -> dict[str, FrozenDict[str, Message]]:
    """Listeners and route configurations (by type URL, then name) for ``upstreams``."""
    listeners: dict[str, Message] = {}
    routes: dict[str, Message] = {}
    for upstream in upstreams:
        name = listener_name(upstream.key)
        listeners[name] = build_api_listener(upstream.key)
        routes[name] = build_route_configuration(upstream.key)
    return {LISTENER: FrozenDict(listeners), ROUTE: FrozenDict(routes)}
