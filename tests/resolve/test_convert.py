"""Kubernetes object dicts → model types: what is read, what is refused, and why."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from bridge.errors import SourceError
from bridge.model.k8s import (
    EndpointPort,
    K8sConfigMap,
    K8sEndpointSlice,
    K8sNamespace,
    K8sNode,
    K8sPod,
    K8sSecret,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.secrets import SecretBytes
from bridge.sources.convert import InvalidObject, UnsupportedKind, parse_object


def _service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"port": 80}], **spec},
    }


def _slice(*endpoints: dict[str, Any], ports: Any = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": ports if ports is not None else [{"name": "http", "port": 8080}],
        "endpoints": list(endpoints),
    }


def test_service_reads_the_fields_meshbridge_uses_and_ignores_the_rest() -> None:
    d = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u-1",
            "annotations": {"meshbridge.io/prefix": "/web"},
            "labels": {"app": "web"},
            "managedFields": [{"manager": "kubectl"}],
            "resourceVersion": "12",
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.0.0.7",
            "selector": {"app": "web"},
            "externalIPs": ["192.0.2.1"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt", "appProtocol": "http"},
                {"name": "grpc", "port": 9090, "targetPort": 9091, "nodePort": 30001},
            ],
            "sessionAffinity": "None",
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb"}]}},
    }
    svc = parse_object(d, "a.yaml")
    assert svc == K8sService(
        namespace="shop",
        name="web",
        ports=(
            ServicePort(port=80, name="http", target_port="http-alt", app_protocol="http"),
            ServicePort(port=9090, name="grpc", target_port=9091, node_port=30001),
        ),
        annotations={"meshbridge.io/prefix": "/web"},  # type: ignore[arg-type]
        labels={"app": "web"},  # type: ignore[arg-type]
        type="LoadBalancer",
        cluster_ip="10.0.0.7",
        selector={"app": "web"},  # type: ignore[arg-type]
        external_ips=("192.0.2.1",),
        load_balancer_ingress=("198.51.100.1", "lb"),
        uid="u-1",
    )
    hash(svc)  # frozen all the way down


def test_namespace_defaults_to_default_like_kubectl() -> None:
    d = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    svc = parse_object(d, "a.yaml")
    assert isinstance(svc, K8sService)
    assert (svc.namespace, svc.ports) == ("default", ())


@pytest.mark.parametrize(
    ("conditions", "ready", "serving", "terminating"),
    [
        pytest.param(None, True, True, False, id="no-conditions-means-ready"),
        pytest.param({}, True, True, False, id="empty-conditions-means-ready"),
        pytest.param({"ready": False}, False, False, False, id="not-ready"),
        pytest.param({"terminating": True}, False, False, True, id="nil-ready-terminating"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True},
            False,
            True,
            True,
            id="terminating-still-serving",
        ),
        pytest.param({"ready": True}, True, True, False, id="ready"),
    ],
)
def test_endpoint_conditions_follow_kubernetes_defaults(
    conditions: dict[str, Any] | None, ready: bool, serving: bool, terminating: bool
) -> None:
    e: dict[str, Any] = {"addresses": ["10.1.0.1"]}
    if conditions is not None:
        e["conditions"] = conditions
    s = parse_object(_slice(e), "s.yaml")
    assert isinstance(s, K8sEndpointSlice)
    (got,) = s.endpoints
    assert (got.ready, got.serving, got.terminating) == (ready, serving, terminating)


def test_endpoint_slice_reads_ports_endpoints_and_service_label() -> None:
    d = _slice(
        {
            "addresses": ["10.1.0.1"],
            "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "x"},
            "nodeName": "n1",
            "zone": "z1",
            "hostname": "h",
        },
        {"addresses": ["10.1.0.2"], "targetRef": {"kind": "Node", "name": "n2"}},
        ports=[{"name": "http", "port": 8080, "appProtocol": "h2c"}, {"name": "all"}],
    )
    s = parse_object(d, "s.yaml")
    assert s == K8sEndpointSlice(
        namespace="shop",
        name="web-abc",
        service_name="web",
        ports=(EndpointPort(port=8080, name="http", app_protocol="h2c"),),
        endpoints=(
            SliceEndpoint(
                addresses=("10.1.0.1",), target_pod="web-1", node_name="n1", zone="z1", hostname="h"
            ),
            SliceEndpoint(addresses=("10.1.0.2",)),
        ),
        labels={"kubernetes.io/service-name": "web"},  # type: ignore[arg-type]
    )


def test_slice_without_service_label_belongs_to_no_service() -> None:
    d = _slice()
    del d["metadata"]["labels"]
    s = parse_object(d, "s.yaml")
    assert isinstance(s, K8sEndpointSlice)
    assert s.service_name == ""


def test_pod_namespace_configmap() -> None:
    pod = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "web-sa", "nodeName": "n1"},
            "status": {"podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.1"}, {"ip": "fd00::1"}]},
        },
        "p.yaml",
    )
    assert pod == K8sPod(
        namespace="shop",
        name="web-1",
        labels={"app": "web"},  # type: ignore[arg-type]
        service_account="web-sa",
        pod_ips=("10.1.0.1", "fd00::1"),
        node_name="n1",
    )
    ns = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}},
        },
        "n.yaml",
    )
    assert ns == K8sNamespace(name="shop", labels={"istio-injection": "enabled"})  # type: ignore[arg-type]
    cm = parse_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "roots", "namespace": "shop"},
            "data": {"root-cert.pem": "PEM"},
        },
        "c.yaml",
    )
    assert cm == K8sConfigMap(namespace="shop", name="roots", data={"root-cert.pem": "PEM"})  # type: ignore[arg-type]


def _node(addresses: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "worker-1", "labels": {"topology.kubernetes.io/zone": "a"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": addresses, "capacity": {"cpu": "4"}},
    }


def test_node_reads_its_addresses_by_type_in_order() -> None:
    node = parse_object(
        _node(
            [
                {"type": "InternalIP", "address": "172.18.0.2"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "fd00::2"},
                {"type": "Hostname", "address": "worker-1"},
            ]
        ),
        "nodes.yaml",
    )
    assert node == K8sNode(
        name="worker-1",
        addresses=(
            ("InternalIP", "172.18.0.2"),
            ("ExternalIP", "203.0.113.7"),
            ("InternalIP", "fd00::2"),
            ("Hostname", "worker-1"),
        ),
        labels={"topology.kubernetes.io/zone": "a"},  # type: ignore[arg-type]
    )
    assert node.ref.namespace == "" and str(node.ref) == "Node worker-1"
    assert node.addresses_of("InternalIP") == ("172.18.0.2", "fd00::2")
    assert node.addresses_of("ExternalIP") == ("203.0.113.7",)
    # A node that has not reported yet has no addresses: kept, matches nothing.
    bare = _node(None)
    del bare["status"]
    assert parse_object(bare, "nodes.yaml") == K8sNode(
        name="worker-1",
        labels={"topology.kubernetes.io/zone": "a"},  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        pytest.param(
            [{"type": "InternalIP"}],
            "Node worker-1: field status.addresses[0].address: required field is missing",
            id="address-missing",
        ),
        pytest.param(
            [{"type": "InternalIP", "address": 17}],
            "field status.addresses[0].address: expected a string, got integer 17",
            id="address-as-int",
        ),
        pytest.param(
            ["172.18.0.2"],
            "field status.addresses[0]: expected a mapping",
            id="address-as-string",
        ),
        pytest.param(
            {"InternalIP": "172.18.0.2"},
            "field status.addresses: expected a list",
            id="addresses-as-mapping",
        ),
    ],
)
def test_node_with_bad_addresses_names_the_field(addresses: Any, message: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_object(_node(addresses), "nodes.yaml")
    assert message in str(err.value)


def test_secret_decodes_base64_and_merges_string_data_over_it() -> None:
    d = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls", "namespace": "shop"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.key": base64.b64encode(b"KEY").decode(),
            "ca.crt": base64.b64encode(b"old").decode(),
        },
        "stringData": {"ca.crt": "new"},
    }
    s = parse_object(d, "sec.yaml")
    assert isinstance(s, K8sSecret)
    assert s.type == "kubernetes.io/tls"
    assert s.data == {"tls.key": SecretBytes(b"KEY"), "ca.crt": SecretBytes(b"new")}
    assert "KEY" not in repr(s)


def test_bad_secret_value_is_named_without_echoing_it() -> None:
    d = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls", "namespace": "shop"},
        "data": {"tls.key": "not base64 at all: hunter2"},
    }
    with pytest.raises(InvalidObject) as err:
        parse_object(d, "sec.yaml")
    assert str(err.value).startswith(
        "sec.yaml: Secret shop/tls: field data[tls.key]: not valid base64"
    )
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        pytest.param(
            "data", "aHVudGVyMg==", "field data: expected a mapping, got string", id="data"
        ),
        pytest.param(
            "data", ["aHVudGVyMg=="], "field data: expected a mapping, got list", id="data-list"
        ),
        pytest.param(
            "data", {"token": 12345678}, "field data[token]: expected a base64 string", id="item"
        ),
        pytest.param(
            "stringData", "hunter2", "field stringData: expected a mapping", id="string-data"
        ),
        pytest.param(
            "stringData", {"token": ["hunter2"]}, "field stringData[token]", id="string-item"
        ),
        pytest.param("type", ["hunter2"], "field type: expected a string, got list", id="type"),
    ],
)
def test_wrongly_typed_secret_fields_never_show_the_value(
    field: str, value: Any, where: str
) -> None:
    d = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t", "namespace": "s"}}
    d[field] = value
    with pytest.raises(InvalidObject) as err:
        parse_object(d, "sec.yaml")
    text = str(err.value)
    assert where in text and "Secret s/t" in text
    for secret in ("hunter2", "aHVudGVyMg==", "12345678"):
        assert secret not in text and secret not in err.value.problem
    # The same message is what a watch turns into a diagnostic.
    assert secret not in repr(err.value.args)


def _with(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path (list indexes as numbers) in a fresh copy of ``d``."""
    out = copy.deepcopy(d)
    cur: Any = out
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("d", "message"),
    [
        pytest.param(
            _with(_service(), "spec.ports.0.port", "80"),
            "x.yaml: Service shop/web: field spec.ports[0].port: "
            "expected an integer, got string '80'",
            id="port-as-string",
        ),
        pytest.param(
            _with(_service(), "spec.ports.0.port", True),
            "field spec.ports[0].port: expected an integer, got boolean True",
            id="port-as-bool",
        ),
        pytest.param(
            _with(_service(), "spec.ports.0.port", _DELETE),
            "field spec.ports[0].port: required field is missing",
            id="port-missing",
        ),
        pytest.param(
            _with(_service(), "spec.ports", {"port": 80}),
            "field spec.ports: expected a list",
            id="ports-not-a-list",
        ),
        pytest.param(
            _with(_service(), "metadata.name", _DELETE),
            "x.yaml: Service: field metadata.name: required field is missing",
            id="name-missing",
        ),
        pytest.param(
            _with(_service(), "metadata.annotations", {"meshbridge.io/port": 8080}),
            "field metadata.annotations[meshbridge.io/port]: expected a string, got integer 8080 "
            "(quote it in YAML)",
            id="unquoted-annotation",
        ),
        pytest.param(
            _with(_service(), "spec.ports.0.targetPort", 1.5),
            "field spec.ports[0].targetPort: expected an integer or a port name",
            id="target-port-float",
        ),
        pytest.param(
            _slice({"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}),
            "EndpointSlice shop/web-abc: field endpoints[0].conditions.ready: expected a boolean",
            id="ready-as-string",
        ),
        pytest.param(
            _with(_slice({"addresses": ["10.0.0.1"]}), "endpoints.0.addresses", "10.0.0.1"),
            "field endpoints[0].addresses: expected a list of strings",
            id="addresses-as-string",
        ),
        pytest.param(
            _with(_slice({"addresses": ["10.0.0.1"]}), "endpoints.0.addresses", []),
            "field endpoints[0].addresses: required field is missing",
            id="addresses-empty",
        ),
        pytest.param(
            _with(_slice(), "addressType", _DELETE),
            "field addressType: required field is missing",
            id="address-type-missing",
        ),
        pytest.param(
            _with(_slice(), "metadata.labels", ["a"]),
            "field metadata.labels: expected a mapping of strings",
            id="labels-as-list",
        ),
        pytest.param(
            _with(_service(), "spec", "ports"),
            "field spec: expected a mapping",
            id="spec-as-string",
        ),
    ],
)
def test_wrong_types_and_missing_fields_name_the_field(d: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_object(d, "x.yaml")
    assert message in str(err.value)
    assert isinstance(err.value, SourceError)


@pytest.mark.parametrize(
    "d",
    [
        pytest.param({"apiVersion": "apps/v1", "kind": "Deployment"}, id="other-kind"),
        pytest.param({"apiVersion": "v1beta1", "kind": "Service"}, id="other-version"),
        pytest.param(
            {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice"}, id="beta-slice"
        ),
        pytest.param({"metadata": {"name": "x"}}, id="no-kind"),
    ],
)
def test_unsupported_kinds_are_refused_with_the_list_of_supported_ones(d: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedKind) as err:
        parse_object(d, "x.yaml")
    assert "meshbridge reads v1 Service" in str(err.value)
    assert str(err.value).startswith("x.yaml: ")


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidObject, match="expected a mapping"):
        parse_object(["a"], "x.yaml")  # type: ignore[arg-type]


# -- the fast path and the careful path agree ---------------------------------------

_FULL_SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "web-abc",
        "namespace": "shop",
        "labels": {"kubernetes.io/service-name": "web", "x": "y"},
    },
    "addressType": "IPv4",
    "ports": [
        {"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
        {"port": 9090},
        {"name": "all"},
    ],
    "endpoints": [
        {
            "addresses": ["10.0.0.1", "10.0.0.2"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"},
            "nodeName": "n1",
            "zone": "z1",
            "hostname": "h1",
        },
        {"addresses": ["10.0.0.3"], "conditions": {"terminating": True}},
        {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Node", "name": "n2"}},
    ],
}
_FULL_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "labels": {"app": "web"},
        "annotations": {"linkerd.io/inject": "enabled"},
    },
    "spec": {"serviceAccountName": "web-sa", "serviceAccount": "old", "nodeName": "n1"},
    "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
}
_FULL_SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"meshbridge.io/prefix": "/web"},
    },
    "spec": {
        "type": "LoadBalancer",
        "clusterIP": "172.20.0.1",
        "selector": {"app": "web"},
        "externalName": "web.example.com",
        "externalIPs": ["198.51.100.1"],
        "ports": [
            {
                "name": "http",
                "port": 80,
                "targetPort": "http",
                "nodePort": 30080,
                "protocol": "TCP",
                "appProtocol": "http",
            },
            {"port": 81, "targetPort": 8081},
        ],
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"hostname": "lb.example"}]}},
}
_ODD: list[Any] = [None, "", "x", 0, 7, True, False, 1.5, [], ["a"], [1], {}, {"a": "b"}, ("t",)]


