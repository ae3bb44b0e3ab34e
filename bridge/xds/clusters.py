"""Build one Cluster or ClusterLoadAssignment from one IR :class:`Upstream`.

Pure functions of their argument: no memo, no I/O. :mod:`bridge.xds.translate`
decides when to call them (only for upstreams that changed).

What the clusters look like, and why:

- ``EDS`` upstreams get an EDS cluster over ADS whose ``service_name`` is the
  cluster name; endpoints come as a separate ClusterLoadAssignment, one
  locality entry per zone. Every entry sets ``locality`` (possibly empty) and a
  ``load_balancing_weight`` (its endpoint count, so a proxyless gRPC client —
  which picks a locality by weight first — spreads load evenly per endpoint);
  gRPC NACKs an entry without them. An upstream without endpoints still gets
  an (empty) assignment: Envoy keeps a cluster warming until one arrives.
- ``STRICT_DNS`` upstreams carry their one DNS target inline
  (``V4_PREFERRED``: cluster DNS answers A records; AAAA is used if that is
  all there is).
- HTTP/2 upstreams say so with ``HttpProtocolOptions.explicit_http_config``.
- Upstream TLS: SNI, TLS versions and ALPN from the IR; the client certificate
  and the trust bundle by SDS name over ADS (so a rotation is a Secret update
  and the cluster stays untouched); SANs are matched exactly with their type
  (URI or DNS) in the default validation context, which Envoy combines with
  the SDS trust bundle. An IR with SAN checks but no trust bundle is emitted as
  it is (Envoy refuses SAN checks without a CA; resolve reports that case as a
  diagnostic before it gets here).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3
from envoy.type.matcher.v3 import string_pb2 as string_matcher_v3
from google.protobuf import any_pb2 as any_v
from google.protobuf import duration_pb2 as duration_v

from bridge.model.ir import Discovery, Endpoint, Protocol, Upstream, UpstreamTls
from bridge.xds import names

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"


def ads_config_source() -> config_source_v3.ConfigSource:
    """``{ads: {}, resource_api_version: V3}``: fetch over the ADS stream."""
    source = config_source_v3.ConfigSource(resource_api_version=config_source_v3.ApiVersion.V3)
    source.ads.SetInParent()
    return source


_ADS = ads_config_source()


def duration_ms(ms: int) -> duration_v.Duration:
    return duration_v.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def build_cluster(upstream: Upstream, name: str | None = None) -> cluster_v3.Cluster:
    """The Cluster for one upstream (its endpoints are not part of it for EDS).

    ``name`` is ``names.cluster_name(upstream.key)``, passed in when the caller has it.
    """
    if name is None:
        name = names.cluster_name(upstream.key)
    cluster = cluster_v3.Cluster(
        name=name,
        connect_timeout=duration_ms(upstream.connect_timeout_ms),
        lb_policy=cluster_v3.Cluster.ROUND_ROBIN,
    )
    if upstream.discovery is Discovery.EDS:
        cluster.type = cluster_v3.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ADS)
        cluster.eds_cluster_config.service_name = name  # names.eds_service_name
    else:
        cluster.type = cluster_v3.Cluster.STRICT_DNS
        cluster.dns_lookup_family = cluster_v3.Cluster.V4_PREFERRED
        cluster.load_assignment.cluster_name = name
        if upstream.dns is not None:
            entry = cluster.load_assignment.endpoints.add()
            _set_address(entry.lb_endpoints.add(), upstream.dns.host, upstream.dns.port)
    if upstream.protocol is Protocol.HTTP2:
        options = http_options_v3.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.CopyFrom(
            protocol_v3.Http2ProtocolOptions()
        )
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)
    if upstream.tls is not None:
        cluster.transport_socket.name = TLS_TRANSPORT_SOCKET
        cluster.transport_socket.typed_config.CopyFrom(_pack(upstream_tls_context(upstream.tls)))
    return cluster


def upstream_tls_context(tls: UpstreamTls) -> tls_v3.UpstreamTlsContext:
    """The UpstreamTlsContext for an IR TLS policy (secrets referenced by SDS name)."""
    context = tls_v3.UpstreamTlsContext()
    if tls.sni:
        context.sni = tls.sni
    common = context.common_tls_context
    common.tls_params.tls_minimum_protocol_version = _tls_version(tls.min_version)
    common.tls_params.tls_maximum_protocol_version = _tls_version(tls.max_version)
    common.alpn_protocols.extend(tls.alpn)
    if tls.client_identity is not None:
        sds = common.tls_certificate_sds_secret_configs.add(
            name=names.secret_name(tls.client_identity)
        )
        sds.sds_config.CopyFrom(_ADS)
    matchers = [
        tls_common_v3.SubjectAltNameMatcher(
            san_type=_san_type(san.kind),
            matcher=string_matcher_v3.StringMatcher(exact=san.value),
        )
        for san in tls.verify_sans
    ]
    if tls.trust_bundle is not None:
        combined = common.combined_validation_context
        combined.default_validation_context.match_typed_subject_alt_names.extend(matchers)
        combined.validation_context_sds_secret_config.name = names.secret_name(tls.trust_bundle)
        combined.validation_context_sds_secret_config.sds_config.CopyFrom(_ADS)
    elif matchers:
        common.validation_context.match_typed_subject_alt_names.extend(matchers)
    return context


def build_load_assignment(
    upstream: Upstream, name: str | None = None
) -> endpoint_v3.ClusterLoadAssignment:
    """The ClusterLoadAssignment of an EDS upstream: one locality entry per zone."""
    cla = endpoint_v3.ClusterLoadAssignment(
        cluster_name=name if name is not None else names.cluster_name(upstream.key)
    )
    by_zone: dict[str, list[Endpoint]] = {}
    for endpoint in upstream.endpoints:
        by_zone.setdefault(endpoint.zone, []).append(endpoint)
    for zone in sorted(by_zone):
        members = by_zone[zone]
        entry = cla.endpoints.add()
        entry.locality.SetInParent()  # present even when empty: gRPC requires it
        if zone:
            entry.locality.zone = zone
        entry.load_balancing_weight.value = len(members)
        add = entry.lb_endpoints.add
        for endpoint in members:
            # Chained attribute sets are the fastest way to fill upb messages here.
            socket = add().endpoint.address.socket_address
            socket.address = endpoint.address
            socket.port_value = endpoint.port
    return cla


def _set_address(lb_endpoint: endpoint_components_v3.LbEndpoint, host: str, port: int) -> None:
    socket = lb_endpoint.endpoint.address.socket_address
    socket.address = host
    socket.port_value = port


def _tls_version(name: str) -> tls_common_v3.TlsParameters.TlsProtocol.ValueType:
    try:
        return tls_common_v3.TlsParameters.TlsProtocol.Value(name)
    except ValueError as exc:
        raise ValueError(
            f"unknown TLS version {name!r} in the IR (expected one of "
            f"{', '.join(tls_common_v3.TlsParameters.TlsProtocol.keys())})"
        ) from exc


def _san_type(kind: str) -> tls_common_v3.SubjectAltNameMatcher.SanType.ValueType:
    if kind not in ("URI", "DNS"):
        raise ValueError(f"unknown SAN kind {kind!r} in the IR (expected URI or DNS)")
    return tls_common_v3.SubjectAltNameMatcher.SanType.Value(kind)


def _pack(message: tls_v3.UpstreamTlsContext) -> any_v.Any:
    packed = any_v.Any()
    packed.Pack(message)
    return packed
