"""Kubernetes object dicts (YAML files or API JSON) → the model's frozen types.

:func:`parse_object` is the one boundary where raw wire dicts become
:mod:`bridge.model.k8s` values. It reads only the fields meshbridge uses and
ignores the rest (``status`` it does not need, ``managedFields``, ...): real
objects carry many. A field it *does* read with the wrong type, a missing
required field, or an unsupported ``apiVersion``/``kind`` raises
:class:`InvalidObject` naming where the object came from, the object and the
field path.

Supported: v1 Service, Namespace, Pod, ConfigMap, Secret, Node and
discovery.k8s.io/v1 EndpointSlice.

It sits on the hot path of the Kubernetes adapter (100k endpoints on a
relist), so it never deep-copies and never re-validates what it already
built. It does no I/O and keeps no state.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from bridge.errors import SourceError
from bridge.model.frozen import EMPTY, FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sConfigMap,
    K8sEndpointSlice,
    K8sNamespace,
    K8sNode,
    K8sObject,
    K8sPod,
    K8sSecret,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.secrets import SecretBytes

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class InvalidObject(SourceError):
    """A Kubernetes object could not be converted.

    ``where`` is the file or API path it came from, ``obj`` names the object
    (``Service default/web``, or ``""`` when not even the name could be read)
    and ``field`` is the dotted path of the offending field.
    """

    def __init__(self, where: str, obj: str, field: str, problem: str) -> None:
        self.where = where
        self.obj = obj
        self.field = field
        self.problem = problem
        parts = [p for p in (where, obj, f"field {field}" if field else "") if p]
        super().__init__(": ".join([*parts, problem]))


class UnsupportedKind(InvalidObject):
    """The object's ``apiVersion``/``kind`` is not one meshbridge reads.

    A directory source may choose to skip these (a file can hold Deployments
    too); an API adapter never sees them because it watches only what it reads.
    """


SUPPORTED: frozenset[tuple[str, str]] = frozenset(
    {
        ("v1", "Service"),
        ("v1", "Namespace"),
        ("v1", "Pod"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Node"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
    }
)


def parse_object(d: Mapping[str, Any], where: str) -> K8sObject:
    """Convert one Kubernetes object dict into its model type.

    ``where`` says where it came from (a file path, ``watch /api/v1/pods``) and
    prefixes every error message.
    """
    if not isinstance(d, Mapping):
        raise InvalidObject(where, "", "", f"expected a mapping (an object), got {_tname(d)}")
    api_version = d.get("apiVersion")
    kind = d.get("kind")
    parse = _PARSERS.get((api_version, kind)) if isinstance(api_version, str) else None
    if parse is None:
        shown = f"{api_version!s} {kind!s}" if api_version or kind else "no apiVersion/kind"
        raise UnsupportedKind(
            where,
            "",
            "kind" if api_version else "apiVersion",
            f"unsupported object {shown} (meshbridge reads v1 Service, Namespace, Pod, "
            "ConfigMap, Secret, Node and discovery.k8s.io/v1 EndpointSlice)",
        )
    assert isinstance(kind, str)
    return parse(_Ctx(where, kind, d))


# -- reading helpers ----------------------------------------------------------


class _Ctx:
    """Where we are, for error messages; built once per object."""

    __slots__ = ("d", "kind", "name", "namespace", "where")

    def __init__(self, where: str, kind: str, d: Mapping[str, Any]) -> None:
        self.where = where
        self.kind = kind
        self.d = d
        self.name = ""
        self.namespace = ""

    def fail(self, field: str, problem: str) -> InvalidObject:
        if self.name:
            obj = (
                f"{self.kind} {self.namespace}/{self.name}"
                if self.namespace
                else f"{self.kind} {self.name}"
            )
        else:
            obj = self.kind
        return InvalidObject(self.where, obj, field, problem)

    def wrong(self, field: str, expected: str, got: Any) -> InvalidObject:
        return self.fail(field, f"expected {expected}, got {_tname(got)} {_short(got)}")


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    return {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        list: "list",
        dict: "mapping",
    }.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _map(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    v = parent.get(key)
    if v is None:
        return EMPTY
    if not isinstance(v, Mapping):
        raise ctx.wrong(path, "a mapping", v)
    return v


def _list(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
    v = parent.get(key)
    if v is None:
        return []
    if not isinstance(v, list | tuple):
        raise ctx.wrong(path, "a list", v)
    return list(v) if isinstance(v, tuple) else v


def _str(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> str | None:
    v = parent.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ctx.wrong(path, "a string", v)


def _req_str(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> str:
    v = parent.get(key)
    if isinstance(v, str) and v:
        return v
    if v is None or v == "":
        raise ctx.fail(path, "required field is missing")
    raise ctx.wrong(path, "a string", v)


def _int(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> int | None:
    v = parent.get(key)
    # bool is an int subclass in Python; YAML `port: true` is still wrong.
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise ctx.wrong(path, "an integer", v)


def _bool(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> bool | None:
    v = parent.get(key)
    if v is None or isinstance(v, bool):
        return v
    raise ctx.wrong(path, "a boolean", v)


def _str_map(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> FrozenDict[str, str]:
    v = parent.get(key)
    if not v:
        if v is None or isinstance(v, Mapping):
            return EMPTY
        raise ctx.wrong(path, "a mapping of strings", v)
    if not isinstance(v, Mapping):
        raise ctx.wrong(path, "a mapping of strings", v)
    for k, item in v.items():
        if not isinstance(item, str) or not isinstance(k, str):
            # Unquoted YAML like `port: 8080` or `enabled: true` in labels or
            # annotations: Kubernetes rejects these too.
            bad = k if not isinstance(k, str) else item
            raise ctx.fail(
                f"{path}[{k}]",
                f"expected a string, got {_tname(bad)} {_short(bad)} (quote it in YAML)",
            )
    return FrozenDict(v)


def _str_list(ctx: _Ctx, parent: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _list(ctx, parent, key, path)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ctx.wrong(f"{path}[{i}]", "a string", item)
    return tuple(items)


def _metadata(ctx: _Ctx, namespaced: bool) -> Mapping[str, Any]:
    meta = _map(ctx, ctx.d, "metadata", "metadata")
    ctx.name = _req_str(ctx, meta, "name", "metadata.name")
    if namespaced:
        # kubectl's default for a file without a namespace.
        ctx.namespace = _str(ctx, meta, "namespace", "metadata.namespace") or "default"
    return meta


# -- per kind -----------------------------------------------------------------


def _service(ctx: _Ctx) -> K8sService:
    meta = _metadata(ctx, namespaced=True)
    spec = _map(ctx, ctx.d, "spec", "spec")
    ports = []
    for i, p in enumerate(_list(ctx, spec, "ports", "spec.ports")):
        path = f"spec.ports[{i}]"
        if not isinstance(p, Mapping):
            raise ctx.wrong(path, "a mapping", p)
        number = _int(ctx, p, "port", f"{path}.port")
        if number is None:
            raise ctx.fail(f"{path}.port", "required field is missing")
        target = p.get("targetPort")
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int | str) or target == ""
        ):
            raise ctx.wrong(f"{path}.targetPort", "an integer or a port name", target)
        ports.append(
            ServicePort(
                port=number,
                name=_str(ctx, p, "name", f"{path}.name") or "",
                protocol=_str(ctx, p, "protocol", f"{path}.protocol") or "TCP",
                target_port=target,
                node_port=_int(ctx, p, "nodePort", f"{path}.nodePort"),
                app_protocol=_str(ctx, p, "appProtocol", f"{path}.appProtocol"),
            )
        )
    status = _map(ctx, ctx.d, "status", "status")
    lb = _map(ctx, status, "loadBalancer", "status.loadBalancer")
    ingress = []
    for i, item in enumerate(_list(ctx, lb, "ingress", "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(item, Mapping):
            raise ctx.wrong(path, "a mapping", item)
        addr = _str(ctx, item, "ip", f"{path}.ip") or _str(
            ctx, item, "hostname", f"{path}.hostname"
        )
        if addr:
            ingress.append(addr)
    return K8sService(
        namespace=ctx.namespace,
        name=ctx.name,
        ports=tuple(ports),
        annotations=_str_map(ctx, meta, "annotations", "metadata.annotations"),
        labels=_str_map(ctx, meta, "labels", "metadata.labels"),
        type=_str(ctx, spec, "type", "spec.type") or "ClusterIP",
        cluster_ip=_str(ctx, spec, "clusterIP", "spec.clusterIP"),
        selector=_str_map(ctx, spec, "selector", "spec.selector"),
        external_name=_str(ctx, spec, "externalName", "spec.externalName"),
        external_ips=_str_list(ctx, spec, "externalIPs", "spec.externalIPs"),
        load_balancer_ingress=tuple(ingress),
        uid=_str(ctx, meta, "uid", "metadata.uid") or "",
    )


def _endpoint_slice(ctx: _Ctx) -> K8sEndpointSlice:
    meta = _metadata(ctx, namespaced=True)
    d = ctx.d
    labels = _str_map(ctx, meta, "labels", "metadata.labels")
    address_type = d.get("addressType")
    if not isinstance(address_type, str) or not address_type:
        if address_type is None:
            raise ctx.fail("addressType", "required field is missing")
        raise ctx.wrong("addressType", "a string", address_type)
    ports = []
    for i, p in enumerate(_list(ctx, d, "ports", "ports")):
        path = f"ports[{i}]"
        if not isinstance(p, Mapping):
            raise ctx.wrong(path, "a mapping", p)
        number = _int(ctx, p, "port", f"{path}.port")
        if number is None:
            # A nil port means "all ports" (no Service port to match): nothing
            # meshbridge can route to, so it is left out rather than refused.
            continue
        ports.append(
            EndpointPort(
                port=number,
                name=_str(ctx, p, "name", f"{path}.name") or "",
                protocol=_str(ctx, p, "protocol", f"{path}.protocol") or "TCP",
                app_protocol=_str(ctx, p, "appProtocol", f"{path}.appProtocol"),
            )
        )
    endpoints = []
    raw_endpoints = d.get("endpoints")
    if raw_endpoints is not None and not isinstance(raw_endpoints, list):
        raise ctx.wrong("endpoints", "a list", raw_endpoints)
    for i, e in enumerate(raw_endpoints or ()):
        if not isinstance(e, Mapping):
            raise ctx.wrong(f"endpoints[{i}]", "a mapping", e)
        endpoints.append(_slice_endpoint(ctx, e, i))
    return K8sEndpointSlice(
        namespace=ctx.namespace,
        name=ctx.name,
        # A slice without the label belongs to no Service (custom or mirrored
        # slices are legitimate), so it is kept but matches nothing.
        service_name=labels.get(SERVICE_NAME_LABEL, ""),
        address_type=address_type,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        labels=labels,
    )


def _slice_endpoint(ctx: _Ctx, e: Mapping[str, Any], i: int) -> SliceEndpoint:
    addresses = e.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        if addresses is None or addresses == []:
            raise ctx.fail(f"endpoints[{i}].addresses", "required field is missing")
        raise ctx.wrong(f"endpoints[{i}].addresses", "a list of strings", addresses)
    for j, a in enumerate(addresses):
        if not isinstance(a, str):
            raise ctx.wrong(f"endpoints[{i}].addresses[{j}]", "a string", a)
    cond = e.get("conditions")
    ready = serving = terminating = None
    if cond is not None:
        if not isinstance(cond, Mapping):
            raise ctx.wrong(f"endpoints[{i}].conditions", "a mapping", cond)
        ready = _bool(ctx, cond, "ready", f"endpoints[{i}].conditions.ready")
        serving = _bool(ctx, cond, "serving", f"endpoints[{i}].conditions.serving")
        terminating = _bool(ctx, cond, "terminating", f"endpoints[{i}].conditions.terminating")
    terminating = bool(terminating)
    # Kubernetes: a nil ready means ready, unless the endpoint is terminating.
    if ready is None:
        ready = not terminating
    if serving is None:
        serving = ready
    target_pod = None
    ref = e.get("targetRef")
    if ref is not None:
        if not isinstance(ref, Mapping):
            raise ctx.wrong(f"endpoints[{i}].targetRef", "a mapping", ref)
        if ref.get("kind") == "Pod":
            target_pod = _str(ctx, ref, "name", f"endpoints[{i}].targetRef.name") or None
    return SliceEndpoint(
        addresses=tuple(addresses),
        ready=ready,
        serving=serving,
        terminating=terminating,
        target_pod=target_pod,
        node_name=_str(ctx, e, "nodeName", f"endpoints[{i}].nodeName"),
        zone=_str(ctx, e, "zone", f"endpoints[{i}].zone"),
        hostname=_str(ctx, e, "hostname", f"endpoints[{i}].hostname"),
    )


def _namespace(ctx: _Ctx) -> K8sNamespace:
    meta = _metadata(ctx, namespaced=False)
    return K8sNamespace(
        name=ctx.name,
        labels=_str_map(ctx, meta, "labels", "metadata.labels"),
        annotations=_str_map(ctx, meta, "annotations", "metadata.annotations"),
    )


def _pod(ctx: _Ctx) -> K8sPod:
    meta = _metadata(ctx, namespaced=True)
    spec = _map(ctx, ctx.d, "spec", "spec")
    status = _map(ctx, ctx.d, "status", "status")
    ips: list[str] = []
    for i, item in enumerate(_list(ctx, status, "podIPs", "status.podIPs")):
        if not isinstance(item, Mapping):
            raise ctx.wrong(f"status.podIPs[{i}]", "a mapping", item)
        ip = _str(ctx, item, "ip", f"status.podIPs[{i}].ip")
        if ip:
            ips.append(ip)
    if not ips:
        ip = _str(ctx, status, "podIP", "status.podIP")
        if ip:
            ips.append(ip)
    sa = _str(ctx, spec, "serviceAccountName", "spec.serviceAccountName") or _str(
        ctx, spec, "serviceAccount", "spec.serviceAccount"
    )
    return K8sPod(
        namespace=ctx.namespace,
        name=ctx.name,
        labels=_str_map(ctx, meta, "labels", "metadata.labels"),
        annotations=_str_map(ctx, meta, "annotations", "metadata.annotations"),
        service_account=sa or "default",
        pod_ips=tuple(ips),
        node_name=_str(ctx, spec, "nodeName", "spec.nodeName"),
    )


def _config_map(ctx: _Ctx) -> K8sConfigMap:
    meta = _metadata(ctx, namespaced=True)
    return K8sConfigMap(
        namespace=ctx.namespace,
        name=ctx.name,
        data=_str_map(ctx, ctx.d, "data", "data"),
        labels=_str_map(ctx, meta, "labels", "metadata.labels"),
    )


def _secret(ctx: _Ctx) -> K8sSecret:
    _metadata(ctx, namespaced=True)
    data: dict[str, SecretBytes] = {}
    raw = _map(ctx, ctx.d, "data", "data")
    for k, v in raw.items():
        if not isinstance(v, str):
            # Never echo the value: it is secret material.
            raise ctx.fail(f"data[{k}]", f"expected a base64 string, got {_tname(v)}")
        try:
            data[k] = SecretBytes(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ctx.fail(
                f"data[{k}]", "not valid base64 (use stringData for plain text)"
            ) from exc
    # stringData is merged over data, as the API server does on write.
    for k, v in _map(ctx, ctx.d, "stringData", "stringData").items():
        if not isinstance(v, str):
            raise ctx.fail(f"stringData[{k}]", f"expected a string, got {_tname(v)}")
        data[k] = SecretBytes(v)
    return K8sSecret(
        namespace=ctx.namespace,
        name=ctx.name,
        type=_str(ctx, ctx.d, "type", "type") or "Opaque",
        data=FrozenDict(data),
    )


def _node(ctx: _Ctx) -> K8sNode:
    meta = _metadata(ctx, namespaced=False)
    status = _map(ctx, ctx.d, "status", "status")
    addresses = []
    for i, item in enumerate(_list(ctx, status, "addresses", "status.addresses")):
        path = f"status.addresses[{i}]"
        if not isinstance(item, Mapping):
            raise ctx.wrong(path, "a mapping", item)
        type_ = _req_str(ctx, item, "type", f"{path}.type")
        address = _req_str(ctx, item, "address", f"{path}.address")
        addresses.append((type_, address))
    return K8sNode(
        name=ctx.name,
        addresses=tuple(addresses),
        labels=_str_map(ctx, meta, "labels", "metadata.labels"),
    )


_PARSERS: dict[tuple[Any, Any], Callable[[_Ctx], K8sObject]] = {
    ("v1", "Service"): _service,
    ("v1", "Namespace"): _namespace,
    ("v1", "Pod"): _pod,
    ("v1", "ConfigMap"): _config_map,
    ("v1", "Secret"): _secret,
    ("v1", "Node"): _node,
    ("discovery.k8s.io/v1", "EndpointSlice"): _endpoint_slice,
}
