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
relist), so the common kinds (EndpointSlice, Pod, Service) first go through a
fast path: straight-line code over plain ``dict``/``list``/``str`` values
with exact type checks, no per-field helper calls and no field paths built.
Anything it does not recognise as well-typed (a wrong type, a missing field,
a YAML tuple or a non-dict mapping) makes it give up, and the careful path
converts the object again, field by field, and raises the precise error. So
both paths accept exactly the same input and build equal values
(``tests/resolve/test_convert.py`` checks this on random mutations).

Strings that repeat across objects (namespaces, label keys and values, node
and zone names, port names and protocols, Pod and Service names, which
EndpointSlices and label values repeat) are interned on the fast path, so a
100k-Pod world holds each once. It does no I/O and keeps no state of its own
(``sys.intern``'s table drops a string when nothing else holds it).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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

T = TypeVar("T")


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
    if type(d) is dict:
        api_version = d.get("apiVersion")
        kind = d.get("kind")
        if type(api_version) is str and type(kind) is str:
            fast = _FAST.get((api_version, kind))
            if fast is not None:
                obj = fast(d)
                if obj is not None:
                    return obj
    return _parse_checked(d, where)


def _parse_checked(d: Mapping[str, Any], where: str) -> K8sObject:
    """The careful path: every field checked with its path; the only one that raises."""
    if not isinstance(d, Mapping):
        raise InvalidObject(where, "", "", f"expected a mapping (an object), got {_tname(d)}")
    api_version = d.get("apiVersion")
    kind = d.get("kind")
    parse = (
        _PARSERS.get((api_version, kind))
        if isinstance(api_version, str) and isinstance(kind, str)
        else None
    )
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
        if self.kind == "Secret":
            # Any field of a Secret may hold secret material (a token pasted
            # as `data: <value>`): name the type, never the value.
            return self.fail(field, f"expected {expected}, got {_tname(got)}")
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


# -- fast paths -----------------------------------------------------------------
#
# Each returns the converted object, or None to hand the object to the careful
# path (which then raises, or converts an unusual but valid shape). Every
# check mirrors the careful path's rule for the same field; a check that is
# not met is never an error here.

_intern = sys.intern


def positional_maker(cls: type[T]) -> Callable[..., T]:
    """A constructor for frozen slotted dataclass ``cls`` taking every init field, in order.

    The same object ``cls(...)`` builds, at about half the cost: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    this stores through the slots' own descriptors, then runs the class's
    ``__post_init__`` if it has one (which fills its derived, non-init fields),
    so nothing ``__init__`` would do is skipped.
    """
    assert dataclasses.is_dataclass(cls), cls
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    env: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for i, n in enumerate(names):
        env[f"set{i}"] = getattr(cls, n).__set__
    args = ", ".join(f"a{i}" for i in range(len(names)))
    body = "".join(f"    set{i}(o, a{i})\n" for i in range(len(names)))
    if hasattr(cls, "__post_init__"):
        body += "    o.__post_init__()\n"
    exec(f"def make({args}):\n    o = new(cls)\n{body}    return o\n", env)
    maker: Callable[..., T] = env["make"]
    return maker


_slice_endpoint_of = positional_maker(SliceEndpoint)
_endpoint_port_of = positional_maker(EndpointPort)
_service_port_of = positional_maker(ServicePort)
_endpoint_slice_of = positional_maker(K8sEndpointSlice)
_pod_of = positional_maker(K8sPod)
_service_of = positional_maker(K8sService)


def _fast_str_map(v: Any, intern_values: bool) -> FrozenDict[str, str] | None:
    if v is None:
        return EMPTY
    if type(v) is not dict:
        return None
    if not v:
        return EMPTY
    out: dict[str, str] = {}
    for k, x in v.items():
        if type(k) is not str or type(x) is not str:
            return None
        out[_intern(k)] = _intern(x) if intern_values else x
    return FrozenDict.adopt(out)


def _fast_meta(d: dict[str, Any]) -> tuple[dict[str, Any], str, str] | None:
    """(metadata, namespace, name) of a namespaced object, or None."""
    meta = d.get("metadata")
    if type(meta) is not dict:
        return None
    name = meta.get("name")
    if type(name) is not str or not name:
        return None
    ns = meta.get("namespace")
    if ns is None or ns == "":
        ns = "default"
    elif type(ns) is not str:
        return None
    return meta, _intern(ns), _intern(name)


def _fast_opt_str(v: Any) -> bool:
    """Whether ``v`` is what the careful path's ``_str`` accepts."""
    return v is None or type(v) is str


def _fast_endpoint_slice(d: dict[str, Any]) -> K8sEndpointSlice | None:
    m = _fast_meta(d)
    if m is None:
        return None
    meta, ns, name = m
    labels = _fast_str_map(meta.get("labels"), True)
    if labels is None:
        return None
    address_type = d.get("addressType")
    if type(address_type) is not str or not address_type:
        return None
    ports: list[EndpointPort] = []
    raw_ports = d.get("ports")
    if raw_ports is not None:
        if type(raw_ports) is not list:
            return None
        for p in raw_ports:
            if type(p) is not dict:
                return None
            number = p.get("port")
            if number is None:
                continue  # "all ports": left out, as on the careful path
            pname = p.get("name")
            proto = p.get("protocol")
            app = p.get("appProtocol")
            if (
                type(number) is not int
                or not _fast_opt_str(pname)
                or not _fast_opt_str(proto)
                or not _fast_opt_str(app)
            ):
                return None
            ports.append(
                _endpoint_port_of(
                    number, _intern(pname) if pname else "", _intern(proto) if proto else "TCP", app
                )
            )
    endpoints: list[SliceEndpoint] = []
    raw_endpoints = d.get("endpoints")
    if raw_endpoints is not None:
        if type(raw_endpoints) is not list:
            return None
        for e in raw_endpoints:
            if type(e) is not dict:
                return None
            addresses = e.get("addresses")
            if type(addresses) is not list or not addresses:
                return None
            for a in addresses:
                if type(a) is not str:
                    return None
            cond = e.get("conditions")
            if cond is None:
                ready = serving = terminating = None
            elif type(cond) is dict:
                ready = cond.get("ready")
                serving = cond.get("serving")
                terminating = cond.get("terminating")
                if (
                    (ready is not None and type(ready) is not bool)
                    or (serving is not None and type(serving) is not bool)
                    or (terminating is not None and type(terminating) is not bool)
                ):
                    return None
            else:
                return None
            terminating = terminating is True
            if ready is None:
                ready = not terminating
            if serving is None:
                serving = ready
            target_pod = None
            ref = e.get("targetRef")
            if ref is not None:
                if type(ref) is not dict:
                    return None
                if ref.get("kind") == "Pod":
                    tp = ref.get("name")
                    if tp is not None and type(tp) is not str:
                        return None
                    target_pod = _intern(tp) if tp else None
            node = e.get("nodeName")
            zone = e.get("zone")
            hostname = e.get("hostname")
            # _fast_opt_str inlined: this loop runs once per endpoint.
            if not (
                (node is None or type(node) is str)
                and (zone is None or type(zone) is str)
                and (hostname is None or type(hostname) is str)
            ):
                return None
            endpoints.append(
                _slice_endpoint_of(
                    tuple(addresses),
                    ready,
                    serving,
                    terminating,
                    target_pod,
                    _intern(node) if node else node,
                    _intern(zone) if zone else zone,
                    hostname,
                )
            )
    return _endpoint_slice_of(
        ns,
        name,
        labels.get(SERVICE_NAME_LABEL, ""),
        _intern(address_type),
        tuple(ports),
        tuple(endpoints),
        labels,
    )


def _fast_pod(d: dict[str, Any]) -> K8sPod | None:
    m = _fast_meta(d)
    if m is None:
        return None
    meta, ns, name = m
    spec = d.get("spec")
    if spec is None:
        spec = EMPTY_DICT
    elif type(spec) is not dict:
        return None
    status = d.get("status")
    if status is None:
        status = EMPTY_DICT
    elif type(status) is not dict:
        return None
    ips: list[str] = []
    raw_ips = status.get("podIPs")
    if raw_ips is not None:
        if type(raw_ips) is not list:
            return None
        for item in raw_ips:
            if type(item) is not dict:
                return None
            ip = item.get("ip")
            if not _fast_opt_str(ip):
                return None
            if ip:
                ips.append(ip)
    if not ips:
        ip = status.get("podIP")
        if not _fast_opt_str(ip):
            return None
        if ip:
            ips.append(ip)
    sa = spec.get("serviceAccountName")
    if not _fast_opt_str(sa):
        return None
    if not sa:
        sa = spec.get("serviceAccount")
        if not _fast_opt_str(sa):
            return None
    node = spec.get("nodeName")
    if not _fast_opt_str(node):
        return None
    labels = _fast_str_map(meta.get("labels"), True)
    annotations = _fast_str_map(meta.get("annotations"), False)
    if labels is None or annotations is None:
        return None
    return _pod_of(
        ns,
        name,
        labels,
        annotations,
        _intern(sa) if sa else "default",
        tuple(ips),
        _intern(node) if node else node,
    )


def _fast_service(d: dict[str, Any]) -> K8sService | None:
    m = _fast_meta(d)
    if m is None:
        return None
    meta, ns, name = m
    spec = d.get("spec")
    if spec is None:
        spec = EMPTY_DICT
    elif type(spec) is not dict:
        return None
    ports: list[ServicePort] = []
    raw_ports = spec.get("ports")
    if raw_ports is not None:
        if type(raw_ports) is not list:
            return None
        for p in raw_ports:
            if type(p) is not dict:
                return None
            number = p.get("port")
            target = p.get("targetPort")
            node_port = p.get("nodePort")
            pname = p.get("name")
            proto = p.get("protocol")
            app = p.get("appProtocol")
            if (
                type(number) is not int
                or not (
                    target is None or type(target) is int or (type(target) is str and target != "")
                )
                or not (node_port is None or type(node_port) is int)
                or not _fast_opt_str(pname)
                or not _fast_opt_str(proto)
                or not _fast_opt_str(app)
            ):
                return None
            ports.append(
                _service_port_of(
                    number,
                    _intern(pname) if pname else "",
                    _intern(proto) if proto else "TCP",
                    target,
                    node_port,
                    app,
                )
            )
    ingress: list[str] = []
    status = d.get("status")
    if status is not None:
        if type(status) is not dict:
            return None
        lb = status.get("loadBalancer")
        if lb is not None:
            if type(lb) is not dict:
                return None
            raw_ingress = lb.get("ingress")
            if raw_ingress is not None:
                if type(raw_ingress) is not list:
                    return None
                for item in raw_ingress:
                    if type(item) is not dict:
                        return None
                    addr = item.get("ip")
                    if not _fast_opt_str(addr):
                        return None
                    if not addr:
                        addr = item.get("hostname")
                        if not _fast_opt_str(addr):
                            return None
                    if addr:
                        ingress.append(addr)
    svc_type = spec.get("type")
    cluster_ip = spec.get("clusterIP")
    external_name = spec.get("externalName")
    uid = meta.get("uid")
    if not (
        _fast_opt_str(svc_type)
        and _fast_opt_str(cluster_ip)
        and _fast_opt_str(external_name)
        and _fast_opt_str(uid)
    ):
        return None
    external_ips = spec.get("externalIPs")
    if external_ips is None:
        external_ips = ()
    elif type(external_ips) is list:
        for ip in external_ips:
            if type(ip) is not str:
                return None
    else:
        return None
    annotations = _fast_str_map(meta.get("annotations"), False)
    labels = _fast_str_map(meta.get("labels"), True)
    selector = _fast_str_map(spec.get("selector"), True)
    if annotations is None or labels is None or selector is None:
        return None
    return _service_of(
        ns,
        name,
        tuple(ports),
        annotations,
        labels,
        _intern(svc_type) if svc_type else "ClusterIP",
        cluster_ip,
        selector,
        external_name,
        tuple(external_ips),
        tuple(ingress),
        uid or "",
    )


EMPTY_DICT: dict[str, Any] = {}  # read only: stands for a missing spec/status

_FAST: dict[tuple[str, str], Callable[[dict[str, Any]], K8sObject | None]] = {
    ("discovery.k8s.io/v1", "EndpointSlice"): _fast_endpoint_slice,
    ("v1", "Pod"): _fast_pod,
    ("v1", "Service"): _fast_service,
}
