"""The meshbridge.io/* annotation contract: values accepted, values refused, and the fix."""

from __future__ import annotations

import pytest

from bridge.model.diagnostics import Severity
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Mesh, Resolver
from bridge.model.k8s import K8sNamespace, K8sService, ServicePort
from bridge.resolve.annotations import (
    NOT_EXPOSED,
    DurationError,
    NamespaceSpec,
    RouteSpec,
    check_host,
    format_duration_ms,
    parse_duration_ms,
    parse_namespace,
    parse_service,
)

HTTP = ServicePort(port=80, name="http")
GRPC = ServicePort(port=9090, name="grpc")
BARE = ServicePort(port=8080)


def _svc(ann: dict[str, str], ports: tuple[ServicePort, ...] = (HTTP,)) -> K8sService:
    return K8sService(namespace="shop", name="web", ports=ports, annotations=FrozenDict(ann))


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        pytest.param("15s", 15_000, id="seconds"),
        pytest.param("1m30s", 90_000, id="minutes-seconds"),
        pytest.param("250ms", 250, id="millis"),
        pytest.param("1h", 3_600_000, id="hour"),
        pytest.param("1.5s", 1_500, id="fraction"),
        pytest.param(".5s", 500, id="leading-dot"),
        pytest.param("2h45m", 9_900_000, id="hours-minutes"),
        pytest.param("1500000us", 1_500, id="micros"),
        pytest.param("1000000µs", 1_000, id="micro-sign"),
        pytest.param("2000000000ns", 2_000, id="nanos"),
        pytest.param("0", 0, id="bare-zero-no-timeout"),
        pytest.param("0s", 0, id="zero-no-timeout"),
        pytest.param("+5s", 5_000, id="plus-sign"),
        pytest.param(" 15s ", 15_000, id="surrounding-space"),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("-5s", "is negative", id="negative"),
        pytest.param("15", "has no unit", id="no-unit"),
        pytest.param("1.5", "has no unit", id="no-unit-fraction"),
        pytest.param("fast", "is not a duration", id="garbage"),
        pytest.param("15 s", "is not a duration", id="inner-space"),
        pytest.param("15sec", "is not a duration", id="long-unit"),
        pytest.param("1d", "is not a duration", id="days-not-go"),
        pytest.param("", "is empty", id="empty"),
        pytest.param("1.5ms", "whole number of milliseconds", id="sub-millisecond"),
        pytest.param("100us", "whole number of milliseconds", id="under-a-millisecond"),
    ],
)
def test_bad_durations(text: str, problem: str) -> None:
    with pytest.raises(DurationError, match=problem):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(90_000, "1m30s", id="minutes"),
        pytest.param(3_600_250, "1h250ms", id="mixed"),
    ],
)
def test_format_duration_round_trips(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("host", "normalised"),
    [
        pytest.param("*", "*", id="any"),
        pytest.param("shop.example.com", "shop.example.com", id="exact"),
        pytest.param("Shop.Example.COM", "shop.example.com", id="lower-cased"),
        pytest.param("*.example.com", "*.example.com", id="wildcard"),
        pytest.param("localhost", "localhost", id="single-label"),
        pytest.param("a-b.example.com", "a-b.example.com", id="hyphen"),
        pytest.param("shop.*.com", None, id="inner-wildcard"),
        pytest.param("*example.com", None, id="wildcard-without-dot"),
        pytest.param("shop.example.com:8080", None, id="with-port"),
        pytest.param("my_shop.example.com", None, id="underscore"),
        pytest.param("-shop.example.com", None, id="leading-hyphen"),
        pytest.param("shop..example.com", None, id="empty-label"),
        pytest.param("", None, id="empty"),
        pytest.param("a" * 64 + ".com", None, id="label-too-long"),
    ],
)
def test_hosts(host: str, normalised: str | None) -> None:
    assert check_host(host)[0] == normalised


def test_service_without_meshbridge_annotations_is_not_exposed() -> None:
    spec, diags = parse_service(_svc({"other.io/x": "y"}))
    assert spec is NOT_EXPOSED
    assert diags == ()


def test_every_single_route_key() -> None:
    spec, diags = parse_service(
        _svc(
            {
                "meshbridge.io/prefix": "/shop",
                "meshbridge.io/host": "Shop.Example.com",
                "meshbridge.io/port": "grpc",
                "meshbridge.io/rewrite": "/",
                "meshbridge.io/timeout": "1m30s",
                "meshbridge.io/resolver": "service",
                "meshbridge.io/mesh": "istio",
                "meshbridge.io/consul-service": "web-api",
                "meshbridge.io/consul-datacenter": "dc2",
            },
            ports=(HTTP, GRPC),
        )
    )
    assert diags == ()
    assert spec.routes == (
        RouteSpec(
            prefix="/shop", host="shop.example.com", port=GRPC, rewrite="/", timeout_ms=90_000
        ),
    )
    assert (spec.resolver, spec.mesh) == (Resolver.SERVICE, Mesh.ISTIO)
    assert (spec.consul_service, spec.consul_datacenter) == ("web-api", "dc2")


