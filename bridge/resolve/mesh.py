"""Which mesh a Service is in, and why (DESIGN.md §2).

:func:`choose_mesh` applies the precedence: the Service's
``meshbridge.io/mesh`` annotation, else its Namespace's, else the config's
``default_mesh``; when that is ``auto``, :func:`detect_mesh` reads markers.

Detection looks at the Service's endpoint pods first (the pods named by its
EndpointSlices' ``targetRef``): injection leaves a marker on every injected
pod, so when pods are visible they are the truth. Namespace markers are used
only when no endpoint pod is visible (pods not watched, or none yet): a
namespace label says what *new* pods will get, not what running ones have.
A namespace marked for a mesh whose visible pods carry no marker gets a
warning (they were probably created before injection was enabled).

Markers of two meshes → no mesh and an ERROR: guessing would either send
plaintext into a mesh or mTLS to a plain pod.

Pure: reads the World, does no I/O.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh
from bridge.model.k8s import (
    POD_MESH_ANNOTATION_KEYS,
    POD_MESH_LABEL_KEYS,
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
)
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve.annotations import MESH_KEY

CONFLICT = "mesh.conflict"
UNINJECTED = "mesh.uninjected"

_LABEL = "label"
_ANNOTATION = "annotation"

# (mesh, "label"|"annotation", key, value or None for any value)
POD_MARKERS: tuple[tuple[Mesh, str, str, str | None], ...] = (
    (Mesh.ISTIO, _LABEL, "security.istio.io/tlsMode", "istio"),
    (Mesh.LINKERD, _ANNOTATION, "linkerd.io/inject", "enabled"),
    (Mesh.LINKERD, _LABEL, "linkerd.io/control-plane-ns", None),
    (Mesh.CONSUL, _ANNOTATION, "consul.hashicorp.com/connect-inject", "true"),
    (Mesh.CONSUL, _LABEL, "consul.hashicorp.com/connect-inject-status", "injected"),
)
NAMESPACE_MARKERS: tuple[tuple[Mesh, str, str, str | None], ...] = (
    (Mesh.ISTIO, _LABEL, "istio-injection", "enabled"),
    (Mesh.ISTIO, _LABEL, "istio.io/rev", None),
    (Mesh.LINKERD, _ANNOTATION, "linkerd.io/inject", "enabled"),
)


@dataclass(frozen=True, slots=True)
class MeshChoice:
    """The mesh (``None`` when it cannot be told), why, and any problems."""

    mesh: Mesh | None
    reason: str
    diagnostics: tuple[Diagnostic, ...] = ()


def _markers(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    table: tuple[tuple[Mesh, str, str, str | None], ...],
    what: str,
) -> dict[Mesh, str]:
    """First marker per mesh found on one object, as reason text."""
    found: dict[Mesh, str] = {}
    for mesh, where, key, want in table:
        source = labels if where == _LABEL else annotations
        value = source.get(key)
        if value is not None and (want is None or value == want) and mesh not in found:
            found[mesh] = f"{what} {where} {key}={value}"
    return found


_POD_LABEL_KEYS = frozenset(key for _, where, key, _ in POD_MARKERS if where == _LABEL)
_POD_ANNOTATION_KEYS = frozenset(key for _, where, key, _ in POD_MARKERS if where == _ANNOTATION)
# A Pod works out once (K8sPod.mesh_marked) whether it carries any of the
# model's marker keys; detection trusts that flag only while the keys agree.
if (_POD_LABEL_KEYS, _POD_ANNOTATION_KEYS) != (POD_MESH_LABEL_KEYS, POD_MESH_ANNOTATION_KEYS):
    raise ImportError(
        "POD_MARKERS and bridge.model.k8s.POD_MESH_*_KEYS name different keys; keep them equal"
    )


def has_pod_markers(pod: K8sPod) -> bool:
    """Whether ``pod`` carries any mesh marker key (a cheap pre-check of :func:`pod_markers`)."""
    return pod.mesh_marked


def pod_markers(pod: K8sPod) -> dict[Mesh, str]:
    """Meshes whose markers ``pod`` carries → e.g. ``pod a/b label k=v``."""
    if not has_pod_markers(pod):
        return {}
    return _markers(pod.labels, pod.annotations, POD_MARKERS, f"pod {pod.namespace}/{pod.name}")


def namespace_markers(ns: K8sNamespace) -> dict[Mesh, str]:
    return _markers(ns.labels, ns.annotations, NAMESPACE_MARKERS, f"namespace {ns.name}")


_MESH_MARKED = operator.attrgetter("mesh_marked")


def endpoint_pods(
    world: World, svc: K8sService, slices: Iterable[K8sEndpointSlice] | None = None
) -> list[K8sPod]:
    """The pods behind the Service's EndpointSlices that the World knows, by name.

    ``slices`` (the Service's slices) may be passed when the caller has them.
    """
    if slices is None:
        slices = world.slices_of(svc.namespace, svc.name)
    elif not isinstance(slices, list):
        slices = list(slices)
    # Each slice has its targetRef names sorted and deduplicated already
    # (K8sEndpointSlice.pod_names); one slice per Service is the common case.
    if len(slices) == 1:
        names: Iterable[str] = slices[0].pod_names
    else:
        names = sorted(set().union(*[s.pod_names for s in slices]))
    if not names:
        return []
    return world.pods_named(svc.namespace, names)


@functools.lru_cache(maxsize=1024)
def _unmarked(count: int) -> MeshChoice:
    # The same (equal, immutable) choice for every Service with ``count``
    # unmarked pods and no namespace marker: made once, not once per Service.
    return MeshChoice(Mesh.NONE, f"no mesh marker on the {count} endpoint pod(s)")


def detect_mesh(
    world: World,
    svc: K8sService,
    pods: list[K8sPod] | None = None,
    ns_found: dict[Mesh, str] | None = None,
) -> MeshChoice:
    """Mesh ``auto``: read markers on the endpoint pods, else on the namespace.

    ``pods`` (:func:`endpoint_pods`; else read only when the World's counts
    say some endpoint pod is marked) and ``ns_found`` (:func:`namespace_markers`
    of the Service's Namespace) may be passed when the caller already has them.
    """
    if ns_found is None:
        ns = world.namespace(svc.namespace)
        ns_found = namespace_markers(ns) if ns is not None else {}
    count = 0
    if pods is None:
        counted = world.endpoint_pod_count(svc.namespace, svc.name)
        if counted is not None and not counted[1]:
            count = counted[0]  # no marked pod: no need to read the pods
        else:
            pods = endpoint_pods(world, svc)
    if pods:
        count = len(pods)
        marked = list(filter(_MESH_MARKED, pods))  # C-level walk; most pods are unmarked
        if marked:
            found: dict[Mesh, str] = {}
            for pod in marked:
                for mesh, reason in pod_markers(pod).items():
                    found.setdefault(mesh, reason)
            if found:
                return _one(svc, found, "endpoint pods carry markers of more than one mesh")
    if count:
        if not ns_found:
            return _unmarked(count)
        reason = f"no mesh marker on the {count} endpoint pod(s)"
        return MeshChoice(
            Mesh.NONE,
            reason,
            (
                Diagnostic(
                    svc.ref,
                    "mesh",
                    f"{' and '.join(ns_found.values())}, but none of the {count} "
                    "endpoint pod(s) carries a mesh marker; sending plaintext",
                    "restart the pods so they are injected, or set "
                    f"{MESH_KEY} on the Service to say which mesh it is in",
                    Severity.WARNING,
                    UNINJECTED,
                ),
            ),
        )
    if ns_found:
        return _one(
            svc, ns_found, f"namespace {svc.namespace} carries markers of more than one mesh"
        )
    return MeshChoice(
        Mesh.NONE, f"no mesh marker on namespace {svc.namespace} and no endpoint pods"
    )


def _one(svc: K8sService, found: dict[Mesh, str], problem: str) -> MeshChoice:
    if len(found) == 1:
        ((mesh, reason),) = found.items()
        return MeshChoice(mesh, reason)
    listed = "; ".join(f"{m.value}: {r}" for m, r in sorted(found.items()))
    return MeshChoice(
        None,
        "conflicting mesh markers",
        (
            Diagnostic(
                svc.ref,
                "mesh",
                f"{problem} ({listed})",
                f"set {MESH_KEY} on the Service to the mesh it is in (or none)",
                Severity.ERROR,
                CONFLICT,
            ),
        ),
    )


def choose_mesh(
    world: World,
    settings: ResolveSettings,
    svc: K8sService,
    service_mesh: Mesh | None,
    namespace_mesh: Mesh | None,
    pods: Callable[[], list[K8sPod]] | None = None,
    ns_found: dict[Mesh, str] | None = None,
) -> MeshChoice:
    """Service annotation > Namespace annotation > config; ``auto`` → :func:`detect_mesh`.

    ``pods`` (called only when markers must be read) and ``ns_found`` are
    passed on to :func:`detect_mesh`.
    """
    if service_mesh is not None:
        mesh, reason = service_mesh, f"annotation {MESH_KEY}={service_mesh.value} on the Service"
    elif namespace_mesh is not None:
        mesh = namespace_mesh
        reason = f"annotation {MESH_KEY}={namespace_mesh.value} on namespace {svc.namespace}"
    else:
        mesh, reason = settings.default_mesh, f"config default_mesh={settings.default_mesh.value}"
    if mesh is not Mesh.AUTO:
        return MeshChoice(mesh, reason)
    return detect_mesh(world, svc, pods() if pods is not None else None, ns_found)


__all__ = [
    "CONFLICT",
    "UNINJECTED",
    "MeshChoice",
    "choose_mesh",
    "detect_mesh",
    "endpoint_pods",
    "has_pod_markers",
    "namespace_markers",
    "pod_markers",
]
