"""The strict IR loader behind the goldens: a typo in an input must fail, naming its path."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.model.ir import (
    Discovery,
    IdentitySecret,
    Ir,
    SecretName,
    TrustSecret,
    Upstream,
    UpstreamKey,
)
from bridge.model.k8s import Kind
from tests.golden.irload import LoadError, load

KEY = {"namespace": "default", "service": "web", "port": "http"}
ROUTE = {
    "host": "*",
    "prefix": "/",
    "upstream": KEY,
    "source": {"kind": "Service", "namespace": "default", "name": "web"},
}


def test_loads_nested_dataclasses_enums_tuples_and_mappings() -> None:
    ir = load(
        Ir,
        {
            "listeners": [{"name": "http", "port": 8080}],
            "virtual_hosts": [
                {"host": "*", "routes": [{**ROUTE, "headers_to_add": [["x-a", "1"]]}]}
            ],
            "upstreams": [{"key": KEY, "discovery": "eds", "endpoints": []}],
            "secrets": [
                {"name": "roots", "ca_bundle_pem": "PEM"},
                {"name": "id", "cert_chain_pem": "PEM", "private_key": "KEY"},
            ],
        },
    )
    key = UpstreamKey("default", "web", "http")
    assert ir.upstreams[key] == Upstream(key, Discovery.EDS)
    assert ir.virtual_hosts[0].routes[0].source.kind is Kind.SERVICE
    assert ir.virtual_hosts[0].routes[0].headers_to_add == (("x-a", "1"),)
    assert isinstance(ir.secrets[SecretName("roots")], TrustSecret)
    identity = ir.secrets[SecretName("id")]
    assert isinstance(identity, IdentitySecret)
    assert identity.private_key.reveal() == b"KEY"


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        pytest.param(
            {"listeners": [{"name": "http", "prot": 1}]},
            "listeners[0].prot",
            "unknown key for Listener",
            id="misspelt-key",
        ),
        pytest.param(
            {"listeners": [{"name": "http"}]},
            "listeners[0].port",
            "required by Listener",
            id="missing-field",
        ),
        pytest.param(
            {"listeners": [{"name": "http", "port": "8080"}]},
            "listeners[0].port",
            "expected an integer",
            id="wrong-type",
        ),
        pytest.param(
            {"upstreams": [{"key": {**KEY, "port": 80}, "discovery": "eds"}]},
            "upstreams[0].key.port",
            "expected a string",
            id="unquoted-port-name",
        ),
        pytest.param(
            {"upstreams": [{"key": KEY, "discovery": "dns"}]},
            "upstreams[0].discovery",
            "is not one of",
            id="bad-enum",
        ),
        pytest.param(
            {"upstreams": [{"key": KEY, "discovery": "eds"}, {"key": KEY, "discovery": "eds"}]},
            "upstreams[1]",
            "duplicate key",
            id="duplicate-key",
        ),
        pytest.param(
            {"secrets": [{"name": "x", "cert_chain_pem": "PEM"}]},
            "secrets[0]",
            "fits none of IdentitySecret | TrustSecret",
            id="secret-fits-no-type",
        ),
        pytest.param(
            {"virtual_hosts": [{"host": "*", "routes": [{**ROUTE, "headers_to_add": [["a"]]}]}]},
            "virtual_hosts[0].routes[0].headers_to_add[0]",
            "expected a list of 2 items",
            id="pair-too-short",
        ),
        pytest.param({"extra": 1}, "extra", "unknown key for Ir", id="unknown-top-level"),
    ],
)
def test_rejects_bad_input_naming_its_path(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(LoadError) as info:
        load(Ir, data)
    assert info.value.path == path
    assert message in str(info.value)
