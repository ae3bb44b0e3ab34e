"""The store: the one mutable holder of source state, and its change log.

Sources call :meth:`Store.upsert`, :meth:`Store.delete` and
:meth:`Store.replace` (an atomic swap of everything one source holds, for a
relist or a directory rescan). Putting a value equal to the current one is a
no-op. The pipeline calls :meth:`Store.take` to get a new frozen
:class:`World` and the set of refs that changed since the last take.

It also keeps two things for metrics and ``/debug`` (never for decisions):
per-source event counts (:meth:`Store.event_counts`) and the monotonic time
of the first change since the last take (:attr:`Store.changed_at`), which the
pipeline carries to its observers so the time from a source change to
Envoy's ACK can be measured.

Not thread-safe: sources and the pipeline share one asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bridge.model.consul import ConsulService, ConsulServiceKey
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Secret, SecretName
from bridge.model.k8s import (
    K8sConfigMap,
    K8sEndpointSlice,
    K8sNamespace,
    K8sNode,
    K8sObject,
    K8sPod,
    K8sSecret,
    K8sService,
    Kind,
    ObjectRef,
)
from bridge.model.sharded import ShardedBuilder
from bridge.model.world import ServiceId, World

_FIELD_BY_KIND: dict[Kind, str] = {
    Kind.SERVICE: "services",
    Kind.ENDPOINT_SLICE: "endpoint_slices",
    Kind.NAMESPACE: "namespaces",
    Kind.POD: "pods",
    Kind.CONFIG_MAP: "config_maps",
    Kind.SECRET: "secrets",
    Kind.NODE: "nodes",
}
_KIND_BY_TYPE: dict[type, Kind] = {
    K8sService: Kind.SERVICE,
    K8sEndpointSlice: Kind.ENDPOINT_SLICE,
    K8sNamespace: Kind.NAMESPACE,
    K8sPod: Kind.POD,
    K8sConfigMap: Kind.CONFIG_MAP,
    K8sSecret: Kind.SECRET,
    K8sNode: Kind.NODE,
}


_TARGET_POD = operator.attrgetter("target_pod")


def consul_ref(key: ConsulServiceKey) -> ObjectRef:
    """The change-log ref of a watched Consul service."""
    return ObjectRef(
        Kind.CONSUL_SERVICE, key.datacenter, key.service + ("#connect" if key.connect else "")
    )


# Namespaces and Nodes (cluster-scoped) are keyed by name alone in the World.
# A set of members, not ``Kind.NAMESPACE`` per call: an enum member lookup on
# the class costs more than the rest of this function (once per upsert).
_BY_NAME = frozenset({Kind.NAMESPACE, Kind.NODE})


def _key(ref: ObjectRef) -> Any:
    return ref.name if ref.kind in _BY_NAME else ref


class Store:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Monotonic time of the first change since the last take (None: no change).
        self.changed_at: float | None = None
        self._events: collections.Counter[tuple[str, str]] = collections.Counter()
        self._maps: dict[Kind, ShardedBuilder[Any, Any]] = {
            k: ShardedBuilder() for k in _FIELD_BY_KIND
        }
        self._owner: dict[ObjectRef, str] = {}
        self._by_source: dict[str, set[ObjectRef]] = {}
        self._synced: dict[str, bool] = {}
        self._source_diags: dict[str, tuple[Diagnostic, ...]] = {}
        self._mesh_secrets: dict[SecretName, Secret] = {}
        self._consul: dict[ConsulServiceKey, ConsulService] = {}
        self._slices_by_service: ShardedBuilder[ServiceId, frozenset[ObjectRef]] = ShardedBuilder()
        self._services_by_pod: ShardedBuilder[ObjectRef, frozenset[ServiceId]] = ShardedBuilder()
        self._pods_by_name: ShardedBuilder[ServiceId, K8sPod] = ShardedBuilder()
        # Per Service: (endpoint pods the store has, how many carry a mesh marker).
        self._pod_counts: ShardedBuilder[ServiceId, tuple[int, int]] = ShardedBuilder()
        # slice → (its Service, its pods' refs, its endpoints' targetRef names in order)
        self._pod_refs_by_slice: dict[
            ObjectRef, tuple[ServiceId, frozenset[ObjectRef], tuple[str | None, ...]]
        ] = {}
        self._changed: set[ObjectRef] = set()
        self._dirty_fields: set[str] = set(_FIELD_BY_KIND.values()) | {
            "mesh_secrets",
            "consul_services",
            "source_diagnostics",
            "slices_by_service",
            "services_by_pod",
            "pods_by_name",
            "endpoint_pod_counts",
        }
        self._world = World()
        self._version = 0
        self._event = asyncio.Event()
        self._secrets_changed = False

    # -- sources -------------------------------------------------------------

    def register_source(self, source: str) -> None:
        """Declare a source; nothing is published until every one has synced."""
        self._synced.setdefault(source, False)
        self._by_source.setdefault(source, set())

    def mark_synced(self, source: str) -> None:
        self.register_source(source)
        if not self._synced[source]:
            self._synced[source] = True
            self._event.set()

    @property
    def synced(self) -> bool:
        return all(self._synced.values())

    def sync_state(self) -> Mapping[str, bool]:
        return dict(self._synced)

    def event_counts(self) -> Mapping[tuple[str, str], int]:
        """Changes applied so far, by (source, operation): upsert, delete, diagnostics."""
        return dict(self._events)

    def upsert(self, source: str, obj: K8sObject) -> bool:
        """Put one object; returns whether anything changed."""
        self.register_source(source)
        ref = obj.ref
        kind = _KIND_BY_TYPE[type(obj)]
        m = self._maps[kind]
        key = _key(ref)
        if m.get(key) == obj and self._owner.get(ref) == source:
            return False
        old_owner = self._owner.get(ref)
        if old_owner is not None and old_owner != source:
            self._by_source[old_owner].discard(ref)
        m[key] = obj
        self._owner[ref] = source
        self._by_source[source].add(ref)
        self._events[(source, "upsert")] += 1
        if kind is Kind.ENDPOINT_SLICE:
            assert isinstance(obj, K8sEndpointSlice)
            self._index_slice(ref, obj)
        elif kind is Kind.POD:
            assert isinstance(obj, K8sPod)
            by_name = (ref.namespace, ref.name)
            self._count_pod(ref, self._pods_by_name.get(by_name), obj)
            self._pods_by_name[by_name] = obj
            self._dirty_fields.add("pods_by_name")
        self._touch(ref, _FIELD_BY_KIND[kind])
        return True

    def delete(self, source: str, ref: ObjectRef) -> bool:
        m = self._maps[ref.kind]
        key = _key(ref)
        if key not in m:
            return False
        m.pop(key)
        owner = self._owner.pop(ref, None)
        if owner is not None:
            self._by_source[owner].discard(ref)
        self._events[(source, "delete")] += 1
        if ref.kind is Kind.ENDPOINT_SLICE:
            self._index_slice(ref, None)
        elif ref.kind is Kind.POD:
            self._count_pod(ref, self._pods_by_name.pop((ref.namespace, ref.name)), None)
            self._dirty_fields.add("pods_by_name")
        self._touch(ref, _FIELD_BY_KIND[ref.kind])
        return True

    def replace(self, source: str, objects: Iterable[K8sObject]) -> int:
        """Make ``objects`` everything ``source`` holds, in one step.

        Objects the source held before and does not list now are deleted;
        equal objects are no-ops. Readers never see an in-between state,
        because a World is only made by :meth:`take`.
        """
        self.register_source(source)
        keep: set[ObjectRef] = set()
        n = 0
        for obj in objects:
            keep.add(obj.ref)
            n += self.upsert(source, obj)
        for ref in list(self._by_source[source] - keep):
            n += self.delete(source, ref)
        return n

    def get(self, ref: ObjectRef) -> K8sObject | None:
        """The object held now under ``ref`` (before any :meth:`take`), or None.

        For loop-owned readers that need one object between builds (an
        identity provider reading its trust-root ConfigMap); it marks nothing.
        """
        obj: K8sObject | None = self._maps.get(ref.kind, {}).get(_key(ref))
        return obj

    def set_source_diagnostics(self, source: str, diags: Iterable[Diagnostic]) -> None:
        new = tuple(sorted(diags))
        if self._source_diags.get(source, ()) != new:
            self._source_diags[source] = new
            self._dirty_fields.add("source_diagnostics")
            self._events[(source, "diagnostics")] += 1
            self._signal()

    def put_mesh_secret(self, secret: Secret, *, source: str = "identity") -> None:
        if self._mesh_secrets.get(secret.name) == secret:
            return
        self._mesh_secrets[secret.name] = secret
        self._dirty_fields.add("mesh_secrets")
        self._secrets_changed = True
        self._events[(source, "upsert")] += 1
        self._signal()

    def remove_mesh_secret(self, name: SecretName, *, source: str = "identity") -> None:
        if self._mesh_secrets.pop(name, None) is not None:
            self._dirty_fields.add("mesh_secrets")
            self._secrets_changed = True
            self._events[(source, "delete")] += 1
            self._signal()

    def put_consul_service(self, svc: ConsulService, *, source: str = "consul") -> None:
        """Set the passing instances of one watched Consul service."""
        if self._consul.get(svc.key) == svc:
            return
        self._consul[svc.key] = svc
        self._changed.add(consul_ref(svc.key))
        self._dirty_fields.add("consul_services")
        self._events[(source, "upsert")] += 1
        self._signal()

    def remove_consul_service(self, key: ConsulServiceKey, *, source: str = "consul") -> None:
        if self._consul.pop(key, None) is not None:
            self._changed.add(consul_ref(key))
            self._dirty_fields.add("consul_services")
            self._events[(source, "delete")] += 1
            self._signal()

    # -- the pipeline ---------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._dirty_fields)

    async def wait(self) -> None:
        """Wait until something changed (or a source synced) since the last take."""
        while not self._event.is_set():
            await self._event.wait()
        self._event.clear()

    def take(self) -> tuple[World, frozenset[ObjectRef]]:
        """A new World (only changed maps copied) and the refs changed since the last take."""
        changed = frozenset(self._changed)
        self._changed.clear()
        self._secrets_changed = False
        self.changed_at = None
        if not self._dirty_fields:
            return self._world, changed
        self._version += 1
        updates: dict[str, Any] = {"version": self._version}
        for kind, fname in _FIELD_BY_KIND.items():
            if fname in self._dirty_fields:
                updates[fname] = self._maps[kind].freeze()
        if "mesh_secrets" in self._dirty_fields:
            updates["mesh_secrets"] = FrozenDict(self._mesh_secrets)
        if "consul_services" in self._dirty_fields:
            updates["consul_services"] = FrozenDict(self._consul)
        if "source_diagnostics" in self._dirty_fields:
            updates["source_diagnostics"] = tuple(
                sorted(d for ds in self._source_diags.values() for d in ds)
            )
        if "slices_by_service" in self._dirty_fields:
            updates["slices_by_service"] = self._slices_by_service.freeze()
        if "services_by_pod" in self._dirty_fields:
            updates["services_by_pod"] = self._services_by_pod.freeze()
        if "pods_by_name" in self._dirty_fields:
            updates["pods_by_name"] = self._pods_by_name.freeze()
        if "endpoint_pod_counts" in self._dirty_fields:
            updates["endpoint_pod_counts"] = self._pod_counts.freeze()
        self._dirty_fields.clear()
        old = self._world
        self._world = World(
            **{f: updates.get(f, getattr(old, f)) for f in World.__dataclass_fields__}
        )
        return self._world, changed

    # -- internals -----------------------------------------------------------

    def _touch(self, ref: ObjectRef, fname: str) -> None:
        self._changed.add(ref)
        self._dirty_fields.add(fname)
        self._signal()

    def _signal(self) -> None:
        """A change: wake the pipeline, remembering when the batch's first change came."""
        if self.changed_at is None:
            self.changed_at = self._clock()
        self._event.set()

    def _index_slice(self, ref: ObjectRef, obj: K8sEndpointSlice | None) -> None:
        targets = tuple(map(_TARGET_POD, obj.endpoints)) if obj is not None else ()
        old = self._pod_refs_by_slice.get(ref)
        if (
            old is not None
            and obj is not None
            and old[2] == targets
            and old[0] == (obj.namespace, obj.service_name)
        ):
            # Same Service, same pods (an endpoint moved or changed readiness,
            # the common update): the indexes stay as they are. Rewriting them
            # would copy a shard of each 100k-entry index per pod.
            return
        sids = {old[0]} if old is not None else set()
        if obj is not None:
            sids.add((obj.namespace, obj.service_name))
        before = {sid: self._service_pods(sid) for sid in sids}
        if old is not None:
            del self._pod_refs_by_slice[ref]
            refs = self._slices_by_service.get(old[0], frozenset()) - {ref}
            if refs:
                self._slices_by_service[old[0]] = refs
            else:
                self._slices_by_service.pop(old[0], None)
        if obj is not None:
            sid = (obj.namespace, obj.service_name)
            pods = frozenset(
                ObjectRef(Kind.POD, obj.namespace, e.target_pod)
                for e in obj.endpoints
                if e.target_pod
            )
            self._pod_refs_by_slice[ref] = (sid, pods, targets)
            self._slices_by_service[sid] = self._slices_by_service.get(sid, frozenset()) | {ref}
        # A pod belongs to a Service while any of the Service's slices names
        # it (a dual-stack Service has two slices naming the same pods).
        for sid, was in before.items():
            now = self._service_pods(sid)
            present, marked = self._pod_counts.get(sid, (0, 0))
            for p in was - now:
                svcs = self._services_by_pod.get(p, frozenset()) - {sid}
                if svcs:
                    self._services_by_pod[p] = svcs
                else:
                    self._services_by_pod.pop(p, None)
                pod = self._pods_by_name.get((p.namespace, p.name))
                if pod is not None:
                    present -= 1
                    marked -= pod.mesh_marked
            for p in now - was:
                self._services_by_pod[p] = self._services_by_pod.get(p, frozenset()) | {sid}
                pod = self._pods_by_name.get((p.namespace, p.name))
                if pod is not None:
                    present += 1
                    marked += pod.mesh_marked
            if now:
                if self._pod_counts.get(sid) != (present, marked):
                    self._pod_counts[sid] = (present, marked)
            else:
                self._pod_counts.pop(sid, None)
        self._dirty_fields.update(("slices_by_service", "services_by_pod", "endpoint_pod_counts"))

    def _service_pods(self, sid: ServiceId) -> frozenset[ObjectRef]:
        """The pods the Service's slices name (its slices as indexed now)."""
        refs = self._slices_by_service.get(sid)
        if not refs:
            return frozenset()
        if len(refs) == 1:
            return self._pod_refs_by_slice[next(iter(refs))][1]
        return frozenset().union(*[self._pod_refs_by_slice[r][1] for r in refs])

    def _count_pod(self, ref: ObjectRef, old: K8sPod | None, new: K8sPod | None) -> None:
        """Keep the Services' endpoint pod counts as a pod appears, changes or goes."""
        d_present = (new is not None) - (old is not None)
        d_marked = (new is not None and new.mesh_marked) - (old is not None and old.mesh_marked)
        if not (d_present or d_marked):
            return
        for sid in self._services_by_pod.get(ref, frozenset()):
            present, marked = self._pod_counts.get(sid, (0, 0))
            self._pod_counts[sid] = (present + d_present, marked + d_marked)
        self._dirty_fields.add("endpoint_pod_counts")
