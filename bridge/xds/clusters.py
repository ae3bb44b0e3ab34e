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

How, for speed (a cold build makes 10k clusters and 100k endpoints):

- the plain EDS cluster (HTTP/1, no TLS: most of a large mesh) is a copy of a
  template built once per connect timeout by the general code, with the name
  set; anything else is built field by field;
- a ClusterLoadAssignment is encoded straight to protobuf wire bytes by
  :func:`encode_load_assignment` (a few string joins per zone instead of
  four sub-message writes per endpoint) and parsed by upb into the message
  handed out: callers still get an ordinary ``ClusterLoadAssignment``, and
  :func:`encoded_load_assignment` gives them the bytes too (they are the
  message's deterministic serialization, so nobody need serialize it again).
  :func:`build_load_assignment_fields` builds the same message field by
  field; the tests prove the two byte-identical under upb's deterministic
  serialization.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

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

from bridge.model.ir import Discovery, Endpoint, Protocol, Upstream, UpstreamKey, UpstreamTls
from bridge.xds import names
from bridge.xds.protowire import length_delimited, varint

_K = TypeVar("_K")

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
    if (
        upstream.discovery is Discovery.EDS
        and upstream.tls is None
        and upstream.protocol is Protocol.HTTP1
    ):
        # A third of the field-by-field cost: one C-level copy, two string sets.
        cluster = cluster_v3.Cluster()
        cluster.CopyFrom(_plain_eds_template(upstream.connect_timeout_ms))
        cluster.name = name
        cluster.eds_cluster_config.service_name = name  # names.eds_service_name
        return cluster
    return build_cluster_fields(upstream, name)


@functools.lru_cache(maxsize=64)  # one per distinct connect timeout; bounded for churn
def _plain_eds_template(connect_timeout_ms: int) -> cluster_v3.Cluster:
    """A plain EDS cluster without its names, built by the general code.

    Made from an Upstream whose every other field has its default, so it is
    exactly what :func:`build_cluster_fields` makes for any upstream that
    :func:`build_cluster` sends here, but for the two names. Never mutated.
    """
    template = Upstream(_TEMPLATE_KEY, Discovery.EDS, connect_timeout_ms=connect_timeout_ms)
    return build_cluster_fields(template, "")


_TEMPLATE_KEY = UpstreamKey("", "", "")


def build_cluster_fields(upstream: Upstream, name: str) -> cluster_v3.Cluster:
    """:func:`build_cluster` field by field: any upstream."""
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
    return encoded_load_assignment(upstream, name)[0]


def encoded_load_assignment(
    upstream: Upstream, name: str | None = None
) -> tuple[endpoint_v3.ClusterLoadAssignment, bytes]:
    """:func:`build_load_assignment`, with the bytes the message was parsed from.

    The bytes are the message's deterministic serialization (see
    :func:`encode_load_assignment`): the caller hands them to the snapshot
    cache instead of having it serialize the message again.
    """
    if name is None:
        name = names.cluster_name(upstream.key)
    value = encode_load_assignment(upstream.endpoints, name)
    return _parse_load_assignment(value), value


_parse_load_assignment = endpoint_v3.ClusterLoadAssignment.FromString


def build_load_assignment_fields(
    upstream: Upstream, name: str
) -> endpoint_v3.ClusterLoadAssignment:
    """:func:`build_load_assignment` field by field: the reference the encoder is tested on."""
    cla = endpoint_v3.ClusterLoadAssignment(cluster_name=name)
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


# -- ClusterLoadAssignment wire encoding ------------------------------------------
#
# ClusterLoadAssignment { 1: cluster_name, 2: repeated LocalityLbEndpoints }
# LocalityLbEndpoints   { 1: Locality { 2: zone }, 2: repeated LbEndpoint,
#                         3: load_balancing_weight UInt32Value { 1: value } }
# LbEndpoint { 1: Endpoint { 1: Address { 1: SocketAddress { 2: address, 3: port_value } } } }
#
# Fields in number order, proto3 defaults ("" and 0) omitted, sub-messages
# present even when empty: what upb's deterministic serialization writes.


_varint = varint
_field = length_delimited


class _Fields(dict[_K, bytes]):
    """A bounded cache of encoded fields by the value they encode (zones, counts)."""

    __slots__ = ("_encode",)

    def __init__(self, encode: Callable[[_K], bytes]) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, value: _K) -> bytes:
        if len(self) >= 4096:  # zones and per-zone counts repeat; bound them for churn
            self.clear()
        encoded = self[value] = self._encode(value)
        return encoded


class _AddressPrefixes(dict[int, bytes]):
    """For one port: address byte length → the bytes that precede the address.

    An endpoint is ``prefix + address + port``: the four nested message
    headers and the address's own tag and length depend on nothing but the
    two lengths, so they are worked out once per (port, length) and looked up
    at C speed after that.
    """

    __slots__ = ("port_bytes",)

    def __init__(self, port: int) -> None:
        super().__init__()
        # port_value is in a oneof: present, so written, even when 0.
        self.port_bytes = b"\x18" + _varint(port)

    def __missing__(self, n: int) -> bytes:
        address_head = b"\x12" + _varint(n) if n else b""
        socket = len(address_head) + n + len(self.port_bytes)
        address = 1 + len(_varint(socket)) + socket
        endpoint = 1 + len(_varint(address)) + address
        lb_endpoint = 1 + len(_varint(endpoint)) + endpoint
        prefix = (
            b"\x12"
            + _varint(lb_endpoint)
            + b"\x0a"
            + _varint(endpoint)
            + b"\x0a"
            + _varint(address)
            + b"\x0a"
            + _varint(socket)
            + address_head
        )
        self[n] = prefix
        return prefix


class _PortTables(dict[int, _AddressPrefixes]):
    __slots__ = ()

    def __missing__(self, port: int) -> _AddressPrefixes:
        table = self[port] = _AddressPrefixes(port)
        return table


_PORTS = _PortTables()  # bounded: one entry per port number, one per address length in it
# Locality {zone}, present even when empty (gRPC requires it).
_LOCALITY = _Fields[str](
    lambda zone: _field(b"\x0a", _field(b"\x12", zone.encode()) if zone else b"")
)
_WEIGHT = _Fields[int](lambda count: _field(b"\x1a", b"\x08" + _varint(count)))


def encode_load_assignment(endpoints: tuple[Endpoint, ...], name: str) -> bytes:
    """The ClusterLoadAssignment :func:`build_load_assignment_fields` makes, as wire bytes.

    Byte for byte what upb's deterministic serialization of that message is:
    one locality entry per zone (sorted), each endpoint in IR order within it.
    """
    # Per zone: its locality field, then three pieces per endpoint; joined once.
    by_zone: dict[str, list[bytes]] = {}
    ports = _PORTS
    for endpoint in endpoints:
        prefixes = ports[endpoint.port]
        address = endpoint.address.encode()
        zone = endpoint.zone
        if zone in by_zone:
            by_zone[zone] += (prefixes[len(address)], address, prefixes.port_bytes)
        else:
            by_zone[zone] = [_LOCALITY[zone], prefixes[len(address)], address, prefixes.port_bytes]
    encoded_name = name.encode()
    out = [b"\x0a", _varint(len(encoded_name)), encoded_name] if name else []
    for zone in sorted(by_zone) if len(by_zone) > 1 else by_zone:
        pieces = by_zone[zone]
        pieces.append(_WEIGHT[len(pieces) // 3])  # the endpoint count
        body = b"".join(pieces)
        out += (b"\x12", _varint(len(body)), body)
    return b"".join(out)


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
