"""Consul → Kubernetes: the CLI's Service writer and the syncer, with the real ``kubernetes``
client against the Kubernetes API stand-in and the Consul stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from adapters.consul.client import ConsulClient
from adapters.consul.sync import (
    OWNER_LABEL,
    OWNER_VALUE,
    CatalogSyncSettings,
    ExternalNameService,
    ForeignService,
    ToKubernetesSyncer,
)
from adapters.kubernetes.client import Conflict, api_client_for
from bridge.cli.wiring import KubernetesServiceWriter
from bridge.errors import SourceError
from bridge.model.world import World
from bridge.sources.convert import parse_object
from bridge.store import Store
from tests.consul.conftest import fast_settings
from tests.standins.consul_agent import ConsulAgent
from tests.standins.kube_api import KubeApiServer, RequestInfo
from tests.support.wait import async_wait_for

NS = "consul-mirror"
SETTINGS = CatalogSyncSettings(
    to_consul=False, to_kubernetes=True, k8s_namespace=NS, debounce_s=0.02
)


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        yield srv


@pytest.fixture
def writer(kube: KubeApiServer) -> Iterator[KubernetesServiceWriter]:
    api = api_client_for(kube.url)
    yield KubernetesServiceWriter(api)
    api.close()


def ext(name: str, target: str | None = None) -> ExternalNameService:
    return ExternalNameService(NS, name, target or f"{name}.service.consul", name)


def stored(kube: KubeApiServer, name: str) -> dict[str, Any] | None:
    return kube.get("v1", "Service", NS, name)


def foreign(kube: KubeApiServer, name: str) -> dict[str, Any]:
    return kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80}]},
        }
    )


def world_from(kube: KubeApiServer) -> World:
    """What the Kubernetes source would hold: the stand-in's Services, converted."""
    store = Store()
    for obj in kube.objects("v1", "Service"):
        store.upsert(
            "kubernetes", parse_object({"apiVersion": "v1", "kind": "Service", **obj}, "test")
        )
    return store.take()[0]


# -- the writer -----------------------------------------------------------------------


