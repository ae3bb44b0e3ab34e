"""One Service → its :class:`ServiceResolution`: the unit of incremental work.

:func:`resolve_service` reads the Service's annotations (and its
Namespace's defaults), picks the resolver and the mesh, and builds one
:class:`Upstream` per Service port its routes use and one :class:`Route` per
route it asks for. It knows nothing of other Services: conflicts between
Services are settled when the IR is assembled (:mod:`bridge.resolve`).

Any ERROR diagnostic leaves the Service out (no routes, no upstreams), so a
bad annotation costs that Service alone. WARNINGs (unknown keys, a Consul
service with no passing instance) keep it in.

Pure and deterministic: the same World and settings give an equal result.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import chain

from bridge.model.consul import ConsulServiceKey
from bridge.model.diagnostics import Diagnostic, Severity, annotation_field
from bridge.model.frozen import EMPTY, frozen_maker
from bridge.model.ir import (
    Discovery,
    DnsTarget,
    Endpoint,
    Mesh,
    Protocol,
    Resolver,
    Route,
    ServiceResolution,
    Upstream,
    UpstreamKey,
    UpstreamTls,
)
from bridge.model.k8s import (
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
    ObjectRef,
    ServicePort,
)
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve.annotations import (
    MESH_KEY,
    NO_DEFAULTS,
    PORT_KEY,
    RESOLVER_KEY,
    NamespaceSpec,
    ServiceSpec,
    parse_namespace,
    parse_service,
)
from bridge.resolve.mesh import choose_mesh, detect_mesh, endpoint_pods, namespace_markers
from bridge.resolve.policy import PLAINTEXT, MeshContext, mesh_policy

CONSUL_SERVICE_NAME = "consul.hashicorp.com/service-name"
CONSUL_MISSING = "consul.missing"
CONSUL_NONE_PASSING = "consul.none-passing"
NO_PORTS = "port.none"
FQDN_SLICE = "endpoints.unsupported-address-type"

# Endpoint's own order (its fields in turn), compared in C: the generated
# dataclass ``__lt__`` runs in Python, 100k endpoints per full resolve.
_ENDPOINT_ORDER = operator.attrgetter("address", "port", "zone")
_HTTP2_APP_PROTOCOLS = frozenset({"h2c", "grpc", "kubernetes.io/h2c"})
_HTTP2_NAME_PREFIXES = ("grpc", "h2c", "http2")


def protocol_of(port: ServicePort | None) -> Protocol:
    """HTTP/2 for ``appProtocol`` h2c/grpc or a port named grpc*/h2c*/http2*."""
    if port is None:
        return Protocol.HTTP1
    if port.app_protocol and port.app_protocol.lower() in _HTTP2_APP_PROTOCOLS:
        return Protocol.HTTP2
    if port.name.lower().startswith(_HTTP2_NAME_PREFIXES):
        return Protocol.HTTP2
    return Protocol.HTTP1


def upstream_key(svc: K8sService, port: ServicePort | None) -> UpstreamKey:
    """A Service port's key: its name, else its number (``""`` when it has no ports)."""
    if port is None:
        return _upstream_key_of(svc.namespace, svc.name, "")
    return _upstream_key_of(svc.namespace, svc.name, port.name or str(port.port))


def consul_key(
    svc: K8sService, settings: ResolveSettings, service: str | None, dc: str | None, mesh: Mesh
) -> ConsulServiceKey:
    """The Consul service a Service with resolver ``consul`` reads."""
    name = service or svc.annotations.get(CONSUL_SERVICE_NAME) or svc.name
    return ConsulServiceKey(
        datacenter=dc or settings.consul.datacenter,
        service=name,
        connect=mesh is Mesh.CONSUL,
        namespace=settings.consul.namespace,
        partition=settings.consul.partition,
    )


@dataclass(frozen=True, slots=True)
class _Defaults:
    spec: NamespaceSpec
    diagnostics: tuple[Diagnostic, ...]
    bad_resolver: Diagnostic | None
    bad_mesh: Diagnostic | None


_NO_NAMESPACE_DEFAULTS = _Defaults(NO_DEFAULTS, (), None, None)


