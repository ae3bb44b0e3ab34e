"""Small Envoy resources for server tests, built directly as protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import address_pb2 as address_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_v3
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources

_TYPE = {
    listener_v3.Listener: LISTENER,
    route_v3.RouteConfiguration: ROUTE,
    cluster_v3.Cluster: CLUSTER,
    endpoint_v3.ClusterLoadAssignment: ENDPOINT,
    secret_v3.Secret: SECRET,
}


def ads() -> config_source_v3.ConfigSource:
    return config_source_v3.ConfigSource(
        ads=config_source_v3.AggregatedConfigSource(),
        resource_api_version=config_source_v3.ApiVersion.V3,
    )


def cluster(
    name: str,
    *,
    tls_secret: str | None = None,
    ca_secret: str | None = None,
    connect_timeout_s: int = 1,
    http2: bool = False,
) -> cluster_v3.Cluster:
    c = cluster_v3.Cluster(name=name, type=cluster_v3.Cluster.EDS)
    c.eds_cluster_config.eds_config.CopyFrom(ads())
    c.connect_timeout.seconds = connect_timeout_s
    if http2:
        c.http2_protocol_options.SetInParent()
    if tls_secret or ca_secret:
        ctx = tls_v3.UpstreamTlsContext()
        if tls_secret:
            ctx.common_tls_context.tls_certificate_sds_secret_configs.add(
                name=tls_secret, sds_config=ads()
            )
        if ca_secret:
            ctx.common_tls_context.validation_context_sds_secret_config.name = ca_secret
            ctx.common_tls_context.validation_context_sds_secret_config.sds_config.CopyFrom(ads())
        c.transport_socket.name = "envoy.transport_sockets.tls"
        c.transport_socket.typed_config.Pack(ctx)
    return c


def cla(
    name: str, endpoints: Iterable[tuple[str, int]], zone: str = "zone-a"
) -> endpoint_v3.ClusterLoadAssignment:
    out = endpoint_v3.ClusterLoadAssignment(cluster_name=name)
    loc = out.endpoints.add()
    loc.locality.zone = zone
    loc.load_balancing_weight.value = 1
    for host, port in endpoints:
        lb = loc.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = host
        lb.endpoint.address.socket_address.port_value = port
        lb.load_balancing_weight.value = 1
    return out


def route_config(
    name: str, cluster_name: str, prefix: str = "/", domains: Iterable[str] = ("*",)
) -> route_v3.RouteConfiguration:
    rc = route_v3.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name="all", domains=list(domains))
    vh.routes.add(
        match=route_components_v3.RouteMatch(prefix=prefix),
        route=route_components_v3.RouteAction(cluster=cluster_name),
    )
    return rc


def hcm(route_name: str) -> hcm_v3.HttpConnectionManager:
    h = hcm_v3.HttpConnectionManager(stat_prefix="ingress")
    h.rds.route_config_name = route_name
    h.rds.config_source.CopyFrom(ads())
    router = h.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_v3.Router())
    return h


def listener(
    name: str, port: int, route_name: str, address: str = "127.0.0.1"
) -> listener_v3.Listener:
    lst = listener_v3.Listener(
        name=name,
        address=address_v3.Address(
            socket_address=address_v3.SocketAddress(address=address, port_value=port)
        ),
    )
    chain = lst.filter_chains.add()
    f = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm(route_name))
    return lst


def secret(name: str, ca_pem: str = "not-a-real-ca") -> secret_v3.Secret:
    return secret_v3.Secret(
        name=name,
        validation_context=tls_common_v3.CertificateValidationContext(
            trusted_ca=base_v3.DataSource(inline_string=ca_pem)
        ),
    )


def resources(*messages: Message, base: Resources | None = None) -> Resources:
    """Resources holding ``messages`` (by their ``name``), on top of ``base``'s."""
    by_type: dict[str, dict[str, Message]] = {
        t: dict(m) for t, m in (base.by_type.items() if base else ())
    }
    for m in messages:
        t = _TYPE[type(m)]
        name = m.cluster_name if isinstance(m, endpoint_v3.ClusterLoadAssignment) else m.name  # type: ignore[attr-defined]
        by_type.setdefault(t, {})[name] = m
    return Resources(FrozenDict({t: FrozenDict(m) for t, m in by_type.items()}))


def without(base: Resources, type_url: str, *names: str) -> Resources:
    by_type: Mapping[str, Mapping[str, Message]] = {
        t: FrozenDict({n: m for n, m in ms.items() if t != type_url or n not in names})
        for t, ms in base.by_type.items()
    }
    return Resources(FrozenDict(by_type))