def test_defaults_of_a_single_route() -> None:
    spec, diags = parse_service(_svc({"meshbridge.io/prefix": "/"}, ports=(BARE,)))
    assert diags == ()
    assert spec.routes == (RouteSpec(prefix="/", host="*", port=BARE, timeout_ms=15_000),)
    assert (spec.resolver, spec.mesh) == (None, None)


@pytest.mark.parametrize(
    ("port", "ports", "chosen"),
    [
        pytest.param("http", (HTTP, GRPC), HTTP, id="by-name"),
        pytest.param("9090", (HTTP, GRPC), GRPC, id="by-number"),
        pytest.param(None, (BARE,), BARE, id="only-port"),
        pytest.param("8080", (BARE,), BARE, id="unnamed-by-number"),
        pytest.param(None, (), None, id="no-ports-resolver-decides"),
    ],
)
def test_port_selection(
    port: str | None, ports: tuple[ServicePort, ...], chosen: ServicePort | None
) -> None:
    ann = {"meshbridge.io/prefix": "/p"}
    if port is not None:
        ann["meshbridge.io/port"] = port
    spec, diags = parse_service(_svc(ann, ports=ports))
    assert diags == ()
    assert spec.routes[0].port == chosen


def test_routes_list_replaces_single_route_keys() -> None:
    routes = """
- prefix: /api
  host: api.example.com
  port: 9090
  timeout: 250ms
- prefix: /
  port: http
  rewrite: /web
"""
    spec, diags = parse_service(
        _svc(
            {"meshbridge.io/routes": routes, "meshbridge.io/prefix": "/old"},
            ports=(HTTP, GRPC),
        )
    )
    assert spec.routes == (
        RouteSpec(prefix="/api", host="api.example.com", port=GRPC, timeout_ms=250),
        RouteSpec(prefix="/", host="*", port=HTTP, rewrite="/web"),
    )
    assert [(d.field, d.severity) for d in diags] == [
        ("metadata.annotations[meshbridge.io/prefix]", Severity.WARNING)
    ]
    assert "ignored because meshbridge.io/routes is set" in diags[0].message


A = "metadata.annotations"