def _namespace_defaults(ns: K8sNamespace | None) -> _Defaults:
    if ns is None:
        return _NO_NAMESPACE_DEFAULTS
    spec, diags = parse_namespace(ns)
    if not diags and spec is NO_DEFAULTS:
        return _NO_NAMESPACE_DEFAULTS
    bad_resolver = next((d for d in diags if d.field == annotation_field(RESOLVER_KEY)), None)
    bad_mesh = next((d for d in diags if d.field == annotation_field(MESH_KEY)), None)
    rest = tuple(d for d in diags if d is not bad_resolver and d is not bad_mesh)
    return _Defaults(spec, rest, bad_resolver, bad_mesh)


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """What every Service of one Namespace shares: its defaults and mesh markers."""

    namespace: K8sNamespace | None
    defaults: _Defaults
    markers: dict[Mesh, str]  # namespace_markers(); never mutated


class Lookups:
    """Read caches over one World for one build: what many Services share.

    Namespaces are read once per build (and their parse reused from the
    previous build's ``Lookups`` while the Namespace object is the same).
    """

    __slots__ = ("_namespaces", "_previous", "world")

    def __init__(self, world: World, previous: Lookups | None = None) -> None:
        self.world = world
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._previous = previous._namespaces if previous is not None else {}

    def namespace(self, name: str) -> NamespaceInfo:
        info = self._namespaces.get(name)
        if info is None:
            ns = self.world.namespace(name)
            info = self._previous.get(name)
            if info is None or info.namespace is not ns:
                markers = namespace_markers(ns) if ns is not None else {}
                info = NamespaceInfo(ns, _namespace_defaults(ns), markers)
            self._namespaces[name] = info
        return info


def resolve_service(
    world: World,
    settings: ResolveSettings,
    ref: ObjectRef,
    lookups: Lookups | None = None,
) -> ServiceResolution:
    """What one Service resolves to: resolver, mesh and why, routes, upstreams, problems.

    ``lookups`` shares per-build caches between the Services of one build.
    """
    svc = world.services.get(ref)
    if svc is None:
        return ServiceResolution(ref=ref, exposed=False)
    return resolve_present(world, settings, ref, svc, lookups)


