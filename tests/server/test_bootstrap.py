"""Bootstraps for Envoy and proxyless gRPC clients."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from bridge.bootstrap import XdsTls, bootstrap_yaml, envoy_bootstrap, grpc_bootstrap
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


@pytest.mark.parametrize(
    ("xds", "kind"),
    [
        pytest.param("10.0.0.7:18000", "STATIC", id="ipv4"),
        pytest.param("[fd00::7]:18000", "STATIC", id="ipv6"),
        pytest.param("meshbridge.meshbridge.svc.cluster.local:18000", "STRICT_DNS", id="name"),
        pytest.param("unix:/run/meshbridge/xds.sock", "STATIC", id="unix"),
    ],
)
def test_a_hostname_is_resolved_by_dns_an_ip_is_used_as_it_is(xds: str, kind: str) -> None:
    [cluster] = envoy_bootstrap(xds=xds, node_id="gw")["static_resources"]["clusters"]
    assert cluster["type"] == kind


def test_bad_hostname_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        envoy_bootstrap(xds="bad_name!:18000", node_id="gw")


TLS = XdsTls(cert_file="/tls/tls.crt", key_file="/tls/tls.key", ca_file="/tls/ca.crt")


def test_mtls_to_the_bridge_checks_the_name_it_dials() -> None:
    b = envoy_bootstrap(xds="meshbridge.ns.svc:18000", node_id="gw", tls=TLS)
    [cluster] = b["static_resources"]["clusters"]
    socket = cluster["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    ctx = socket["typed_config"]
    assert ctx["@type"].endswith("UpstreamTlsContext")
    assert ctx["sni"] == "meshbridge.ns.svc"
    common = ctx["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]  # gRPC over TLS needs h2 negotiated
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/tls/tls.crt"},
            "private_key": {"filename": "/tls/tls.key"},
        }
    ]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": "/tls/ca.crt"},
        "match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "meshbridge.ns.svc"}}
        ],
    }


def test_mtls_to_an_ip_needs_the_server_name() -> None:
    with pytest.raises(ConfigError, match="DNS name the bridge's certificate carries"):
        envoy_bootstrap(xds="10.0.0.7:18000", node_id="gw", tls=TLS)
    named = dataclasses.replace(TLS, server_name="meshbridge.ns.svc")
    [cluster] = envoy_bootstrap(xds="10.0.0.7:18000", node_id="gw", tls=named)["static_resources"][
        "clusters"
    ]
    assert cluster["type"] == "STATIC"
    assert cluster["transport_socket"]["typed_config"]["sni"] == "meshbridge.ns.svc"


def test_mtls_is_refused_on_a_unix_socket_and_without_files() -> None:
    with pytest.raises(ConfigError, match="Unix socket is already private"):
        envoy_bootstrap(xds="unix:/run/xds.sock", node_id="gw", tls=TLS)
    with pytest.raises(ConfigError, match="client key file"):
        envoy_bootstrap(
            xds="meshbridge:18000", node_id="gw", tls=dataclasses.replace(TLS, key_file="")
        )


def test_listen_port_is_node_metadata_and_must_be_a_port() -> None:
    b = envoy_bootstrap(xds="127.0.0.1:18000", node_id="gw", listen_port=8443)
    assert b["node"]["metadata"] == {"meshbridge.io/listen-port": 8443}
    with pytest.raises(ConfigError, match="not a TCP port"):
        envoy_bootstrap(xds="127.0.0.1:18000", node_id="gw", listen_port=70000)
