"""The demo's world as a cluster would run it: which pods are meshed, and where endpoints go.

The bundled example world (``bridge/demo/world``) describes Services, their
EndpointSlices and, for the meshed ones, the pods behind them with the marks
a mesh's injector leaves (Istio ``security.istio.io/tlsMode=istio``, Linkerd
``linkerd.io/control-plane-ns``, Consul
``consul.hashicorp.com/connect-inject-status=injected``). The demo plays the
cluster: :func:`mesh_workloads` reads those marks the way the injector put
them there, to know which sidecar to start for which Service and which
identity that workload holds (its service account for Istio and Linkerd, its
Connect service name for Consul). It does not ask meshbridge: the point of
the demo is to check that meshbridge's own detection and TLS agree with what
the sidecars enforce.

:func:`write_world` copies the world into the directory meshbridge serves,
with every EndpointSlice pointed at a local port: a plain backend, or the
sidecar in front of a meshed one.

Reads the bundled files and writes the copy; starts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.demo import world_files
from bridge.model.ir import Mesh

ServiceKey = tuple[str, str]  # (namespace, name)

CONSUL_SERVICE_ANNOTATION = "consul.hashicorp.com/connect-service"


@dataclass(frozen=True, slots=True)
class MeshWorkload:
    """A meshed Service of the world, as its mesh's injector left its pods."""

    namespace: str
    service: str
    mesh: Mesh
    # Whose identity the pods hold: the service account (Istio, Linkerd) or
    # the Connect service name (Consul).
    identity: str

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.service)

    @property
    def name(self) -> str:
        """A short name for the workload's processes and files."""
        return f"{self.mesh.value}-{self.service}"


Docs = dict[str, list[dict[str, Any]]]  # file name → its YAML documents


def load_world() -> Docs:
    """The bundled world's documents, by file name."""
    return {
        f.name: [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
        for f in world_files()
    }


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def services(docs: Docs) -> list[ServiceKey]:
    out = []
    for d in (d for ds in docs.values() for d in ds):
        if d.get("kind") == "Service":
            meta = _meta(d)
            out.append((meta.get("namespace", "default"), meta["name"]))
    return sorted(out)


def injected_mesh(pod: Mapping[str, Any]) -> Mesh | None:
    """The mesh whose injector marked this pod, by the marks injection leaves."""
    meta = _meta(pod)
    labels = meta.get("labels") or {}
    if labels.get("security.istio.io/tlsMode") == "istio":
        return Mesh.ISTIO
    if "linkerd.io/control-plane-ns" in labels:
        return Mesh.LINKERD
    if labels.get("consul.hashicorp.com/connect-inject-status") == "injected":
        return Mesh.CONSUL
    return None


def mesh_workloads(docs: Docs) -> list[MeshWorkload]:
    """Every Service whose endpoint pods were injected, with the identity they hold."""
    pods: dict[ServiceKey, Mapping[str, Any]] = {}
    backing: dict[ServiceKey, list[str]] = {}
    for d in (d for ds in docs.values() for d in ds):
        meta = _meta(d)
        ns = meta.get("namespace", "default")
        if d.get("kind") == "Pod":
            pods[(ns, meta["name"])] = d
        elif d.get("kind") == "EndpointSlice":
            svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
            for e in d.get("endpoints") or []:
                ref = e.get("targetRef") or {}
                if svc and ref.get("kind") == "Pod" and ref.get("name"):
                    backing.setdefault((ns, svc), []).append(ref["name"])
    out = []
    for (ns, svc), names in sorted(backing.items()):
        for pod_name in names:
            pod = pods.get((ns, pod_name))
            mesh = injected_mesh(pod) if pod is not None else None
            if pod is None or mesh is None:
                continue
            spec = pod.get("spec") or {}
            if mesh is Mesh.CONSUL:
                annotations = _meta(pod).get("annotations") or {}
                identity = annotations.get(CONSUL_SERVICE_ANNOTATION) or svc
            else:
                identity = spec.get("serviceAccountName") or "default"
            out.append(MeshWorkload(ns, svc, mesh, identity))
            break  # one sidecar per Service: the demo runs one replica
    return out


def write_world(target: Path, docs: Docs, ports: Mapping[ServiceKey, int]) -> None:
    """Write ``docs`` into ``target`` with each Service's endpoints at 127.0.0.1:``ports[svc]``.

    Slices of Services missing from ``ports`` are written unchanged.
    """
    for fname, file_docs in docs.items():
        out = []
        for doc in file_docs:
            d = doc
            if d.get("kind") == "EndpointSlice":
                meta = _meta(d)
                svc = (
                    meta.get("namespace", "default"),
                    (meta.get("labels") or {}).get("kubernetes.io/service-name", ""),
                )
                if svc in ports:
                    d = dict(d)
                    # One ready endpoint on loopback; its targetRef (the pod) stays,
                    # so meshbridge still sees whose identity it is.
                    ref = next(
                        (
                            e.get("targetRef")
                            for e in d.get("endpoints") or []
                            if e.get("targetRef")
                        ),
                        None,
                    )
                    endpoint: dict[str, Any] = {
                        "addresses": ["127.0.0.1"],
                        "conditions": {"ready": True},
                    }
                    if ref:
                        endpoint["targetRef"] = ref
                    d["endpoints"] = [endpoint]
                    d["ports"] = [{**p, "port": ports[svc]} for p in d.get("ports") or []]
            out.append(d)
        (target / fname).write_text(yaml.safe_dump_all(out, sort_keys=False))
