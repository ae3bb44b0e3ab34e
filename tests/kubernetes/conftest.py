"""Fixtures: a Kubernetes API stand-in per test, a client for it, object builders."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.kubernetes.client import api_client_for
from adapters.kubernetes.reflector import Backoff
from adapters.kubernetes.source import KubernetesSource, KubernetesSourceSettings
from bridge.store import Store
from tests.standins.kube_api import KubeApiServer

FAST_BACKOFF = Backoff(initial_s=0.05, max_s=0.3)


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(bookmark_interval=0.2) as srv:
        yield srv


@pytest.fixture
def api_client(kube: KubeApiServer) -> Iterator[Any]:
    c = api_client_for(kube.url)
    yield c
    c.close()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def source_factory(store: Store, api_client: Any) -> AsyncIterator[Any]:
    """Start a KubernetesSource with given settings; every one started is stopped."""
    started: list[KubernetesSource] = []

    async def make(**kw: Any) -> KubernetesSource:
        kw.setdefault("backoff", FAST_BACKOFF)
        kw.setdefault("watch_pods", True)
        src = KubernetesSource(store, KubernetesSourceSettings(**kw), api_client=api_client)
        started.append(src)
        await src.start()
        return src

    yield make
    for src in started:
        await src.stop()
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("reflector ")]
    assert not leftover, f"reflector threads still running: {leftover}"


# -- object builders -------------------------------------------------------------


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }


def service(
    ns: str, name: str, annotations: dict[str, str] | None = None, port: int = 80
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "annotations": annotations or {}},
        "spec": {
            "ports": [{"name": "http", "port": port, "targetPort": 8080}],
            "selector": {"app": name},
        },
    }


def endpoint_slice(
    ns: str, name: str, svc: str, ips: list[str], port: int = 8080
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
            for ip in ips
        ],
    }


def pod(
    ns: str, name: str, sa: str = "default", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
        "spec": {"serviceAccountName": sa},
        "status": {"podIPs": [{"ip": "10.0.0.1"}]},
    }


def config_map(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": ns, "name": name},
        "data": data,
    }


def secret(ns: str, name: str, data_b64: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": ns, "name": name},
        "type": "Opaque",
        "data": data_b64,
    }
