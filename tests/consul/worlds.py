"""Small Kubernetes worlds for catalog-sync tests and the benchmark."""

from __future__ import annotations

from bridge.model.frozen import FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.world import World
from bridge.store import Store

SOURCE = "kubernetes"


def service(
    name: str,
    namespace: str = "default",
    *,
    annotations: dict[str, str] | None = None,
    type_: str = "ClusterIP",
    port: int = 80,
    port_name: str = "http",
    node_port: int | None = None,
    external_ips: tuple[str, ...] = (),
    lb: tuple[str, ...] = (),
) -> K8sService:
    return K8sService(
        namespace=namespace,
        name=name,
        ports=(ServicePort(port=port, name=port_name, target_port=8080, node_port=node_port),),
        annotations=FrozenDict(annotations or {}),
        type=type_,
        external_ips=external_ips,
        load_balancer_ingress=lb,
    )


def endpoints(
    svc: str,
    ips: list[str],
    namespace: str = "default",
    *,
    not_ready: frozenset[str] = frozenset(),
    target_port: int = 8080,
    port_name: str = "http",
    node: str = "node-a",
) -> K8sEndpointSlice:
    return K8sEndpointSlice(
        namespace=namespace,
        name=f"{svc}-abc",
        service_name=svc,
        ports=(EndpointPort(port=target_port, name=port_name),),
        endpoints=tuple(
            SliceEndpoint(
                addresses=(ip,),
                ready=ip not in not_ready,
                target_pod=f"{svc}-{i}",
                node_name=node,
                zone="zone-1",
            )
            for i, ip in enumerate(ips)
        ),
    )


def fill(store: Store, services: int, per_service: int, namespace: str = "default") -> None:
    """``services`` ClusterIP Services with ``per_service`` ready endpoints each."""
    for i in range(services):
        name = f"svc-{i:04d}"
        store.upsert(SOURCE, service(name, namespace))
        ips = [f"10.{i // 250}.{i % 250}.{j + 1}" for j in range(per_service)]
        store.upsert(SOURCE, endpoints(name, ips, namespace))


def world_of(services: int, per_service: int, namespace: str = "default") -> World:
    store = Store()
    fill(store, services, per_service, namespace)
    return store.take()[0]
