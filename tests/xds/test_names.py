"""Envoy resource names: readable, Envoy-safe, unique and reversible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.model.ir import Listener, SecretName, UpstreamKey
from bridge.model.k8s import Kind, ObjectRef
from bridge.xds import names


@pytest.mark.parametrize(
    ("key", "name"),
    [
        pytest.param(UpstreamKey("default", "web", "http"), "default/web/http", id="k8s-port-name"),
        pytest.param(UpstreamKey("shop", "cart", "8080"), "shop/cart/8080", id="k8s-port-number"),
        pytest.param(
            UpstreamKey("default", "billing.v2", "21000"),
            "default/billing%2Ev2/21000",
            id="dot-escaped-for-stats",
        ),
        pytest.param(UpstreamKey("a", "b:c", "d"), "a/b%3Ac/d", id="colon-escaped"),
        pytest.param(UpstreamKey("a/b", "c", "d"), "a%2Fb/c/d", id="slash-escaped"),
        pytest.param(UpstreamKey("", "web", "http"), "/web/http", id="no-namespace"),
        pytest.param(UpstreamKey("ns", "café", "p"), "ns/caf%C3%A9/p", id="utf8"),
    ],
)
def test_cluster_name(key: UpstreamKey, name: str) -> None:
    assert names.cluster_name(key) == name
    assert names.eds_service_name(key) == name
    assert names.parse_cluster_name(name) == key


@given(st.text(), st.text(), st.text())
def test_cluster_names_are_reversible_and_envoy_safe(ns: str, svc: str, port: str) -> None:
    key = UpstreamKey(ns, svc, port)
    name = names.cluster_name(key)
    assert names.parse_cluster_name(name) == key
    # No ':' (stats turn it into '_'), no '.' (the stats path separator).
    assert ":" not in name
    assert "." not in name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("default/web", id="two-parts"),
        pytest.param("a/b/c/d", id="four-parts"),
        pytest.param("a/b%2/c", id="bad-escape"),
        pytest.param("a/b%41/c", id="non-canonical-escape"),
        pytest.param("a/b.c/d", id="unescaped-dot"),
        pytest.param("a/%FF/c", id="not-utf8"),
        pytest.param("outbound|80||web.default.svc.cluster.local", id="foreign"),
    ],
)
def test_names_that_are_not_ours_parse_to_none(name: str) -> None:
    assert names.parse_cluster_name(name) is None


def test_listener_and_route_configuration_names() -> None:
    listener = Listener("http", 8080)
    assert names.listener_name(listener) == "http"
    assert names.route_config_name(listener) == "http/routes"
    assert names.parse_route_config_name("http/routes") == "http"
    dotted = Listener("edge.public", 443)
    assert names.route_config_name(dotted) == "edge%2Epublic/routes"
    assert names.parse_route_config_name(names.route_config_name(dotted)) == "edge.public"
    assert names.parse_route_config_name("http") is None


def test_other_names() -> None:
    assert names.virtual_host_name("*.example.com") == "*.example.com"
    assert names.secret_name(SecretName("istio-identity")) == "istio-identity"
    assert names.route_name(ObjectRef(Kind.SERVICE, "default", "web")) == "Service default/web"
