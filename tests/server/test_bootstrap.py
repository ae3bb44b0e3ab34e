"""Bootstraps for Envoy and proxyless gRPC clients."""

from __future__ import annotations

import pytest
import yaml

from bridge.bootstrap import bootstrap_yaml, envoy_bootstrap, grpc_bootstrap
from bridge.errors import ConfigError


def test_envoy_bootstrap_uses_ads_over_http2() -> None:
    b = envoy_bootstrap(xds="127.0.0.1:18000", node_id="gw-1", admin_port=9902)
    assert b["node"] == {"id": "gw-1", "cluster": "meshbridge-gateway"}
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert b["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert b["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    [xds] = b["static_resources"]["clusters"]
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": xds["name"]}}]
    [opts] = xds["typed_extension_protocol_options"].values()
    assert "http2_protocol_options" in opts["explicit_http_config"]
    [ep] = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 18000}
    }
    assert b["admin"]["address"]["socket_address"]["port_value"] == 9902


def test_delta_and_unix_socket() -> None:
    text = bootstrap_yaml(xds="unix:/run/meshbridge/xds.sock", node_id="gw", delta=True)
    b = yaml.safe_load(text)
    assert b["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    [ep] = b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"] == {"pipe": {"path": "/run/meshbridge/xds.sock"}}


@pytest.mark.parametrize("xds", ["18000", "host:", "host:99999", "unix:", ":80"], ids=repr)
def test_bad_xds_address_is_refused(xds: str) -> None:
    with pytest.raises(ConfigError, match="xDS address"):
        envoy_bootstrap(xds=xds, node_id="gw")


def test_grpc_bootstrap() -> None:
    b = grpc_bootstrap(xds="127.0.0.1:18000", node_id="client-1", zone="zone-a")
    assert b["xds_servers"] == [
        {
            "server_uri": "127.0.0.1:18000",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
    ]
    assert b["node"] == {"id": "client-1", "cluster": "", "locality": {"zone": "zone-a"}}
