"""Kubernetes source objects, as adapters convert them at the boundary.

Only the fields meshbridge reads are kept. Every type is a frozen, slotted
dataclass; label/annotation/data maps are :class:`FrozenDict`. Raw wire
dicts never get past the adapter (or the directory source) that read them.

EndpointSlices and Pods also carry a few facts derived from their fields at
construction (``__post_init__``; not compared, not printed) that every
build would otherwise work out again: a slice's ready endpoints per port and
its Pod names, whether a Pod carries a mesh marker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from bridge.model.frozen import EMPTY, FrozenDict, frozen_maker
from bridge.model.secrets import SecretBytes

if TYPE_CHECKING:
    from bridge.model.ir import Endpoint


class Kind(StrEnum):
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    NAMESPACE = "Namespace"
    POD = "Pod"
    CONFIG_MAP = "ConfigMap"
    SECRET = "Secret"
    NODE = "Node"
    CONSUL_SERVICE = "ConsulService"
    FILE = "File"
    IDENTITY = "Identity"  # a mesh identity of the gateway (name = the mesh)


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Names one object: ``Service default/web``. Namespace is ``""`` for cluster-scoped."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind.value} {self.namespace}/{self.name}"
        return f"{self.kind.value} {self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    name: str = ""
    protocol: str = "TCP"
    target_port: int | str | None = None
    node_port: int | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class K8sService:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()
    annotations: FrozenDict[str, str] = EMPTY
    labels: FrozenDict[str, str] = EMPTY
    type: str = "ClusterIP"
    cluster_ip: str | None = None
    selector: FrozenDict[str, str] = EMPTY
    external_name: str | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[str, ...] = ()
    uid: str = ""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.SERVICE, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    target_pod: str | None = None  # name of the Pod in the slice's namespace (targetRef)
    node_name: str | None = None
    zone: str | None = None
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class K8sEndpointSlice:
    """An EndpointSlice, with the facts every build reads precomputed once (``__post_init__``).

    ``ready_by_port`` and ``pod_names`` are derived from the other fields
    (not compared, not printed): a full build reads them for every slice,
    so they are worked out once per object here rather than once per build.
    """

    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name
    address_type: str = "IPv4"
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[SliceEndpoint, ...] = ()
    labels: FrozenDict[str, str] = EMPTY
    # Port name → the ready, non-terminating endpoints on that port, as the IR
    # Endpoints resolve hands out: deduplicated, sorted (address, port, zone).
    # The first slice port of a name wins; empty for a non-IP address type.
    ready_by_port: Mapping[str, tuple[Endpoint, ...]] = field(init=False, repr=False, compare=False)
    # The endpoints' targetRef Pod names: distinct, non-empty, sorted.
    pod_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_ready_by_port(self, _ready_by_port(self))
        names = {e.target_pod for e in self.endpoints if e.target_pod}
        _set_pod_names(self, tuple(sorted(names)) if names else ())

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.ENDPOINT_SLICE, self.namespace, self.name)


# Slot stores for the derived fields (what ``object.__setattr__`` would do on
# a frozen dataclass, without its per-call name lookup).
_set_ready_by_port = K8sEndpointSlice.__dict__["ready_by_port"].__set__
_set_pod_names = K8sEndpointSlice.__dict__["pod_names"].__set__


def _ready_by_port(s: K8sEndpointSlice) -> Mapping[str, tuple[Endpoint, ...]]:
    if not s.ports or s.address_type not in ("IPv4", "IPv6"):
        return EMPTY
    # Plain (address, zone) tuples deduplicate and sort in C; the Endpoints
    # are made once per port at the end. Addresses of one endpoint are
    # fungible; the first is the one kube-proxy uses.
    ready = sorted(
        {
            (e.addresses[0], e.zone or "")
            for e in s.endpoints
            if e.ready and not e.terminating and e.addresses
        }
    )
    make = _endpoint_of or _endpoint_maker()
    out: dict[str, tuple[Endpoint, ...]] = {}
    for p in s.ports:
        if p.name not in out:
            number = p.port
            out[p.name] = tuple([make(address, number, zone) for address, zone in ready])
    return FrozenDict.adopt(out)


_endpoint_of: Callable[[str, int, str], Endpoint] | None = None


def _endpoint_maker() -> Callable[[str, int, str], Endpoint]:
    global _endpoint_of
    from bridge.model.ir import Endpoint  # not at the top: ir imports this module

    _endpoint_of = frozen_maker(Endpoint)
    return _endpoint_of


@dataclass(frozen=True, slots=True)
class K8sNamespace:
    name: str
    labels: FrozenDict[str, str] = EMPTY
    annotations: FrozenDict[str, str] = EMPTY

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.NAMESPACE, "", self.name)


# The label and annotation keys that mark a Pod as injected into a mesh
# (``bridge.resolve.mesh.POD_MARKERS`` says which value means which mesh and
# checks at import that its keys are these).
POD_MESH_LABEL_KEYS = frozenset(
    {
        "security.istio.io/tlsMode",
        "linkerd.io/control-plane-ns",
        "consul.hashicorp.com/connect-inject-status",
    }
)
POD_MESH_ANNOTATION_KEYS = frozenset({"linkerd.io/inject", "consul.hashicorp.com/connect-inject"})


@dataclass(frozen=True, slots=True)
class K8sPod:
    namespace: str
    name: str
    labels: FrozenDict[str, str] = EMPTY
    annotations: FrozenDict[str, str] = EMPTY
    service_account: str = "default"
    pod_ips: tuple[str, ...] = ()
    node_name: str | None = None
    # Whether any mesh marker key (POD_MESH_*_KEYS) is present, whatever its
    # value: derived once per object (not compared, not printed), so mesh
    # detection skips an unmarked Pod at one attribute read.
    mesh_marked: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels, annotations = self.labels, self.annotations
        _set_mesh_marked(
            self,
            not (
                (labels is EMPTY or POD_MESH_LABEL_KEYS.isdisjoint(labels.keys()))
                and (
                    annotations is EMPTY or POD_MESH_ANNOTATION_KEYS.isdisjoint(annotations.keys())
                )
            ),
        )

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.POD, self.namespace, self.name)


_set_mesh_marked = K8sPod.__dict__["mesh_marked"].__set__


@dataclass(frozen=True, slots=True)
class K8sConfigMap:
    namespace: str
    name: str
    data: FrozenDict[str, str] = EMPTY
    labels: FrozenDict[str, str] = EMPTY

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.CONFIG_MAP, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class K8sSecret:
    namespace: str
    name: str
    type: str = "Opaque"
    data: FrozenDict[str, SecretBytes] = field(default_factory=FrozenDict)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.SECRET, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class K8sNode:
    """A cluster node: its addresses by type (``InternalIP``, ``ExternalIP``, ``Hostname``, ...).

    Read only for catalog sync (NodePort Services register node addresses).
    """

    name: str
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address), in the node's order
    labels: FrozenDict[str, str] = EMPTY

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.NODE, "", self.name)

    def addresses_of(self, type_: str) -> tuple[str, ...]:
        """The node's addresses of one type (``InternalIP``, ...), in order."""
        return tuple(a for t, a in self.addresses if t == type_)


K8sObject = (
    K8sService | K8sEndpointSlice | K8sNamespace | K8sPod | K8sConfigMap | K8sSecret | K8sNode
)