def resolve_present(
    world: World,
    settings: ResolveSettings,
    ref: ObjectRef,
    svc: K8sService,
    lookups: Lookups | None = None,
) -> ServiceResolution:
    """:func:`resolve_service` for a Service the caller has already found (``svc``)."""
    spec, own = parse_service(svc)
    if not spec.exposed:
        return ServiceResolution(ref=ref, exposed=False, diagnostics=_sorted(own))
    if lookups is None:
        lookups = Lookups(world)

    ns_info = lookups.namespace(svc.namespace)
    defaults = ns_info.defaults
    # Namespace warnings concern every exposed Service there; a bad namespace
    # default only the Services that rely on it (they are left out rather
    # than silently given the config's default).
    diags = [*own, *defaults.diagnostics] if own or defaults.diagnostics else []
    resolver: Resolver | None = spec.resolver or defaults.spec.resolver or settings.default_resolver
    # An invalid resolver or mesh annotation is an ERROR of parse_service's
    # (``own``): without any, the annotations need no second look.
    annotations = svc.annotations if own else EMPTY
    if spec.resolver is None and RESOLVER_KEY in annotations:
        resolver = None  # invalid: reported by parse_service
    elif spec.resolver is None and defaults.bad_resolver is not None:
        diags.append(defaults.bad_resolver)
        resolver = None

    # The Service's slices, and its endpoint pods only if needed (auto
    # detection or a mesh policy reads them).
    slices = world.slices_of(svc.namespace, svc.name)
    pods: list[K8sPod] | None = None

    choice = None
    if spec.mesh is None and MESH_KEY in annotations:
        pass  # invalid: reported by parse_service
    elif spec.mesh is None and defaults.bad_mesh is not None:
        diags.append(defaults.bad_mesh)
    else:
        # choose_mesh's precedence; ``auto`` is detected here with the slices
        # already in hand.
        if spec.mesh is not None:
            wanted = spec.mesh
        elif defaults.spec.mesh is not None:
            wanted = defaults.spec.mesh
        else:
            wanted = settings.default_mesh
        if wanted is Mesh.AUTO:
            choice = detect_mesh(world, svc, None, ns_info.markers)
        else:
            choice = choose_mesh(world, settings, svc, spec.mesh, defaults.spec.mesh)
        if choice.diagnostics:
            diags.extend(choice.diagnostics)
    mesh = choice.mesh if choice is not None else None
    reason = choice.reason if choice is not None else ""

    failed = bool(diags) and _has_error(diags)
    # Keyed by the key's port part: namespace and name are the Service's own
    # (a str hashes in C, an UpstreamKey in Python).
    upstreams: dict[str, Upstream] = {}
    headers: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {}
    routes: list[Route] = []
    if not failed and mesh is not None and resolver is not None:
        for rs in spec.routes:
            port = rs.port
            key = upstream_key(svc, port)
            if key.port not in headers:
                if mesh is Mesh.NONE:
                    policy = PLAINTEXT  # what mesh_policy says for mesh none
                else:
                    if pods is None:
                        pods = endpoint_pods(world, svc, slices)
                    ckey = consul_key(
                        svc, settings, spec.consul_service, spec.consul_datacenter, mesh
                    )
                    ctx = MeshContext(
                        world,
                        settings,
                        svc,
                        port,
                        key,
                        resolver,
                        mesh,
                        tuple(pods),
                        protocol_of(port),
                        ckey,
                    )
                    policy = mesh_policy(ctx)
                    diags.extend(policy.diagnostics)
                upstream = _upstream(
                    world,
                    settings,
                    svc,
                    spec,
                    port,
                    key,
                    resolver,
                    mesh,
                    diags,
                    slices,
                    policy.tls,
                )
                if upstream is None:
                    headers[key.port] = ((), ())
                    continue
                upstreams[key.port] = upstream
                add, remove = headers[key.port] = policy.headers_to_add, policy.headers_to_remove
            elif key.port in upstreams:
                add, remove = headers[key.port]
            else:
                continue  # its upstream failed: an ERROR already leaves the Service out
            routes.append(
                _route_of(rs.host, rs.prefix, key, ref, rs.rewrite, rs.timeout_ms, add, remove)
            )
        failed = bool(diags) and _has_error(diags)
    if failed:
        return ServiceResolution(
            ref=ref,
            exposed=True,
            resolver=resolver,
            mesh=mesh,
            mesh_reason=reason,
            diagnostics=_sorted(diags),
        )
    return _resolution_of(
        ref,
        True,
        resolver,
        mesh,
        reason,
        tuple(routes),
        tuple(upstreams.values()) if len(upstreams) < 2 else _by_key(upstreams),
        _sorted(diags),
    )


# Positional makers (fields in declaration order) for the values every
# exposed Service gets in a full build, made without the frozen ``__init__``
# (see frozen_maker): same objects, a fraction of the cost.
_route_of = frozen_maker(Route)
_upstream_of = frozen_maker(Upstream)
_resolution_of = frozen_maker(ServiceResolution)
_upstream_key_of = frozen_maker(UpstreamKey)
# Upstream's own default, read off one (a positional maker must pass it).
_CONNECT_TIMEOUT_MS = Upstream(UpstreamKey("", "", ""), Discovery.EDS).connect_timeout_ms


def _by_key(upstreams: dict[str, Upstream]) -> tuple[Upstream, ...]:
    # One Service's upstreams: their keys differ in the port part alone.
    return tuple(upstreams[k] for k in sorted(upstreams))


def _has_error(diags: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diags)


def _sorted(diags: list[Diagnostic] | tuple[Diagnostic, ...]) -> tuple[Diagnostic, ...]:
    if not diags:
        return ()
    return tuple(sorted(set(diags)))


