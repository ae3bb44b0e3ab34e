"""Build Listeners, RouteConfigurations, VirtualHosts and Routes from the IR.

Pure functions of their arguments: no memo, no I/O. :mod:`bridge.xds.translate`
decides when to call them.

What they look like, and why:

- A Listener per IR listener: its address and port, one filter chain holding an
  HTTP connection manager that fetches its routes by RDS over ADS (the route
  configuration named by :func:`bridge.xds.names.route_config_name`), with the
  router as the last (only) HTTP filter. ``use_remote_address`` because this
  is the edge: the client's address is the peer's, not a header's.
  ``normalize_path`` and ``merge_slashes`` so ``/api/../admin`` or
  ``//admin`` cannot slip past prefix routes. ``strip_any_host_port`` because
  clients reach the gateway on non-default ports (``Host: example.com:8080``)
  and virtual hosts name bare hosts.
- A VirtualHost per IR host: ``domains`` is ``[host]`` (``*`` is Envoy's
  catch-all, ``*.example.com`` its suffix wildcard).
- Routes in IR order (longest prefix first): prefix match, the upstream's
  cluster, ``prefix_rewrite``, ``timeout`` (``0`` disables it, as in Envoy),
  request headers to set (``OVERWRITE_IF_EXISTS_OR_ADD``) and to remove.
  Envoy applies a route's removals before its additions
  (``HeaderParser::evaluateHeaders``), so a header both removed and added
  ends up with exactly the configured value — the way to strip a
  client-supplied copy (``l5d-dst-override``) and set our own. Envoy treats
  ``%`` in header values as a formatter command (a stray one makes it reject
  the whole route configuration); IR values are literal, so ``%`` is written
  as ``%%``. An empty value is kept (``keep_empty_value``)
  rather than silently dropped. Envoy rejects removing ``host`` or
  ``:``-prefixed headers; resolve must not ask for that.
"""

from __future__ import annotations

import functools

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import any_pb2 as any_v

from bridge.model.ir import Listener, Route, VirtualHost
from bridge.xds import names
from bridge.xds.clusters import ads_config_source, duration_ms

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"

_ROUTER_CONFIG = any_v.Any()
_ROUTER_CONFIG.Pack(router_v3.Router())


def build_listener(listener: Listener) -> listener_v3.Listener:
    """The Listener for one IR listener, routes by RDS."""
    name = names.listener_name(listener)
    hcm = hcm_v3.HttpConnectionManager(
        stat_prefix=name,
        merge_slashes=True,
        strip_any_host_port=True,
    )
    hcm.use_remote_address.value = True
    hcm.normalize_path.value = True
    hcm.rds.route_config_name = names.route_config_name(listener)
    hcm.rds.config_source.CopyFrom(ads_config_source())
    router = hcm.http_filters.add(name=ROUTER)
    router.typed_config.CopyFrom(_ROUTER_CONFIG)

    out = listener_v3.Listener(name=name)
    socket = out.address.socket_address
    socket.address = listener.address
    socket.port_value = listener.port
    network_filter = out.filter_chains.add().filters.add(name=HTTP_CONNECTION_MANAGER)
    network_filter.typed_config.Pack(hcm)
    return out


def build_route_configuration(
    listener: Listener, virtual_hosts: list[route_components_v3.VirtualHost]
) -> route_v3.RouteConfiguration:
    """The RouteConfiguration of one listener, from already-built virtual hosts."""
    config = route_v3.RouteConfiguration(name=names.route_config_name(listener))
    config.virtual_hosts.extend(virtual_hosts)
    return config


def build_virtual_host(
    vhost: VirtualHost, routes: list[route_components_v3.Route]
) -> route_components_v3.VirtualHost:
    """The VirtualHost for one IR host, from already-built routes (in IR order)."""
    out = route_components_v3.VirtualHost(
        name=names.virtual_host_name(vhost.host), domains=[vhost.host]
    )
    out.routes.extend(routes)
    return out


def build_route(route: Route) -> route_components_v3.Route:
    """One prefix route to the upstream's cluster."""
    out = route_components_v3.Route()
    fill_route(out, route)
    return out


def fill_route(out: route_components_v3.Route, route: Route) -> None:
    """:func:`build_route` into an empty Route message, e.g. one just added to a VirtualHost.

    Building routes in place saves copying each into its virtual host.
    """
    # The timeout from a template: a C-level copy instead of a Duration made per route.
    out.CopyFrom(_route_template(route.timeout_ms))
    out.name = names.route_name(route.source)
    out.match.prefix = route.prefix
    action = out.route
    action.cluster = names.cluster_name(route.upstream)
    if route.rewrite is not None:
        action.prefix_rewrite = route.rewrite
    for key, value in route.headers_to_add:
        option = out.request_headers_to_add.add(
            append_action=base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            keep_empty_value=not value,
        )
        option.header.key = key
        option.header.value = value.replace("%", "%%")
    out.request_headers_to_remove.extend(route.headers_to_remove)


@functools.lru_cache(maxsize=64)  # one per distinct timeout; bounded for churn
def _route_template(timeout_ms: int) -> route_components_v3.Route:
    """An otherwise empty Route with this timeout. Never mutated."""
    out = route_components_v3.Route()
    out.route.timeout.CopyFrom(duration_ms(timeout_ms))
    return out
