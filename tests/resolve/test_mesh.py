"""Mesh choice: precedence of annotations and config, and ``auto`` detection from markers."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.model.diagnostics import Severity
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Mesh
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve.mesh import choose_mesh, detect_mesh
from bridge.store import Store

SVC = K8sService(namespace="shop", name="web", ports=(ServicePort(port=80),))


def _world(
    pods: list[tuple[dict[str, str], dict[str, str]]],
    ns_labels: dict[str, str] | None = None,
    ns_annotations: dict[str, str] | None = None,
) -> World:
    store = Store()
    store.upsert("t", SVC)
    if ns_labels is not None or ns_annotations is not None:
        store.upsert(
            "t",
            K8sNamespace(
                name="shop",
                labels=FrozenDict(ns_labels or {}),
                annotations=FrozenDict(ns_annotations or {}),
            ),
        )
    eps = []
    for i, (labels, notes) in enumerate(pods):
        name = f"web-{i + 1}"
        store.upsert(
            "t",
            K8sPod(
                namespace="shop",
                name=name,
                labels=FrozenDict(labels),
                annotations=FrozenDict(notes),
            ),
        )
        eps.append(SliceEndpoint(addresses=(f"10.0.0.{i + 1}",), target_pod=name))
    store.upsert(
        "t",
        K8sEndpointSlice(
            namespace="shop",
            name="web-a",
            service_name="web",
            ports=(EndpointPort(port=80),),
            endpoints=tuple(eps),
        ),
    )
    return store.take()[0]


Marks = tuple[dict[str, str], dict[str, str]]
ISTIO_POD: Marks = ({"security.istio.io/tlsMode": "istio"}, {})
LINKERD_POD: Marks = ({}, {"linkerd.io/inject": "enabled"})
PLAIN_POD: Marks = ({}, {})


@pytest.mark.parametrize(
    ("world", "mesh", "reason"),
    [
        pytest.param(
            _world([PLAIN_POD, ISTIO_POD]),
            Mesh.ISTIO,
            "pod shop/web-2 label security.istio.io/tlsMode=istio",
            id="istio-pod-label",
        ),
        pytest.param(
            _world([LINKERD_POD]),
            Mesh.LINKERD,
            "pod shop/web-1 annotation linkerd.io/inject=enabled",
            id="linkerd-pod-annotation",
        ),
        pytest.param(
            _world([({"linkerd.io/control-plane-ns": "linkerd"}, {})]),
            Mesh.LINKERD,
            "pod shop/web-1 label linkerd.io/control-plane-ns=linkerd",
            id="linkerd-pod-label",
        ),
        pytest.param(
            _world([({}, {"consul.hashicorp.com/connect-inject": "true"})]),
            Mesh.CONSUL,
            "pod shop/web-1 annotation consul.hashicorp.com/connect-inject=true",
            id="consul-pod-annotation",
        ),
        pytest.param(
            _world([({"consul.hashicorp.com/connect-inject-status": "injected"}, {})]),
            Mesh.CONSUL,
            "pod shop/web-1 label consul.hashicorp.com/connect-inject-status=injected",
            id="consul-pod-label",
        ),
        pytest.param(
            _world([({}, {"consul.hashicorp.com/connect-inject": "false"})]),
            Mesh.NONE,
            "no mesh marker on the 1 endpoint pod(s)",
            id="consul-inject-false",
        ),
        pytest.param(
            _world([], ns_labels={"istio-injection": "enabled"}),
            Mesh.ISTIO,
            "namespace shop label istio-injection=enabled",
            id="istio-namespace-label",
        ),
        pytest.param(
            _world([], ns_labels={"istio.io/rev": "1-22"}),
            Mesh.ISTIO,
            "namespace shop label istio.io/rev=1-22",
            id="istio-namespace-revision",
        ),
        pytest.param(
            _world([], ns_annotations={"linkerd.io/inject": "enabled"}),
            Mesh.LINKERD,
            "namespace shop annotation linkerd.io/inject=enabled",
            id="linkerd-namespace-annotation",
        ),
        pytest.param(
            _world([], ns_labels={"istio-injection": "disabled"}),
            Mesh.NONE,
            "no mesh marker on namespace shop and no endpoint pods",
            id="istio-namespace-disabled",
        ),
        pytest.param(
            _world([ISTIO_POD], ns_annotations={"linkerd.io/inject": "enabled"}),
            Mesh.ISTIO,
            "pod shop/web-1 label security.istio.io/tlsMode=istio",
            id="pods-win-over-namespace",
        ),
    ],
)
def test_detection(world: World, mesh: Mesh, reason: str) -> None:
    choice = detect_mesh(world, SVC)
    assert (choice.mesh, choice.reason, choice.diagnostics) == (mesh, reason, ())
    # The store's per-Service pod counts only skip reading unmarked pods: a
    # World without them (pods read one by one) detects the same.
    assert world.endpoint_pod_counts is not None
    assert detect_mesh(dataclasses.replace(world, endpoint_pod_counts=None), SVC) == choice


def test_pods_of_two_meshes_are_a_conflict_not_a_guess() -> None:
    choice = detect_mesh(_world([ISTIO_POD, LINKERD_POD]), SVC)
    assert choice.mesh is None
    (d,) = choice.diagnostics
    assert d.severity is Severity.ERROR
    assert d.code == "mesh.conflict"
    assert "istio: pod shop/web-1 label security.istio.io/tlsMode=istio" in d.message
    assert "linkerd: pod shop/web-2 annotation linkerd.io/inject=enabled" in d.message
    assert "meshbridge.io/mesh" in d.fix


def test_marked_namespace_with_unmarked_pods_warns() -> None:
    choice = detect_mesh(_world([PLAIN_POD], ns_labels={"istio-injection": "enabled"}), SVC)
    assert choice.mesh is Mesh.NONE
    (d,) = choice.diagnostics
    assert (d.severity, d.code) == (Severity.WARNING, "mesh.uninjected")
    assert "restart the pods" in d.fix
    assert "none of the 1 endpoint pod(s)" in d.message


@pytest.mark.parametrize(
    ("service", "namespace", "default", "mesh", "reason"),
    [
        pytest.param(
            Mesh.NONE,
            Mesh.ISTIO,
            Mesh.LINKERD,
            Mesh.NONE,
            "annotation meshbridge.io/mesh=none on the Service",
            id="service-wins",
        ),
        pytest.param(
            None,
            Mesh.ISTIO,
            Mesh.LINKERD,
            Mesh.ISTIO,
            "annotation meshbridge.io/mesh=istio on namespace shop",
            id="namespace-next",
        ),
        pytest.param(
            None, None, Mesh.LINKERD, Mesh.LINKERD, "config default_mesh=linkerd", id="config-last"
        ),
        pytest.param(
            None,
            None,
            Mesh.AUTO,
            Mesh.ISTIO,
            "pod shop/web-1 label security.istio.io/tlsMode=istio",
            id="auto-detects",
        ),
        pytest.param(
            Mesh.AUTO,
            Mesh.NONE,
            Mesh.NONE,
            Mesh.ISTIO,
            "pod shop/web-1 label security.istio.io/tlsMode=istio",
            id="explicit-auto-detects",
        ),
    ],
)
def test_precedence(
    service: Mesh | None, namespace: Mesh | None, default: Mesh, mesh: Mesh, reason: str
) -> None:
    world = _world([ISTIO_POD])
    choice = choose_mesh(world, ResolveSettings(default_mesh=default), SVC, service, namespace)
    assert (choice.mesh, choice.reason) == (mesh, reason)
