"""The gateway's bootstrap ConfigMap is ``meshbridge bootstrap`` output plus three
deployment additions, and a real Envoy accepts it."""

from __future__ import annotations

import copy
import datetime
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bridge.bootstrap import bootstrap_yaml
from tests.manifests.build import build, find
from tests.manifests.test_xds_certs import _script
from tests.support.envoy import envoy_binary

XDS = "meshbridge.meshbridge.svc.cluster.local:18000"


def _deployed() -> dict[str, Any]:
    cm = find(build("base"), "ConfigMap", "meshbridge-gateway-bootstrap")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["bootstrap.yaml"])
    return data


def test_bootstrap_is_the_generated_one_plus_the_deployment_additions() -> None:
    generated = yaml.safe_load(
        bootstrap_yaml(xds=XDS, node_id="meshbridge-gateway", listen_port=8080, admin_port=9901)
    )
    deployed = copy.deepcopy(_deployed())
    (cluster,) = deployed["static_resources"]["clusters"]
    # 1. The bridge is reached by its Service's DNS name.
    assert cluster.pop("type") == "STRICT_DNS"
    # 2. mTLS, so the bridge may send the gateway its certificates (SDS).
    assert cluster.pop("transport_socket")["name"] == "envoy.transport_sockets.tls"
    # 3. A listener the kubelet probes; Envoy's admin stays on loopback.
    (ready,) = deployed["static_resources"].pop("listeners")
    assert ready["address"]["socket_address"]["port_value"] == 19001
    assert deployed["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    (gen_cluster,) = generated["static_resources"]["clusters"]
    gen_cluster.pop("type")
    assert deployed == generated


def test_envoy_accepts_the_bootstrap() -> None:
    certs = _script()
    material = certs.make_material(
        certs.server_names("meshbridge", "meshbridge", "cluster.local"),
        "meshbridge-gateway",
        datetime.datetime.now(datetime.UTC),
    )
    with tempfile.TemporaryDirectory() as d:
        files = {"ca.crt": "ca.crt", "tls.crt": "client.crt", "tls.key": "client.key"}
        for mounted, key in files.items():
            (Path(d) / mounted).write_bytes(material[key])
        text = yaml.safe_dump(_deployed()).replace("/etc/envoy/xds-tls/", f"{d}/")
        (Path(d) / "bootstrap.yaml").write_text(text)
        proc = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", f"{d}/bootstrap.yaml"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
