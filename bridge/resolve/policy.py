"""Where per-mesh upstream TLS plugs into resolution.

:func:`mesh_policy` is the one function that decides, for one upstream of
one Service, how the gateway talks to it: the :class:`UpstreamTls` to
originate (SNI, SANs to verify, ALPN, SDS secret names) and headers its
routes must set or strip (e.g. Linkerd's ``l5d-dst-override``). Mesh
``none`` is plaintext; the others are made by :mod:`bridge.resolve.meshtls`
from a :class:`MeshContext`. A mesh not in ``settings.supported_meshes``
yields an ERROR diagnostic, never silent plaintext.

Pure: no I/O. Secrets are referenced by name (``SecretName``); their bytes
come from ``World.mesh_secrets``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.model.consul import ConsulServiceKey
from bridge.model.diagnostics import Diagnostic, Severity, annotation_field
from bridge.model.ir import Mesh, Protocol, Resolver, UpstreamKey, UpstreamTls
from bridge.model.k8s import K8sPod, K8sService, ServicePort
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve.annotations import MESH_KEY
from bridge.resolve.meshtls import EDGE_HEADERS_TO_REMOVE, MeshTarget, mesh_tls

UNSUPPORTED = "mesh.unsupported"


@dataclass(frozen=True, slots=True)
class MeshContext:
    """Everything a mesh policy may read about one upstream."""

    world: World
    settings: ResolveSettings
    service: K8sService
    port: ServicePort | None
    key: UpstreamKey
    resolver: Resolver
    mesh: Mesh
    pods: tuple[K8sPod, ...]  # the Service's endpoint pods the World knows, by name
    protocol: Protocol
    consul: ConsulServiceKey  # the Consul service it is, for Consul Connect


@dataclass(frozen=True, slots=True)
class MeshPolicy:
    tls: UpstreamTls | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    # ERROR ⇒ the Service is left out (e.g. no identity yet, trust roots missing).
    diagnostics: tuple[Diagnostic, ...] = ()


PLAINTEXT = MeshPolicy()


def unsupported(svc: K8sService, mesh: Mesh) -> Diagnostic:
    return Diagnostic(
        svc.ref,
        annotation_field(MESH_KEY),
        f"upstream mTLS for mesh {mesh.value} is not available in this build",
        f"set {MESH_KEY}: none to send plaintext",
        Severity.ERROR,
        UNSUPPORTED,
    )


def mesh_policy(ctx: MeshContext) -> MeshPolicy:
    """How the gateway talks to one upstream of ``ctx.service`` in ``ctx.mesh``."""
    if ctx.mesh is Mesh.NONE:
        return PLAINTEXT
    if ctx.mesh not in ctx.settings.supported_meshes or ctx.mesh is Mesh.AUTO:
        return MeshPolicy(diagnostics=(unsupported(ctx.service, ctx.mesh),))
    svc = ctx.service
    target = MeshTarget(
        ref=svc.ref,
        namespace=svc.namespace,
        service=svc.name,
        port=ctx.port.port if ctx.port is not None else 0,
        service_accounts=tuple(p.service_account for p in ctx.pods),
        protocol=ctx.protocol,
        consul_service=ctx.consul.service,
        consul_datacenter=ctx.consul.datacenter,
        consul_namespace=ctx.consul.namespace,
        consul_partition=ctx.consul.partition,
    )
    made = mesh_tls(ctx.mesh, target, ctx.settings, ctx.world.mesh_secrets)
    return MeshPolicy(
        tls=made.tls,
        headers_to_add=made.headers_to_add,
        # A client-supplied l5d-dst-override would let anyone at the edge pick
        # any destination inside the mesh.
        headers_to_remove=EDGE_HEADERS_TO_REMOVE if ctx.mesh is Mesh.LINKERD else (),
        diagnostics=made.diagnostics,
    )
