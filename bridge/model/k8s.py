"""Kubernetes source objects, as adapters convert them at the boundary.

Only the fields meshbridge reads are kept. Every type is a frozen, slotted
dataclass; label/annotation/data maps are :class:`FrozenDict`. Raw wire
dicts never get past the adapter (or the directory source) that read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bridge.model.frozen import EMPTY, FrozenDict
from bridge.model.secrets import SecretBytes


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
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name
    address_type: str = "IPv4"
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[SliceEndpoint, ...] = ()
    labels: FrozenDict[str, str] = EMPTY

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.ENDPOINT_SLICE, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class K8sNamespace:
    name: str
    labels: FrozenDict[str, str] = EMPTY
    annotations: FrozenDict[str, str] = EMPTY

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.NAMESPACE, "", self.name)


@dataclass(frozen=True, slots=True)
class K8sPod:
    namespace: str
    name: str
    labels: FrozenDict[str, str] = EMPTY
    annotations: FrozenDict[str, str] = EMPTY
    service_account: str = "default"
    pod_ips: tuple[str, ...] = ()
    node_name: str | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.POD, self.namespace, self.name)


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