def _upstream(
    world: World,
    settings: ResolveSettings,
    svc: K8sService,
    spec: ServiceSpec,
    port: ServicePort | None,
    key: UpstreamKey,
    resolver: Resolver,
    mesh: Mesh,
    diags: list[Diagnostic],
    slices: list[K8sEndpointSlice] | None = None,
    tls: UpstreamTls | None = None,
) -> Upstream | None:
    protocol = protocol_of(port)
    if resolver is Resolver.CONSUL:
        ckey = consul_key(svc, settings, spec.consul_service, spec.consul_datacenter, mesh)
        endpoints = _consul_endpoints(world, svc, ckey, diags)
        return _upstream_of(
            key, Discovery.EDS, endpoints, None, tls, protocol, _CONNECT_TIMEOUT_MS, mesh
        )
    if port is None:
        diags.append(
            Diagnostic(
                svc.ref,
                "spec.ports",
                f"the Service has no ports; resolver {resolver.value} needs one",
                f"add a port to the Service (and name it in {PORT_KEY} if it has several)",
                Severity.ERROR,
                NO_PORTS,
            )
        )
        return None
    if resolver is Resolver.SERVICE:
        # A headless Service's name resolves to the pods themselves, which
        # listen on the target port, not the Service port.
        number = port.port
        if svc.cluster_ip == "None" and isinstance(port.target_port, int):
            number = port.target_port
        host = f"{svc.name}.{svc.namespace}.svc.{settings.cluster_domain}"
        dns = DnsTarget(host, number)
        return _upstream_of(
            key, Discovery.STRICT_DNS, (), dns, tls, protocol, _CONNECT_TIMEOUT_MS, mesh
        )
    if slices is None:
        slices = world.slices_of(svc.namespace, svc.name)
    endpoints = _slice_endpoints(svc, port, diags, slices)
    return _upstream_of(
        key, Discovery.EDS, endpoints, None, tls, protocol, _CONNECT_TIMEOUT_MS, mesh
    )


_IP_TYPES = frozenset({"IPv4", "IPv6"})


def _slice_endpoints(
    svc: K8sService, port: ServicePort, diags: list[Diagnostic], slices: list[K8sEndpointSlice]
) -> tuple[Endpoint, ...]:
    """Ready, non-terminating endpoints on the slice port named like the Service port."""
    # Each slice has them worked out once, sorted and deduplicated, as IR
    # Endpoints (K8sEndpointSlice.ready_by_port): one slice, the common case,
    # hands its tuple over as is; several are merged.
    name = port.name
    found: list[tuple[Endpoint, ...]] = []
    for s in slices:
        if s.address_type not in _IP_TYPES:
            diags.append(
                Diagnostic(
                    s.ref,
                    "addressType",
                    f"addressType {s.address_type} is not supported; its endpoints are skipped",
                    "use IPv4 or IPv6 EndpointSlices",
                    Severity.WARNING,
                    FQDN_SLICE,
                )
            )
            continue
        ready = s.ready_by_port.get(name)
        if ready:
            found.append(ready)
    if not found:
        return ()
    if len(found) == 1:
        return found[0]
    return tuple(sorted(set(chain.from_iterable(found)), key=_ENDPOINT_ORDER))


def _consul_endpoints(
    world: World, svc: K8sService, key: ConsulServiceKey, diags: list[Diagnostic]
) -> tuple[Endpoint, ...]:
    cs = world.consul_services.get(key)
    what = f"Consul service {key.service}{' (Connect)' if key.connect else ''} in {key.datacenter}"
    if cs is None:
        diags.append(
            Diagnostic(
                svc.ref,
                annotation_field(RESOLVER_KEY),
                f"{what} is not (yet) in the Consul catalog; no endpoints",
                "register it in Consul, or check meshbridge.io/consul-service and "
                "meshbridge.io/consul-datacenter",
                Severity.WARNING,
                CONSUL_MISSING,
            )
        )
        return ()
    if not cs.instances and cs.total:
        diags.append(
            Diagnostic(
                svc.ref,
                annotation_field(RESOLVER_KEY),
                f"none of the {cs.total} instance(s) of {what} is passing its health checks",
                "check the instances' health in Consul",
                Severity.WARNING,
                CONSUL_NONE_PASSING,
            )
        )
    return tuple(sorted({Endpoint(i.address, i.port) for i in cs.instances}, key=_ENDPOINT_ORDER))
