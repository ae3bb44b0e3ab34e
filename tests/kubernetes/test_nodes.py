"""Nodes: read for catalog sync (NodePort Services), watched only when it is on."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from adapters.kubernetes.source import KubernetesSource, KubernetesSourceSettings
from bridge.config import config_from_dict
from bridge.model.k8s import K8sNode, Kind, ObjectRef
from bridge.sources.dir import DirSource
from bridge.store import Store
from tests.kubernetes.conftest import namespace
from tests.standins.kube_api import KubeApiServer
from tests.support.wait import async_wait_for


def node(name: str, internal: str, external: str | None = None) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": internal}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    addresses.append({"type": "Hostname", "address": name})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": addresses},
    }


def test_store_keeps_nodes_by_name_and_marks_their_changes() -> None:
    store = Store()
    n1 = K8sNode("worker-1", (("InternalIP", "172.18.0.2"),))
    assert store.upsert("test", n1)
    world, changed = store.take()
    assert world.nodes == {"worker-1": n1} and world.node("worker-1") is n1
    assert changed == {ObjectRef(Kind.NODE, "", "worker-1")}
    assert not store.upsert("test", K8sNode("worker-1", (("InternalIP", "172.18.0.2"),)))
    assert store.get(n1.ref) is n1
    before = world.services
    assert store.delete("test", n1.ref)
    world, changed = store.take()
    assert not world.nodes and changed == {n1.ref}
    assert world.services is before, "an unchanged kind is shared, not copied"


def test_directory_source_loads_nodes(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: Node
            metadata:
              name: worker-1
            status:
              addresses:
              - {type: InternalIP, address: 172.18.0.2}
              - {type: ExternalIP, address: 203.0.113.7}
            """
        )
    )
    store = Store()
    DirSource(store, tmp_path).load()
    world, _ = store.take()
    assert world.nodes["worker-1"].addresses_of("ExternalIP") == ("203.0.113.7",)
    assert not world.source_diagnostics


def test_nodes_are_watched_only_with_catalog_sync_to_consul() -> None:
    off = KubernetesSourceSettings.from_config(config_from_dict({}, env={}))
    assert Kind.NODE not in {s.kind for s in off.specs()}
    on = KubernetesSourceSettings.from_config(
        config_from_dict({"catalog_sync": {"to_consul": {"enabled": True}}}, env={})
    )
    (spec,) = [s for s in on.specs() if s.kind is Kind.NODE]
    assert spec.namespace is None and spec.name is None, "nodes are cluster-scoped: one watch"
    # Kubernetes → Consul alone needs no nodes.
    k8s_only = KubernetesSourceSettings.from_config(
        config_from_dict({"catalog_sync": {"to_kubernetes": {"enabled": True}}}, env={})
    )
    assert Kind.NODE not in {s.kind for s in k8s_only.specs()}


async def test_adapter_lists_and_watches_nodes(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    kube.apply(namespace("default"))
    kube.apply(node("worker-1", "172.18.0.2"))
    src: KubernetesSource = await source_factory(watch_nodes=True, namespaces=("default",))
    await asyncio.wait_for(src.wait_synced(), 10)
    world, _ = store.take()
    assert world.nodes["worker-1"].addresses_of("InternalIP") == ("172.18.0.2",)
    assert "kubernetes:Node" in src.sources

    kube.apply(node("worker-2", "172.18.0.3", external="203.0.113.8"))
    kube.delete("v1", "Node", "", "worker-1")

    def applied() -> bool:
        w, _ = store.take()
        return set(w.nodes) == {"worker-2"}

    await async_wait_for(applied, 10, what="node watch events applied")
    world, _ = store.take()
    assert world.nodes["worker-2"].addresses_of("ExternalIP") == ("203.0.113.8",)
    assert any(r.path == "/api/v1/nodes" for r in kube.requests if r.method == "GET")


async def test_adapter_does_not_touch_nodes_when_off(
    kube: KubeApiServer, store: Store, source_factory: Any
) -> None:
    kube.apply(node("worker-1", "172.18.0.2"))
    src: KubernetesSource = await source_factory()
    await asyncio.wait_for(src.wait_synced(), 10)
    assert not store.take()[0].nodes
    assert not [r for r in kube.requests if r.path.startswith("/api/v1/nodes")]