async def test_create_update_delete_an_owned_external_name_service(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    await writer.create_service(ext("billing"))
    svc = stored(kube, "billing")
    assert svc is not None
    assert svc["spec"] == {"type": "ExternalName", "externalName": "billing.service.consul"}
    assert svc["metadata"]["labels"] == {"consul": "true", OWNER_LABEL: OWNER_VALUE}
    assert svc["metadata"]["annotations"] == {"consul.hashicorp.com/service-sync": "false"}

    # Someone adds a label of their own: an update keeps it.
    kube.apply(
        {
            **svc,
            "metadata": {**svc["metadata"], "labels": {**svc["metadata"]["labels"], "team": "x"}},
        }
    )
    await writer.update_service(ext("billing", "billing.service.dc2.consul"))
    svc = stored(kube, "billing")
    assert svc is not None and svc["spec"]["externalName"] == "billing.service.dc2.consul"
    assert svc["metadata"]["labels"]["team"] == "x"
    puts = kube.requests_matching("PUT", f"/namespaces/{NS}/services/billing")
    assert puts and puts[-1].body["metadata"]["resourceVersion"]  # optimistic concurrency

    # An update to what is already there writes nothing.
    before = len(kube.requests_matching("PUT", "/services/"))
    await writer.update_service(ext("billing", "billing.service.dc2.consul"))
    assert len(kube.requests_matching("PUT", "/services/")) == before

    await writer.delete_service(NS, "billing")
    assert stored(kube, "billing") is None
    deletes = kube.requests_matching("DELETE", f"/namespaces/{NS}/services/billing")
    assert deletes[-1].body["preconditions"]["uid"]  # never deletes a replaced Service
    await writer.delete_service(NS, "billing")  # already gone (404): done, no error


async def test_never_touches_a_service_without_the_ownership_label(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    mine = foreign(kube, "web")
    for call in (
        writer.create_service(ext("web")),  # 409 AlreadyExists, then not ours
        writer.update_service(ext("web")),
        writer.delete_service(NS, "web"),
    ):
        with pytest.raises(ForeignService, match=f"{NS}/web exists and is not managed"):
            await call
    assert stored(kube, "web") == mine
    assert not kube.requests_matching("PUT", "/services/web")
    assert not kube.requests_matching("DELETE", "/services/web")


async def test_create_that_finds_our_own_service_updates_it(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    await writer.create_service(ext("api", "old.service.consul"))
    await writer.create_service(ext("api"))  # 409: ours, so replaced
    svc = stored(kube, "api")
    assert svc is not None and svc["spec"]["externalName"] == "api.service.consul"


async def test_a_service_replaced_between_read_and_write_is_not_overwritten(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    await writer.create_service(ext("db", "old.service.consul"))

    def replace_first(info: RequestInfo) -> int | None:
        if info.method == "PUT" and info.path.endswith("/services/db"):
            kube.fail_when(None)
            foreign(kube, "db")  # someone takes the name after our read
        return None

    kube.fail_when(replace_first)
    with pytest.raises(Conflict):
        await writer.update_service(ext("db"))
    svc = stored(kube, "db")
    assert svc is not None and OWNER_LABEL not in svc["metadata"]["labels"]
    with pytest.raises(ForeignService):  # the next attempt reads it and leaves it alone
        await writer.update_service(ext("db"))


async def test_api_server_errors_come_out_as_source_errors(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    with kube.unavailable("503"), pytest.raises(SourceError, match="503"):
        await writer.create_service(ext("x"))


# -- the syncer with the writer ------------------------------------------------------------


@asynccontextmanager
async def running(syncer: ToKubernetesSyncer) -> AsyncIterator[None]:
    task = asyncio.create_task(syncer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_syncer_mirrors_consul_and_retries_a_failed_delete(
    kube: KubeApiServer, writer: KubernetesServiceWriter
) -> None:
    recorded: list[tuple[str, str, int]] = []
    failures = 0

    def fail_deletes(info: RequestInfo) -> int | None:
        nonlocal failures
        if info.method == "DELETE" and failures < 2:
            failures += 1
            return 503
        return None

    async with ConsulAgent() as agent, ConsulClient(fast_settings(agent)) as client:
        agent.register("n1", "10.0.0.9", "billing", 8080)
        agent.register("n1", "10.0.0.9", "synced-from-k8s", 80, tags=["k8s"])  # loop prevention
        foreign(kube, "web")
        agent.register("n1", "10.0.0.9", "web", 80)  # name taken by a Service not ours
        syncer = ToKubernetesSyncer(
            client, writer, SETTINGS, record=lambda t, o, n: recorded.append((t, o, n))
        )
        async with running(syncer):
            syncer.update(world_from(kube), kubernetes_synced=True)
            await async_wait_for(lambda: stored(kube, "billing") is not None, timeout=5)
            assert stored(kube, "synced-from-k8s") is None
            await async_wait_for(lambda: syncer.skipped != (), timeout=5)
            assert "web" in syncer.skipped[0]
            syncer.update(world_from(kube), kubernetes_synced=True)

            # Consul drops billing; the API server fails the first two deletes. No
            # further change arrives: the syncer retries on its own.
            kube.fail_when(fail_deletes)
            agent.deregister("n1")
            agent.register("n1", "10.0.0.9", "web", 80)
            await async_wait_for(lambda: stored(kube, "billing") is None, timeout=5)
            await async_wait_for(lambda: ("kubernetes", "delete", 1) in recorded, timeout=5)
            assert failures == 2 and syncer.errors == 2
        assert (
            stored(kube, "web") is not None
            and OWNER_LABEL not in (stored(kube, "web") or {})["metadata"]["labels"]
        )
    assert recorded == [("kubernetes", "create", 1), ("kubernetes", "delete", 1)]