def _paths(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*path, i))
    return out


def _mutated(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    cur: Any = out
    for k in path[:-1]:
        cur = cur[k]
    if value is _DELETE:
        if isinstance(cur, list):
            cur.pop(path[-1])
        else:
            del cur[path[-1]]
    else:
        cur[path[-1]] = copy.deepcopy(value)
    return out


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(_FULL_SLICE, id="EndpointSlice"),
        pytest.param(_FULL_POD, id="Pod"),
        pytest.param(_FULL_SERVICE, id="Service"),
    ],
)
def test_fast_path_builds_what_the_careful_path_builds_and_never_more(
    base: dict[str, Any],
) -> None:
    from bridge.sources.convert import _FAST, _parse_checked

    fast = _FAST[(base["apiVersion"], base["kind"])]
    assert fast(copy.deepcopy(base)) is not None, "the well-typed shape takes the fast path"
    taken = refused = 0
    # Every field of the object, deleted or set to each odd value in turn
    # (apiVersion and kind choose the path, parse_object checks them first).
    for path in _paths(base):
        if path in {("apiVersion",), ("kind",)}:
            continue
        for value in [_DELETE, *_ODD]:
            d = _mutated(base, path, value)
            got = fast(d)
            try:
                want = _parse_checked(d, "x.yaml")
            except InvalidObject:
                assert got is None, f"fast path took what the careful one refuses: {path}={value!r}"
                refused += 1
                continue
            if got is not None:
                assert type(got) is type(want) and got == want, f"{path}={value!r}"
                assert repr(got) == repr(want)
                taken += 1
    assert taken > 50 and refused > 50, (taken, refused)


def test_fast_path_interns_repeated_strings() -> None:
    import json

    a = parse_object(json.loads(json.dumps(_FULL_SLICE)), "x")
    b = parse_object(json.loads(json.dumps(_FULL_SLICE)), "x")
    pod = parse_object(json.loads(json.dumps(_FULL_POD)), "x")
    assert isinstance(a, K8sEndpointSlice) and isinstance(b, K8sEndpointSlice)
    assert isinstance(pod, K8sPod)
    assert a.namespace is b.namespace and a.service_name is b.service_name
    assert a.endpoints[0].node_name is b.endpoints[0].node_name
    # A slice's target Pod name is the Pod's own name object.
    assert a.endpoints[0].target_pod is pod.name
