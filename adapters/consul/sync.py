"""Catalog sync, both ways: Kubernetes Services → Consul, Consul services → Kubernetes.

Compatible with consul-k8s's annotations and registration shapes, and better
on each of its known failures:

- change-driven: :meth:`ToConsulSyncer.update` is given each new World; a
  short debounce later the desired registrations are diffed against what our
  node actually holds and only the difference is written. Steady state makes
  zero writes (consul-k8s re-PUTs every instance every 30 s).
- batched: writes go through ``PUT /v1/txn``, at most 128 operations each,
  a registration's service and check in the same transaction.
- ownership by node AND tag: only services on our synthetic node carrying our
  tag are ever updated or removed; another cluster's node is never read for
  deletion, and an untagged service on our node is left alone.
- no writes at all before the first complete Kubernetes list
  (``kubernetes_synced``), so a restart never deregisters live services.
- leader-gated through :class:`bridge.leader.LeaderGate`.
- every instance carries a ``kubernetes-readiness`` check: endpoint instances
  from the EndpointSlice ``ready`` condition, LoadBalancer/externalIP
  instances from "the Service has a ready endpoint".
- drift: blocking queries on ``/v1/catalog/node-services/<node>`` (services)
  and ``/v1/health/node/<node>`` (our checks' status) notice changes made
  behind our back and trigger a re-read and re-diff.

- NodePort instances take their addresses from the World's Nodes
  (``node_port_sync_type`` ExternalOnly / InternalOnly / ExternalFirst); a
  Node change re-registers only the instances it moves.

Consul → Kubernetes writes ExternalName Services through
:class:`ServiceWriter`, implemented where the Kubernetes client lives (the
CLI wiring), so this adapter imports no other adapter; the writer re-checks
ownership at write time and a failed write is retried with backoff.

The desired state is computed by pure functions (:func:`desired_registrations`)
from the World; only :class:`ToConsulSyncer`, :class:`ToKubernetesSyncer` and
:func:`plan_sync` do I/O. Both syncers report their writes to a plain
``record(target, operation, count)`` callable (:data:`WriteRecorder`; the
wiring passes the metrics' counter), so this module needs no metrics library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.consul.client import Backoff, ConsulClient, Reply, run_blocking
from bridge.errors import SourceError
from bridge.leader import AlwaysLeader, LeaderGate
from bridge.model.frozen import EMPTY, FrozenDict
from bridge.model.k8s import K8sEndpointSlice, K8sNode, K8sService, Kind, ObjectRef, ServicePort
from bridge.model.world import World

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128
ANN = "consul.hashicorp.com/"
ANN_SYNC = ANN + "service-sync"
ANN_NAME = ANN + "service-name"
ANN_PORT = ANN + "service-port"
ANN_TAGS = ANN + "service-tags"
ANN_META_PREFIX = ANN + "service-meta-"
ANN_WEIGHT = ANN + "service-weight"
CHECK_NAME = "Kubernetes Readiness Check"
CHECK_TYPE = "kubernetes-readiness"
OWNER_LABEL = "meshbridge.io/catalog-sync"
OWNER_VALUE = "consul"


# ``record(target, operation, count)``: how catalog sync reports its writes (metrics).
WriteRecorder = Callable[[str, str, int], None]


def _no_record(target: str, operation: str, count: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CatalogSyncSettings:
    """Catalog-sync options (consul-k8s's flags, same defaults unless noted)."""

    to_consul: bool = True
    to_kubernetes: bool = False
    node_name: str = "k8s-sync"
    tag: str = "k8s"
    prefix: str = ""  # on names registered in Consul (not with the service-name annotation)
    namespace_suffix: bool = False  # "<name>-<namespace>" (not with service-name)
    default_sync: bool = True  # sync Services that have no service-sync annotation
    allow_namespaces: tuple[str, ...] = ("*",)
    deny_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    sync_cluster_ip_services: bool = True
    node_port_sync_type: str = "ExternalOnly"  # ExternalOnly | InternalOnly | ExternalFirst
    k8s_namespace: str = "default"  # where ExternalName Services are written
    k8s_prefix: str = ""
    consul_domain: str = "consul"
    debounce_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Registration:
    """One instance meshbridge wants on its synthetic node."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: FrozenDict[str, str]
    k8s_namespace: str
    status: str = "passing"  # the kubernetes-readiness check: passing | critical
    weight: int = 1

    @property
    def check_id(self) -> str:
        return f"{self.k8s_namespace}/{self.id}"

    def service_body(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Port": self.port,
            "Meta": dict(self.meta),
            "Weights": {"Passing": self.weight, "Warning": 1},
        }

    def check_body(self, node: str) -> dict[str, Any]:
        return {
            "Node": node,
            "CheckID": self.check_id,
            "Name": CHECK_NAME,
            "Status": self.status,
            "ServiceID": self.id,
            "Type": CHECK_TYPE,
            "Output": "Kubernetes endpoint ready"
            if self.status == "passing"
            else "Kubernetes endpoint not ready",
        }


# -- desired state (pure) ---------------------------------------------------------


def split_tags(value: str) -> tuple[str, ...]:
    r"""consul-k8s's tag list: commas separate, ``\,`` is a literal comma."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur).strip())
    return tuple(t for t in out if t)


def _bool(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("1", "t", "true", "yes", "y"):
        return True
    if v in ("0", "f", "false", "no", "n"):
        return False
    return None


def namespace_allowed(namespace: str, s: CatalogSyncSettings) -> bool:
    """Deny wins over allow; ``*`` matches every namespace."""
    if any(fnmatch.fnmatchcase(namespace, d) for d in s.deny_namespaces):
        return False
    return any(fnmatch.fnmatchcase(namespace, a) for a in s.allow_namespaces)


def should_sync(svc: K8sService, s: CatalogSyncSettings) -> bool:
    if not namespace_allowed(svc.namespace, s):
        return False  # checked first: an annotation cannot override a denied namespace
    if svc.type == "ExternalName":
        return False
    if svc.type == "ClusterIP" and not s.sync_cluster_ip_services:
        return False
    ann = svc.annotations.get(ANN_SYNC)
    if ann is not None:
        flag = _bool(ann)
        if flag is not None:
            return flag
        log.warning("%s: %s=%r is not a boolean; using the default", svc.ref, ANN_SYNC, ann)
    return s.default_sync


def consul_name(svc: K8sService, s: CatalogSyncSettings) -> str:
    named = str(svc.annotations.get(ANN_NAME, "")).strip()
    if named and len(named) <= 255:
        return named  # prefix and suffix do not apply to an explicit name
    name = s.prefix + svc.name
    if s.namespace_suffix:
        name += f"-{svc.namespace}"
    return name


def _pick_port(svc: K8sService) -> ServicePort | None:
    if not svc.ports:
        return None
    want = svc.annotations.get(ANN_PORT, "").strip()
    if want:
        for p in svc.ports:
            if p.name == want or str(p.port) == want:
                return p
        log.warning("%s: %s=%r names no port; using the first", svc.ref, ANN_PORT, want)
    return svc.ports[0]


def _service_id(name: str, address: str, port: int) -> str:
    # consul-k8s hashes name and address only, so two instances on one address
    # (NodePort, hostNetwork) collide (#572); the port is part of ours.
    digest = hashlib.sha1(f"{name}-{address}-{port}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def _base_meta(svc: K8sService) -> dict[str, str]:
    meta = {"external-source": "kubernetes", "external-k8s-ns": svc.namespace}
    for p in svc.ports:
        if p.name:
            meta[f"port-{p.name}"] = str(p.port)
    for k, v in svc.annotations.items():
        if k.startswith(ANN_META_PREFIX) and len(k) > len(ANN_META_PREFIX):
            meta[k[len(ANN_META_PREFIX) :]] = v
    return meta


def _weight(svc: K8sService) -> int:
    raw = svc.annotations.get(ANN_WEIGHT, "").strip()
    if not raw:
        return 1
    try:
        w = int(raw)
    except ValueError:
        w = 0
    if w <= 1:
        log.warning("%s: %s=%r must be an integer above 1; ignored", svc.ref, ANN_WEIGHT, raw)
        return 1
    return w


def _target_port(slice_: K8sEndpointSlice, port: ServicePort) -> int | None:
    for ep in slice_.ports:
        if ep.name == port.name:
            return ep.port
    if len(slice_.ports) == 1 and not port.name:
        return slice_.ports[0].port
    if isinstance(port.target_port, int):
        return port.target_port
    return None


def registrations_for(
    svc: K8sService,
    slices: Sequence[K8sEndpointSlice],
    s: CatalogSyncSettings,
    nodes: Mapping[str, K8sNode] = EMPTY,
) -> list[Registration]:
    """What one Service registers (empty when it is not synced). Pure.

    ``nodes`` (the World's, by name) give NodePort instances their addresses.
    """
    if not should_sync(svc, s):
        return []
    port = _pick_port(svc)
    if port is None:
        return []
    name = consul_name(svc, s)
    tags = tuple(dict.fromkeys((s.tag, *split_tags(svc.annotations.get(ANN_TAGS, "")))))
    base = _base_meta(svc)
    weight = _weight(svc)
    endpoints = [(sl, e) for sl in slices for e in sl.endpoints if not e.terminating]
    any_ready = any(e.ready for _, e in endpoints)
    out: dict[str, Registration] = {}

    def add(address: str, p: int, ready: bool, extra: Mapping[str, str]) -> None:
        sid = _service_id(name, address, p)
        reg = Registration(
            id=sid,
            name=name,
            address=address,
            port=p,
            tags=tags,
            meta=FrozenDict({**base, **extra}),
            k8s_namespace=svc.namespace,
            status="passing" if ready else "critical",
            weight=weight,
        )
        prev = out.get(sid)
        if prev is None or (reg.status == "passing" and prev.status != "passing"):
            out[sid] = reg

    def endpoint_meta(ep_node: str | None, pod: str | None, zone: str | None) -> dict[str, str]:
        m: dict[str, str] = {}
        if pod:
            m["external-k8s-ref-kind"] = "Pod"
            m["external-k8s-ref-name"] = pod
        if ep_node:
            m["external-k8s-node-name"] = ep_node
        if zone:
            m["external-k8s-topology-zone"] = zone
        return m

    if svc.external_ips:
        for ip in svc.external_ips:
            add(ip, port.port, any_ready, {})
    elif svc.type == "LoadBalancer":
        for ingress in svc.load_balancer_ingress:
            add(ingress, port.port, any_ready, {})
    elif svc.type == "NodePort":
        # One instance per node address (per the sync type) of a node running an
        # endpoint, at the nodePort; endpoints sharing a node share its instance.
        missing: set[str] = set()
        for _, e in endpoints if port.node_port else ():
            node = nodes.get(e.node_name or "")
            if node is None:
                missing.add(e.node_name or "(no nodeName)")
                continue
            for addr in node_addresses(node, s.node_port_sync_type):
                add(addr, port.node_port or 0, e.ready, endpoint_meta(e.node_name, None, e.zone))
        if missing:
            log.warning(
                "%s: NodePort endpoints on unknown node(s) %s are not registered "
                "(meshbridge reads Nodes only with catalog_sync.to_consul.enabled)",
                svc.ref,
                ", ".join(sorted(missing)),
            )
    else:  # ClusterIP: every endpoint, at its target port
        for sl, e in endpoints:
            target = _target_port(sl, port)
            if target is None:
                continue
            for address in e.addresses[:1]:
                add(
                    address,
                    target,
                    e.ready,
                    endpoint_meta(e.node_name, e.target_pod, e.zone),
                )
    return sorted(out.values(), key=lambda r: r.id)


def node_addresses(node: K8sNode, mode: str) -> tuple[str, ...]:
    """The addresses a NodePort instance on ``node`` registers, as consul-k8s picks them.

    ``ExternalOnly``: every ExternalIP; ``InternalOnly``: every InternalIP;
    ``ExternalFirst``: the ExternalIPs, else the InternalIPs. A node without
    such an address registers nothing.
    """
    external = node.addresses_of("ExternalIP")
    internal = node.addresses_of("InternalIP")
    if mode == "InternalOnly":
        return internal
    if mode == "ExternalOnly":
        return external
    return external or internal


class DesiredState:
    """The desired registrations of a World, recomputed per changed Service only."""

    def __init__(self, settings: CatalogSyncSettings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str], tuple[object, tuple[object, ...], list[Registration]]]
        self._cache = {}

    def compute(self, world: World) -> dict[str, Registration]:
        out: dict[str, Registration] = {}
        seen: set[tuple[str, str]] = set()
        for svc in world.services.values():
            sid = (svc.namespace, svc.name)
            seen.add(sid)
            slices = tuple(world.slices_of(svc.namespace, svc.name))
            # A NodePort Service also depends on its endpoints' Nodes.
            deps = (*slices, *_node_deps(svc, slices, world)) if svc.type == "NodePort" else slices
            hit = self._cache.get(sid)
            if hit is not None and hit[0] is svc and hit[1] == deps:
                regs = hit[2]
            else:
                regs = registrations_for(svc, slices, self.settings, world.nodes)
                self._cache[sid] = (svc, deps, regs)
            for r in regs:
                if r.id in out:
                    log.warning("two Services register Consul ID %s; keeping the first", r.id)
                    continue
                out[r.id] = r
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return out


def _node_deps(
    svc: K8sService, slices: Sequence[K8sEndpointSlice], world: World
) -> tuple[tuple[str, K8sNode | None], ...]:
    names = sorted({e.node_name or "" for sl in slices for e in sl.endpoints})
    return tuple((n, world.nodes.get(n)) for n in names)


def desired_registrations(world: World, settings: CatalogSyncSettings) -> dict[str, Registration]:
    """Every registration the World asks for, by service ID. Pure."""
    return DesiredState(settings).compute(world)


# -- actual state and the diff ----------------------------------------------------------


@dataclass(slots=True)
class NodeState:
    """What our node holds that we own (tagged), as read from Consul."""

    node_exists: bool
    services: dict[str, Registration]  # owned only; status from our check
    foreign_ids: frozenset[str] = frozenset()  # on our node, without our tag: never touched


def _registration_from_consul(
    svc: Mapping[str, Any], checks: Mapping[str, Mapping[str, Any]]
) -> Registration:
    meta = {str(k): str(v) for k, v in (svc.get("Meta") or {}).items()}
    ns = meta.get("external-k8s-ns", "")
    sid = str(svc.get("ID", ""))
    chk = checks.get(f"{ns}/{sid}")
    weights = svc.get("Weights") or {}
    return Registration(
        id=sid,
        name=str(svc.get("Service", "")),
        address=str(svc.get("Address", "")),
        port=int(svc.get("Port") or 0),
        tags=tuple(str(t) for t in svc.get("Tags") or ()),
        meta=FrozenDict(meta),
        k8s_namespace=ns,
        status=str(chk.get("Status", "")) if chk else "",
        weight=int(weights.get("Passing", 1) or 1),
    )


def node_state_from(node_services: Any, node_checks: Any, tag: str) -> NodeState:
    body = node_services if isinstance(node_services, Mapping) else {}
    checks = {str(c.get("CheckID")): c for c in (node_checks or []) if isinstance(c, Mapping)}
    owned: dict[str, Registration] = {}
    foreign: set[str] = set()
    for svc in body.get("Services") or []:
        if tag in (svc.get("Tags") or ()):
            reg = _registration_from_consul(svc, checks)
            owned[reg.id] = reg
        else:
            foreign.add(str(svc.get("ID", "")))
    return NodeState(bool(body.get("Node")), owned, frozenset(foreign))


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What a sync would write: registrations (new or changed) and deregistrations."""

    node: str
    register: tuple[Registration, ...] = ()
    deregister: tuple[Registration, ...] = ()
    create_node: bool = False
    skipped: tuple[str, ...] = ()  # why some wanted registrations were left out
    k8s_create: tuple[ExternalNameService, ...] = ()
    k8s_update: tuple[ExternalNameService, ...] = ()
    k8s_delete: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.register
            or self.deregister
            or self.create_node
            or self.k8s_create
            or self.k8s_update
            or self.k8s_delete
        )

    def ops(self) -> list[list[dict[str, Any]]]:
        """The ``/v1/txn`` bodies, ≤ 128 operations each; a service and its check together."""
        groups: list[list[dict[str, Any]]] = []
        if self.create_node:
            groups.append([_node_op(self.node)])
        for r in self.deregister:
            groups.append(
                [{"Service": {"Verb": "delete", "Node": self.node, "Service": {"ID": r.id}}}]
            )
        for r in self.register:
            groups.append(
                [
                    {"Service": {"Verb": "set", "Node": self.node, "Service": r.service_body()}},
                    {"Check": {"Verb": "set", "Check": r.check_body(self.node)}},
                ]
            )
        batches: list[list[dict[str, Any]]] = []
        cur: list[dict[str, Any]] = []
        for g in groups:
            if len(cur) + len(g) > MAX_TXN_OPS:
                batches.append(cur)
                cur = []
            cur.extend(g)
        if cur:
            batches.append(cur)
        return batches

    def __str__(self) -> str:
        lines = [
            f"catalog sync plan for Consul node {self.node}: "
            f"{len(self.register)} to register, {len(self.deregister)} to deregister"
        ]
        if self.create_node:
            lines.append(f"  + node {self.node}")
        for r in self.register:
            lines.append(
                f"  + {r.name} {r.id} {r.address}:{r.port} "
                f"(from {r.k8s_namespace}, check {r.status}, tags {','.join(r.tags)})"
            )
        for r in self.deregister:
            lines.append(f"  - {r.name} {r.id} {r.address}:{r.port}")
        for why in self.skipped:
            lines.append(f"  ! {why}")
        for k in self.k8s_create:
            lines.append(f"  + Service {k.namespace}/{k.name} ExternalName {k.external_name}")
        for k in self.k8s_update:
            lines.append(f"  ~ Service {k.namespace}/{k.name} ExternalName {k.external_name}")
        for ns, name in self.k8s_delete:
            lines.append(f"  - Service {ns}/{name}")
        if self.empty:
            lines.append("  (nothing to do)")
        return "\n".join(lines)


def _node_op(node: str) -> dict[str, Any]:
    return {
        "Node": {
            "Verb": "set",
            "Node": {
                "Node": node,
                "Address": "127.0.0.1",
                "Meta": {"external-source": "kubernetes"},
            },
        }
    }


def diff(
    node: str, desired: Mapping[str, Registration], actual: NodeState, *, allow_delete: bool
) -> SyncPlan:
    """The writes that make ``actual`` equal ``desired``, touching only what we own."""
    register: list[Registration] = []
    skipped: list[str] = []
    for sid in sorted(desired):
        want = desired[sid]
        if sid in actual.foreign_ids:
            skipped.append(
                f"{want.name} {sid}: an untagged service with this ID is on node {node}; left alone"
            )
            continue
        if actual.services.get(sid) != want:
            register.append(want)
    deregister = (
        [actual.services[sid] for sid in sorted(actual.services) if sid not in desired]
        if allow_delete
        else []
    )
    return SyncPlan(
        node=node,
        register=tuple(register),
        deregister=tuple(deregister),
        create_node=not actual.node_exists and bool(register),
        skipped=tuple(skipped),
    )


async def read_node_state(client: ConsulClient, settings: CatalogSyncSettings) -> NodeState:
    """Our node's services and checks (two non-blocking reads)."""
    scope = client.scope_params()
    services = await client.get(f"/v1/catalog/node-services/{settings.node_name}", scope)
    checks = await client.get(f"/v1/health/node/{settings.node_name}", scope)
    return node_state_from(services.body, checks.body, settings.tag)


# -- Kubernetes → Consul ------------------------------------------------------------------


@dataclass(slots=True)
class SyncStats:
    txns: int = 0
    ops: int = 0
    reads: int = 0
    registered: int = 0
    deregistered: int = 0
    errors: int = 0
    last_error: str = ""


class ToConsulSyncer:
    """Keeps our synthetic node in Consul equal to the Services of the World."""

    def __init__(
        self,
        client: ConsulClient,
        settings: CatalogSyncSettings,
        *,
        leader: LeaderGate | None = None,
        record: WriteRecorder = _no_record,
    ) -> None:
        self.client = client
        self.settings = settings
        self.leader: LeaderGate = leader if leader is not None else AlwaysLeader()
        self.record = record
        self.stats = SyncStats()
        self._desired = DesiredState(settings)
        self._world: World | None = None
        self._k8s_synced = False
        self._actual: NodeState | None = None
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def update(self, world: World, *, kubernetes_synced: bool) -> None:
        """A new World; ``kubernetes_synced`` once the first complete list is in it."""
        self._world = world
        self._k8s_synced = self._k8s_synced or kubernetes_synced
        self._idle.clear()
        self._dirty.set()

    async def wait_idle(self) -> None:
        """Return once everything given so far has been written (for tests and one-shots)."""
        await self._idle.wait()

    async def run(self) -> None:
        drift = asyncio.create_task(self._watch_drift(), name="consul-sync-drift")
        backoff = Backoff(self.client.settings.backoff_base_s, self.client.settings.backoff_max_s)
        try:
            while True:
                await self._dirty.wait()
                # Debounce: gather a burst of changes into one diff (the cap is
                # the same hold-off, so a change reaches Consul within it + one sync).
                await asyncio.sleep(self.settings.debounce_s)
                self._dirty.clear()
                if self._world is None or not self._k8s_synced:
                    continue  # never write from a partial Kubernetes list
                await self.leader.wait_leader()
                try:
                    await self.sync_once()
                except SourceError as exc:
                    self.stats.errors += 1
                    self.stats.last_error = str(exc)
                    log.warning("catalog sync to Consul failed; retrying: %s", exc)
                    self._actual = None  # re-read before the next diff
                    await asyncio.sleep(backoff.next_delay())
                    self._dirty.set()
                    continue
                backoff.reset()
                if not self._dirty.is_set():
                    self._idle.set()
        finally:
            drift.cancel()
            await asyncio.gather(drift, return_exceptions=True)

    async def sync_once(self) -> SyncPlan:
        """Diff and write once (the World must be complete)."""
        assert self._world is not None
        if self._actual is None:
            self._actual = await read_node_state(self.client, self.settings)
            self.stats.reads += 2
        desired = self._desired.compute(self._world)
        plan = diff(self.settings.node_name, desired, self._actual, allow_delete=True)
        for batch in plan.ops():
            if not self.leader.is_leader:
                raise SourceError("lost leadership; stopping catalog writes")
            reply = await self.client.put("/v1/txn", batch)
            self.stats.txns += 1
            self.stats.ops += len(batch)
            if reply.status != 200:
                errors = (reply.body or {}).get("Errors") if isinstance(reply.body, dict) else None
                raise SourceError(f"Consul rejected a catalog transaction: {errors}")
            self._apply_written(batch)
            self._record(batch)
        self.stats.registered += len(plan.register)
        self.stats.deregistered += len(plan.deregister)
        if not plan.empty:
            log.info(
                "catalog sync: %d registered/updated, %d deregistered in %d transaction(s)",
                len(plan.register),
                len(plan.deregister),
                len(plan.ops()),
            )
        return plan

    def _record(self, batch: list[dict[str, Any]]) -> None:
        verbs = [op["Service"]["Verb"] for op in batch if "Service" in op]
        if n := verbs.count("set"):
            self.record("consul", "register", n)
        if n := verbs.count("delete"):
            self.record("consul", "deregister", n)

    def _apply_written(self, batch: list[dict[str, Any]]) -> None:
        actual = self._actual
        assert actual is not None
        by_id = {r.id: r for r in self._desired_cache_values()}
        for op in batch:
            if "Node" in op:
                actual.node_exists = True
            elif "Service" in op:
                sid = op["Service"]["Service"]["ID"]
                if op["Service"]["Verb"] == "delete":
                    actual.services.pop(sid, None)
                elif sid in by_id:
                    actual.services[sid] = by_id[sid]

    def _desired_cache_values(self) -> Iterable[Registration]:
        for _, _, regs in self._desired._cache.values():
            yield from regs

    async def _watch_drift(self) -> None:
        """Notice changes to our node made by others; re-read and re-diff then.

        Two blocking queries, because Consul keeps services and checks in
        separate tables (a check-status change does not wake a node-services
        query): ``/v1/catalog/node-services/<node>`` for the services and
        ``/v1/health/node/<node>`` for our readiness checks' status.
        """
        node = self.settings.node_name
        tag = self.settings.tag

        def services_drifted(reply: Reply, actual: NodeState) -> bool:
            seen = node_state_from(reply.body, None, tag)
            ours = {sid: dataclasses.replace(r, status="") for sid, r in actual.services.items()}
            theirs = {sid: dataclasses.replace(r, status="") for sid, r in seen.services.items()}
            return ours != theirs or seen.node_exists != actual.node_exists

        def checks_drifted(reply: Reply, actual: NodeState) -> bool:
            status = {
                str(c.get("CheckID")): str(c.get("Status", ""))
                for c in (reply.body or [])
                if isinstance(c, Mapping)
            }
            # Only our own registrations' checks: a missing or flipped check is drift.
            return any(status.get(r.check_id, "") != r.status for r in actual.services.values())

        def watcher(
            what: str, drifted: Callable[[Reply, NodeState], bool]
        ) -> tuple[Callable[[Reply], Awaitable[None]], Callable[[Exception], None]]:
            async def on_reply(reply: Reply) -> None:
                actual = self._actual
                if actual is not None and self._idle.is_set() and drifted(reply, actual):
                    # (While our own writes are in flight the next diff sees them.)
                    log.info("Consul node %s: %s changed behind our back; resyncing", node, what)
                    self._actual = None
                    self._idle.clear()
                    self._dirty.set()
                # While we write, every transaction would wake this query and each answer
                # lists the whole node: wait until our writes are done, then look once.
                await self._idle.wait()

            def on_error(exc: Exception) -> None:
                log.debug("catalog sync drift watch (%s): %s", what, exc)

            return on_reply, on_error

        scope = self.client.scope_params()
        await asyncio.gather(
            run_blocking(
                self.client,
                f"/v1/catalog/node-services/{node}",
                scope,
                *watcher("services", services_drifted),
            ),
            run_blocking(
                self.client, f"/v1/health/node/{node}", scope, *watcher("checks", checks_drifted)
            ),
        )


# -- Consul → Kubernetes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExternalNameService:
    """A Kubernetes Service of type ExternalName pointing at a Consul service."""

    namespace: str
    name: str
    external_name: str
    consul_service: str
    labels: FrozenDict[str, str] = field(
        default_factory=lambda: FrozenDict({"consul": "true", OWNER_LABEL: OWNER_VALUE})
    )
    annotations: FrozenDict[str, str] = field(
        default_factory=lambda: FrozenDict({ANN_SYNC: "false"})
    )


class ForeignService(SourceError):
    """A Service with the name we would write exists without our ownership label: left alone."""


class ServiceWriter(Protocol):
    """Writes Kubernetes Services; the CLI implements it with the kubernetes client.

    Each call re-checks ownership on the server at write time (the World the
    plan came from may lag): a Service without the ownership label is never
    replaced or deleted (:class:`ForeignService`). Writes are idempotent: a
    create that finds our own Service updates it, a delete that finds nothing
    is done. Other failures raise :class:`bridge.errors.SourceError` and are
    retried by the syncer.
    """

    async def create_service(self, svc: ExternalNameService) -> None: ...

    async def update_service(self, svc: ExternalNameService) -> None: ...

    async def delete_service(self, namespace: str, name: str) -> None: ...


_DNS1035 = re.compile(r"[^a-z0-9-]+")


def k8s_name(consul_service: str, settings: CatalogSyncSettings) -> str:
    name = _DNS1035.sub("-", (settings.k8s_prefix + consul_service).lower()).strip("-")
    return name[:63].rstrip("-")


def owned(svc: K8sService) -> bool:
    return bool(svc.labels.get(OWNER_LABEL) == OWNER_VALUE)


def plan_to_kubernetes(
    consul_services: Mapping[str, Sequence[str]], world: World, settings: CatalogSyncSettings
) -> tuple[
    tuple[ExternalNameService, ...],
    tuple[ExternalNameService, ...],
    tuple[tuple[str, str], ...],
    tuple[str, ...],
]:
    """(create, update, delete, skipped) for ExternalName Services. Pure."""
    desired: dict[str, ExternalNameService] = {}
    for name, tags in sorted(consul_services.items()):
        if name == "consul" or settings.tag in (tags or ()):
            continue  # loop prevention: what we registered ourselves is not mirrored back
        kn = k8s_name(name, settings)
        if kn:
            desired[kn] = ExternalNameService(
                settings.k8s_namespace,
                kn,
                f"{name}.service.{settings.consul_domain}",
                name,
            )
    existing = {s.name: s for s in world.services.values() if s.namespace == settings.k8s_namespace}
    create: list[ExternalNameService] = []
    update: list[ExternalNameService] = []
    skipped: list[str] = []
    for kn, want in desired.items():
        have = existing.get(kn)
        if have is None:
            create.append(want)
        elif not owned(have):
            skipped.append(
                f"Service {have.namespace}/{have.name} exists and is not managed by meshbridge; "
                f"Consul service {want.consul_service!r} is not mirrored"
            )
        elif have.type != "ExternalName" or have.external_name != want.external_name:
            update.append(want)
    delete = [
        (s.namespace, s.name)
        for kn, s in sorted(existing.items())
        if owned(s) and kn not in desired
    ]
    return tuple(create), tuple(update), tuple(delete), tuple(skipped)


class ToKubernetesSyncer:
    """Mirrors Consul's services as ExternalName Services, never touching others' Services.

    Change-driven like :class:`ToConsulSyncer`: a blocking query on
    ``/v1/catalog/services`` and each new World trigger a debounced plan
    (:func:`plan_to_kubernetes`). A failed write (API server unavailable, a
    409 conflict) is retried with backoff, not left for the next change; a
    Service found not to be ours at write time is skipped with a warning.
    Writes this syncer made are not repeated while the World has not caught
    up with them yet (for at most :attr:`INFLIGHT_S`).
    """

    INFLIGHT_S = 10.0

    def __init__(
        self,
        client: ConsulClient,
        writer: ServiceWriter,
        settings: CatalogSyncSettings,
        *,
        leader: LeaderGate | None = None,
        record: WriteRecorder = _no_record,
    ) -> None:
        self.client = client
        self.writer = writer
        self.settings = settings
        self.leader: LeaderGate = leader if leader is not None else AlwaysLeader()
        self.record = record
        self.skipped: tuple[str, ...] = ()
        self.errors = 0
        self._world: World | None = None
        self._k8s_synced = False
        self._consul: dict[str, tuple[str, ...]] | None = None
        self._dirty = asyncio.Event()
        # name -> (when, what we wrote; None = deleted), until the World shows it.
        self._inflight: dict[str, tuple[float, ExternalNameService | None]] = {}
        self._backoff = Backoff(client.settings.backoff_base_s, client.settings.backoff_max_s)
        self._retry: asyncio.TimerHandle | None = None

    def update(self, world: World, *, kubernetes_synced: bool) -> None:
        self._world = world
        self._k8s_synced = self._k8s_synced or kubernetes_synced
        self._dirty.set()

    async def run(self) -> None:
        watch = asyncio.create_task(self._watch_consul(), name="consul-sync-to-k8s")
        try:
            while True:
                await self._dirty.wait()
                await asyncio.sleep(self.settings.debounce_s)
                self._dirty.clear()
                if self._world is None or self._consul is None or not self._k8s_synced:
                    continue
                await self.leader.wait_leader()
                if await self._apply():
                    self._backoff.reset()
                elif self._retry is None:
                    delay = self._backoff.next_delay()
                    self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)
        finally:
            if self._retry is not None:
                self._retry.cancel()
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    def _retry_now(self) -> None:
        self._retry = None
        self._dirty.set()

    async def _apply(self) -> bool:
        """Write one plan; whether every write that should be retried succeeded."""
        assert self._world is not None and self._consul is not None
        world = self._world
        create, update, delete, skipped = plan_to_kubernetes(self._consul, world, self.settings)
        self._forget_seen(world)
        ok = True
        found: list[str] = list(skipped)
        for op, svc in [("create", c) for c in create] + [("update", u) for u in update]:
            if self._inflight.get(svc.name, (0.0, None))[1] == svc:
                continue  # written already; the World has not caught up yet
            call = (
                self.writer.create_service(svc)
                if op == "create"
                else self.writer.update_service(svc)
            )
            result = await self._write(op, svc.namespace, svc.name, call)
            if result is None:
                self._inflight[svc.name] = (asyncio.get_running_loop().time(), svc)
            elif result:
                found.append(result)
            else:
                ok = False
        for ns, name in delete:
            hit = self._inflight.get(name)
            if hit is not None and hit[1] is None:
                continue
            result = await self._write("delete", ns, name, self.writer.delete_service(ns, name))
            if result is None:
                self._inflight[name] = (asyncio.get_running_loop().time(), None)
            elif result:
                found.append(result)
            else:
                ok = False
        for why in set(found) - set(self.skipped):
            log.warning("%s", why)
        self.skipped = tuple(found)
        return ok

    async def _write(self, op: str, ns: str, name: str, call: Awaitable[None]) -> str | None:
        """None when written; a reason when the Service is not ours; "" to retry."""
        try:
            await call
        except ForeignService as exc:
            return str(exc)
        except SourceError as exc:
            self.errors += 1
            log.warning("cannot %s Service %s/%s (retrying): %s", op, ns, name, exc)
            return ""
        self.record("kubernetes", op, 1)
        return None

    def _forget_seen(self, world: World) -> None:
        """Drop in-flight writes the World now shows (or that are too old to wait for)."""
        now = asyncio.get_running_loop().time()
        ns = self.settings.k8s_namespace
        for name, (when, wrote) in list(self._inflight.items()):
            have = world.services.get(ObjectRef(Kind.SERVICE, ns, name))
            if wrote is None:
                seen = have is None
            else:
                seen = have is not None and have.external_name == wrote.external_name
            if seen or now - when > self.INFLIGHT_S:
                del self._inflight[name]

    async def _watch_consul(self) -> None:
        def on_reply(reply: Reply) -> None:
            body = reply.body if isinstance(reply.body, Mapping) else {}
            services = {str(k): tuple(str(t) for t in v or ()) for k, v in body.items()}
            if services != self._consul:
                self._consul = services
                self._dirty.set()

        def on_error(exc: Exception) -> None:
            log.warning("Consul → Kubernetes sync cannot list services: %s", exc)

        params = [*self.client.scope_params(), ("stale", "")]
        await run_blocking(self.client, "/v1/catalog/services", params, on_reply, on_error)


# -- one-shot / dry run ------------------------------------------------------------------------


async def plan_sync(
    client: ConsulClient,
    world: World,
    settings: CatalogSyncSettings,
) -> SyncPlan:
    """What a sync of ``world`` would write now (reads Consul; writes nothing).

    ``world`` must hold a complete Kubernetes list (deregistrations are planned).
    """
    plan = SyncPlan(node=settings.node_name)
    if settings.to_consul:
        actual = await read_node_state(client, settings)
        plan = diff(
            settings.node_name,
            desired_registrations(world, settings),
            actual,
            allow_delete=True,
        )
    if settings.to_kubernetes:
        reply = await client.get("/v1/catalog/services", client.scope_params())
        body = reply.body if isinstance(reply.body, Mapping) else {}
        services = {str(k): tuple(str(t) for t in v or ()) for k, v in body.items()}
        create, update, delete, skipped = plan_to_kubernetes(services, world, settings)
        plan = dataclasses.replace(
            plan,
            k8s_create=create,
            k8s_update=update,
            k8s_delete=delete,
            skipped=plan.skipped + skipped,
        )
    return plan


async def apply_plan(client: ConsulClient, plan: SyncPlan) -> None:
    """Write a plan's Consul part (``meshbridge sync-catalog`` without ``--dry-run``)."""
    for batch in plan.ops():
        reply = await client.put("/v1/txn", batch)
        if reply.status != 200:
            raise SourceError(f"Consul rejected a catalog transaction: {reply.body}")
