"""The World: a frozen, versioned view of everything the sources know.

The :class:`bridge.store.Store` makes a new World per batch of changes,
copying only the maps of kinds that changed (copy-on-write), so an unchanged
kind is the same mapping object across versions. Readers must treat every
mapping here as immutable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.model.consul import ConsulService, ConsulServiceKey
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Secret, SecretName
from bridge.model.k8s import (
    K8sConfigMap,
    K8sEndpointSlice,
    K8sNamespace,
    K8sNode,
    K8sPod,
    K8sSecret,
    K8sService,
    Kind,
    ObjectRef,
)
from bridge.model.sharded import ShardedMap

ServiceId = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class World:
    version: int = 0
    services: Mapping[ObjectRef, K8sService] = field(default_factory=FrozenDict)
    endpoint_slices: Mapping[ObjectRef, K8sEndpointSlice] = field(default_factory=FrozenDict)
    namespaces: Mapping[str, K8sNamespace] = field(default_factory=FrozenDict)
    pods: Mapping[ObjectRef, K8sPod] = field(default_factory=FrozenDict)
    config_maps: Mapping[ObjectRef, K8sConfigMap] = field(default_factory=FrozenDict)
    secrets: Mapping[ObjectRef, K8sSecret] = field(default_factory=FrozenDict)
    consul_services: Mapping[ConsulServiceKey, ConsulService] = field(default_factory=FrozenDict)
    # Cluster nodes by name: watched only when catalog sync to Consul is on.
    nodes: Mapping[str, K8sNode] = field(default_factory=FrozenDict)
    # Mesh identities and trust bundles from the identity providers, by SDS name.
    mesh_secrets: Mapping[SecretName, Secret] = field(default_factory=FrozenDict)
    # Problems the sources found (a file that failed to parse, ...).
    source_diagnostics: tuple[Diagnostic, ...] = ()
    # Indexes kept by the store.
    slices_by_service: Mapping[ServiceId, frozenset[ObjectRef]] = field(default_factory=FrozenDict)
    services_by_pod: Mapping[ObjectRef, frozenset[ServiceId]] = field(default_factory=FrozenDict)
    # ``pods`` again, keyed by (namespace, name): a tuple key hashes in C, an
    # ObjectRef in Python (auto mesh detection reads 100k pods at 10k Services).
    # Kept by the store; a World made without it falls back to ``pods``.
    pods_by_name: Mapping[ServiceId, K8sPod] = field(default_factory=FrozenDict)
    # Per Service: how many of the pods its EndpointSlices name the World has,
    # and how many of those carry a mesh marker (K8sPod.mesh_marked), so mesh
    # detection reads no pod while none is marked. Kept by the store; None in
    # a World made without it (readers then count from ``pods``).
    endpoint_pod_counts: Mapping[ServiceId, tuple[int, int]] | None = None

    def slices_of(self, namespace: str, service: str) -> list[K8sEndpointSlice]:
        """The Service's EndpointSlices, sorted by name."""
        refs = self.slices_by_service.get((namespace, service))
        if not refs:
            return []
        if len(refs) == 1:
            (ref,) = refs
            return [self.endpoint_slices[ref]]
        return [self.endpoint_slices[r] for r in sorted(refs)]

    def endpoint_pod_count(self, namespace: str, service: str) -> tuple[int, int] | None:
        """(endpoint pods known, of which mesh-marked) for the Service; None if not kept."""
        counts = self.endpoint_pod_counts
        if counts is None:
            return None
        return counts.get((namespace, service), (0, 0))

    def pods_named(self, namespace: str, names: Iterable[str]) -> list[K8sPod]:
        """The Pods of ``namespace`` with these names that the World knows, in the given order."""
        keys = [(namespace, n) for n in names]
        by_name = self.pods_by_name
        if by_name or not self.pods:
            if isinstance(by_name, ShardedMap):
                found = by_name.get_many(keys)
            else:
                found = [by_name.get(k) for k in keys]
        else:
            found = [self.pods.get(ObjectRef(Kind.POD, ns, n)) for ns, n in keys]
        return [p for p in found if p is not None]

    def namespace(self, name: str) -> K8sNamespace | None:
        return self.namespaces.get(name)

    def node(self, name: str) -> K8sNode | None:
        return self.nodes.get(name)

    def pod(self, namespace: str, name: str) -> K8sPod | None:
        if self.pods_by_name:
            return self.pods_by_name.get((namespace, name))
        return self.pods.get(ObjectRef(Kind.POD, namespace, name))
