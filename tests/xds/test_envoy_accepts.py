"""Real Envoy accepts every resource translation produces (``envoy --mode validate``).

Envoy's validate mode checks a bootstrap's static resources as it would
load them (protobuf constraints, filter configs, TLS contexts with their
certificates), without binding ports. Dynamic resources are not validated
there, so the test inlines what ADS would deliver: each listener's route
configuration into its connection manager, each EDS cluster's assignment
into a STATIC cluster, each SDS reference into the secret it names. The
messages are otherwise exactly translation's output.

One more run shows the check has teeth: a SAN check with no trust bundle (a
case resolve must catch first) is refused by Envoy.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from google.protobuf import json_format
from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.model.ir import Discovery, Endpoint, Ir, SanMatch, Upstream, UpstreamKey, UpstreamTls
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from bridge.xds.translate import translate
from tests.support.envoy import envoy_binary
from tests.xds.rich import rich_ir

pytestmark = pytest.mark.e2e


def static_bootstrap(resources: Resources) -> dict[str, Any]:
    """A bootstrap whose static resources are ``resources`` with ADS/EDS/SDS inlined."""
    routes, assignments, secrets = (
        resources.of(ROUTE),
        resources.of(ENDPOINT),
        resources.of(SECRET),
    )
    listeners = []
    for message in resources.of(LISTENER).values():
        listener = _copy(message)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = hcm_v3.HttpConnectionManager()
                assert network_filter.typed_config.Unpack(hcm)
                hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                network_filter.typed_config.Pack(hcm)
        listeners.append(_dict(listener))
    clusters = []
    for message in resources.of(CLUSTER).values():
        cluster = _copy(message)
        if cluster.type == cluster_v3.Cluster.EDS:
            cluster.load_assignment.CopyFrom(assignments[cluster.eds_cluster_config.service_name])
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_v3.Cluster.STATIC
        if cluster.HasField("transport_socket"):
            context = tls_v3.UpstreamTlsContext()
            assert cluster.transport_socket.typed_config.Unpack(context)
            _inline_secrets(context, secrets)
            cluster.transport_socket.typed_config.Pack(context)
        clusters.append(_dict(cluster))
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def _inline_secrets(context: Any, secrets: Any) -> None:
    common = context.common_tls_context
    for sds in common.tls_certificate_sds_secret_configs:
        common.tls_certificates.add().CopyFrom(secrets[sds.name].tls_certificate)
    common.ClearField("tls_certificate_sds_secret_configs")
    if common.HasField("combined_validation_context"):
        combined = common.combined_validation_context
        validation = type(combined.default_validation_context)()
        validation.CopyFrom(combined.default_validation_context)
        validation.MergeFrom(
            secrets[combined.validation_context_sds_secret_config.name].validation_context
        )
        common.validation_context.CopyFrom(validation)  # clears the combined one (a oneof)


def _copy(message: Message) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _dict(message: Message) -> dict[str, Any]:
    return dict(json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True)))


def envoy_validate(bootstrap: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_envoy_accepts_every_resource_of_a_rich_ir(tmp_path: Path) -> None:
    resources = translate(rich_ir()).resources
    bootstrap = static_bootstrap(resources)
    assert len(bootstrap["static_resources"]["clusters"]) == len(resources.of(CLUSTER))
    result = envoy_validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_refuses_san_checks_without_a_trust_bundle(tmp_path: Path) -> None:
    key = UpstreamKey("default", "noca", "http")
    upstream = Upstream(
        key,
        Discovery.EDS,
        endpoints=(Endpoint("10.0.0.1", 80),),
        tls=UpstreamTls(sni="x", verify_sans=(SanMatch("URI", "spiffe://td/ns/a/sa/b"),)),
    )
    ir = dataclasses.replace(Ir(), upstreams=FrozenDict({key: upstream}))
    result = envoy_validate(static_bootstrap(translate(ir).resources), tmp_path)
    assert result.returncode != 0
    assert "trusted CA" in result.stdout + result.stderr
