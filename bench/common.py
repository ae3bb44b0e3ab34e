"""Shared pieces of the benchmarks: a large World made through the Store, memory readings.

:func:`fill_store` puts N Services (each exposed by annotations, one named
port), one EndpointSlice per Service with M ready endpoints spread over three
zones, one Pod per endpoint and the Services' Namespaces into a real
:class:`bridge.store.Store`, with the model's own frozen dataclasses, the way
a source would. :func:`changed_slice` is the same slice with one endpoint
moved (for "one endpoint changed").

Benchmarks print figures; nothing here times or asserts anything.
"""

from __future__ import annotations

import resource
from pathlib import Path

from bridge.model.frozen import FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.store import Store

SOURCE = "bench"
NAMESPACES = 50
HOSTS = 100
ZONES = 3
TARGET_PORT = 8080


def namespace_of(i: int) -> str:
    return f"ns{i % NAMESPACES}"


def service(i: int) -> K8sService:
    return K8sService(
        namespace=namespace_of(i),
        name=f"svc{i}",
        ports=(ServicePort(port=80, name="http", target_port=TARGET_PORT),),
        annotations=FrozenDict(
            {"meshbridge.io/prefix": f"/svc{i}/", "meshbridge.io/host": f"h{i % HOSTS}.example.com"}
        ),
    )


def endpoint_ip(i: int, j: int, shift: int = 0) -> str:
    return f"10.{(i >> 8) & 255}.{i & 255}.{(j + 1 + shift) % 250 + 1}"


def endpoint_slice(i: int, per: int, shift: int = 0) -> K8sEndpointSlice:
    """The Service's one slice; ``shift`` > 0 moves the first endpoint to a new address."""
    return K8sEndpointSlice(
        namespace=namespace_of(i),
        name=f"svc{i}-a",
        service_name=f"svc{i}",
        ports=(EndpointPort(port=TARGET_PORT, name="http"),),
        endpoints=tuple(
            SliceEndpoint(
                addresses=(endpoint_ip(i, j, shift if j == 0 else 0),),
                target_pod=f"svc{i}-{j}",
                zone=f"zone-{j % ZONES}",
            )
            for j in range(per)
        ),
    )


def pod(i: int, j: int) -> K8sPod:
    return K8sPod(namespace=namespace_of(i), name=f"svc{i}-{j}", pod_ips=(endpoint_ip(i, j),))


def fill_store(store: Store, services: int, per: int) -> None:
    """Put the whole world into ``store`` and mark the source synced."""
    for n in range(min(services, NAMESPACES)):
        store.upsert(SOURCE, K8sNamespace(name=namespace_of(n)))
    for i in range(services):
        store.upsert(SOURCE, service(i))
        store.upsert(SOURCE, endpoint_slice(i, per))
        for j in range(per):
            store.upsert(SOURCE, pod(i, j))
    store.mark_synced(SOURCE)


def changed_slice(i: int, per: int, round_: int) -> K8sEndpointSlice:
    """Service ``i``'s slice with its first endpoint at an address that differs per round."""
    return endpoint_slice(i, per, shift=100 + round_ % 100)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's current resident set (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
