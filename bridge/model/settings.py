"""Settings the pure core needs, taken from the config file by ``bridge.config``."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.model.ir import Listener, Mesh, Resolver


@dataclass(frozen=True, slots=True)
class IstioSettings:
    trust_domain: str = "cluster.local"


@dataclass(frozen=True, slots=True)
class LinkerdSettings:
    namespace: str = "linkerd"
    trust_domain: str = "cluster.local"
    mode: str = "ca"  # "ca", "sidecar" or "files:DIR"


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    datacenter: str = "dc1"
    namespace: str = ""  # Enterprise only; "" = not sent
    partition: str = ""  # Enterprise only; "" = not sent
    identity_service: str = "meshbridge"


@dataclass(frozen=True, slots=True)
class ResolveSettings:
    cluster_domain: str = "cluster.local"
    default_resolver: Resolver = Resolver.ENDPOINTS
    default_mesh: Mesh = Mesh.AUTO
    listeners: tuple[Listener, ...] = (Listener(name="http", port=8080),)
    # Meshes whose upstream TLS this build supports; a Service resolved to any
    # other mesh gets a diagnostic instead of silent plaintext.
    supported_meshes: frozenset[Mesh] = frozenset({Mesh.NONE})
    istio: IstioSettings = IstioSettings()
    linkerd: LinkerdSettings = LinkerdSettings()
    consul: ConsulSettings = ConsulSettings()