@pytest.mark.parametrize(
    ("ann", "ports", "field", "message", "fix"),
    [
        pytest.param(
            {"meshbridge.io/prefix": "api"},
            (HTTP,),
            f"{A}[meshbridge.io/prefix]",
            "prefix 'api' does not start with /",
            "use a path prefix like /api",
            id="prefix-without-slash",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/a b"},
            (HTTP,),
            f"{A}[meshbridge.io/prefix]",
            "contains whitespace",
            "",
            id="prefix-with-space",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/host": "a.*.com"},
            (HTTP,),
            f"{A}[meshbridge.io/host]",
            "host 'a.*.com' is not a DNS name, *.<domain> or *",
            "*.example.com",
            id="bad-host",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/rewrite": "v2"},
            (HTTP,),
            f"{A}[meshbridge.io/rewrite]",
            "rewrite 'v2' does not start with /",
            "",
            id="bad-rewrite",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/timeout": "15"},
            (HTTP,),
            f"{A}[meshbridge.io/timeout]",
            "timeout '15' has no unit",
            "15s, 1m30s or 250ms",
            id="timeout-no-unit",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/timeout": "-1s"},
            (HTTP,),
            f"{A}[meshbridge.io/timeout]",
            "timeout '-1s' is negative",
            "",
            id="timeout-negative",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/port": "metrics"},
            (HTTP, GRPC),
            f"{A}[meshbridge.io/port]",
            "port 'metrics' is not a port of the Service (its ports: http(80), grpc(9090))",
            "use one of http(80), grpc(9090)",
            id="unknown-port-name",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/port": "81"},
            (HTTP,),
            f"{A}[meshbridge.io/port]",
            "port '81' is not a port of the Service",
            "",
            id="unknown-port-number",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/port": "80"},
            (),
            f"{A}[meshbridge.io/port]",
            "(it has no ports)",
            "add the port to the Service",
            id="port-on-portless-service",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/"},
            (HTTP, GRPC),
            f"{A}[meshbridge.io/port]",
            "the Service has 2 ports (http(80), grpc(9090)) and no port is chosen",
            "set meshbridge.io/port",
            id="several-ports-unset",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/resolver": "endpoint"},
            (HTTP,),
            f"{A}[meshbridge.io/resolver]",
            "'endpoint' is not a valid resolver",
            "did you mean endpoints? use one of endpoints, service, consul",
            id="bad-resolver",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/mesh": "Istio"},
            (HTTP,),
            f"{A}[meshbridge.io/mesh]",
            "'Istio' is not a valid mesh",
            "did you mean istio?",
            id="bad-mesh",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/consul-service": "a b"},
            (HTTP,),
            f"{A}[meshbridge.io/consul-service]",
            "'a b' is not a valid Consul name",
            "",
            id="bad-consul-service",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/", "meshbridge.io/consul-datacenter": ""},
            (HTTP,),
            f"{A}[meshbridge.io/consul-datacenter]",
            "'' is not a valid Consul name",
            "",
            id="empty-consul-datacenter",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- prefix: /a\n  rewite: /b"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][0].rewite",
            "unknown key 'rewite' in a route entry",
            "did you mean rewrite?",
            id="routes-unknown-entry-key",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- host: a.example.com"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][0].prefix",
            "is required",
            "",
            id="routes-entry-without-prefix",
        ),
        pytest.param(
            {"meshbridge.io/routes": "prefix: /a"},
            (HTTP,),
            f"{A}[meshbridge.io/routes]",
            "must be a YAML list, got a mapping",
            "'- prefix: /api'",
            id="routes-not-a-list",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- [prefix"},
            (HTTP,),
            f"{A}[meshbridge.io/routes]",
            "is not valid YAML",
            "",
            id="routes-bad-yaml",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- /a"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][0]",
            "must be a mapping, got a string",
            "",
            id="routes-entry-not-a-mapping",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- prefix: /a\n  timeout: 15"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][0].timeout",
            "must be a string, got a number 15",
            "quote it",
            id="routes-timeout-number",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- prefix: /a\n  port: 81"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][0].port",
            "port '81' is not a port of the Service",
            "",
            id="routes-unknown-port",
        ),
        pytest.param(
            {"meshbridge.io/routes": "- prefix: /a\n- prefix: /a\n  host: '*'"},
            (HTTP,),
            f"{A}[meshbridge.io/routes][1].prefix",
            "repeats host * prefix /a of entry 0",
            "",
            id="routes-duplicate",
        ),
    ],
)
def test_bad_values_are_errors_naming_annotation_value_and_fix(
    ann: dict[str, str], ports: tuple[ServicePort, ...], field: str, message: str, fix: str
) -> None:
    _, diags = parse_service(_svc(ann, ports=ports))
    errors = [d for d in diags if d.severity is Severity.ERROR]
    assert len(errors) == 1, diags
    (d,) = errors
    assert d.field == field
    assert message in d.message
    assert fix in d.fix
    assert str(d).startswith("Service shop/web: ")


@pytest.mark.parametrize(
    ("key", "fix"),
    [
        pytest.param("meshbridge.io/prefx", "did you mean meshbridge.io/prefix?", id="typo"),
        pytest.param("meshbridge.io/Timeout", "did you mean meshbridge.io/timeout?", id="case"),
        pytest.param(
            "meshbridge.io/consul-svc", "did you mean meshbridge.io/consul-service?", id="c"
        ),
        pytest.param(
            "meshbridge.io/zzz", "valid keys on a Service: meshbridge.io/prefix", id="far"
        ),
    ],
)
def test_unknown_keys_are_warnings_with_the_closest_key(key: str, fix: str) -> None:
    spec, diags = parse_service(_svc({"meshbridge.io/prefix": "/", key: "x"}))
    assert spec.exposed
    (d,) = diags
    assert (d.severity, d.field, d.message) == (
        Severity.WARNING,
        f"metadata.annotations[{key}]",
        f"unknown annotation {key}",
    )
    assert fix in d.fix


def test_route_keys_without_prefix_are_warnings_and_nothing_is_exposed() -> None:
    spec, diags = parse_service(_svc({"meshbridge.io/host": "a.example.com"}))
    assert not spec.exposed
    (d,) = diags
    assert d.severity is Severity.WARNING
    assert "has no effect without meshbridge.io/prefix" in d.message


def test_empty_routes_list_exposes_nothing() -> None:
    spec, diags = parse_service(_svc({"meshbridge.io/routes": "[]"}))
    assert not spec.exposed
    assert [d.severity for d in diags] == [Severity.WARNING]


@pytest.mark.parametrize(
    ("ann", "spec", "messages"),
    [
        pytest.param({}, NamespaceSpec(), [], id="none"),
        pytest.param(
            {"meshbridge.io/resolver": "service", "meshbridge.io/mesh": "linkerd"},
            NamespaceSpec(Resolver.SERVICE, Mesh.LINKERD),
            [],
            id="both",
        ),
        pytest.param(
            {"meshbridge.io/mesh": "linkerd2"},
            NamespaceSpec(),
            ["'linkerd2' is not a valid mesh"],
            id="bad-mesh",
        ),
        pytest.param(
            {"meshbridge.io/prefix": "/"},
            NamespaceSpec(),
            ["unknown annotation meshbridge.io/prefix"],
            id="service-only-key",
        ),
    ],
)
def test_namespace_defaults(ann: dict[str, str], spec: NamespaceSpec, messages: list[str]) -> None:
    got, diags = parse_namespace(K8sNamespace(name="shop", annotations=FrozenDict(ann)))
    assert got == spec
    assert [d.message for d in diags] == messages
    assert all(str(d).startswith("Namespace shop: ") for d in diags)
