"""The gateway's bootstrap ConfigMap is ``meshbridge bootstrap`` output (with mTLS
to the bridge by its Service name) plus one deployment addition, and a real
Envoy accepts it."""

from __future__ import annotations

import copy
import datetime
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bridge.bootstrap import XdsTls, bootstrap_yaml
from tests.manifests.build import build, find
from tests.manifests.test_xds_certs import _script
from tests.support.envoy import envoy_binary

XDS = "meshbridge.meshbridge.svc.cluster.local:18000"
TLS_DIR = "/etc/envoy/xds-tls"


def _deployed() -> dict[str, Any]:
    cm = find(build("base"), "ConfigMap", "meshbridge-gateway-bootstrap")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["bootstrap.yaml"])
    return data


def test_bootstrap_is_the_generated_one_plus_the_deployment_additions() -> None:
    generated = yaml.safe_load(
        bootstrap_yaml(
            xds=XDS,
            node_id="meshbridge-gateway",
            listen_port=8080,
            admin_port=9901,
            tls=XdsTls(
                cert_file=f"{TLS_DIR}/tls.crt",
                key_file=f"{TLS_DIR}/tls.key",
                ca_file=f"{TLS_DIR}/ca.crt",
            ),
        )
    )
    deployed = copy.deepcopy(_deployed())
    # The generator gives what a separate gateway pod needs: the bridge reached by its
    # Service's DNS name, over mTLS checked against that name (so the bridge may send
    # the gateway its certificates over SDS).
    (cluster,) = generated["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == XDS.rsplit(":", 1)[0]
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": XDS.rsplit(":", 1)[0]}}
    ]
    # The one deployment addition: a listener the kubelet probes; Envoy's admin stays
    # on loopback.
    (ready,) = deployed["static_resources"].pop("listeners")
    assert ready["address"]["socket_address"]["port_value"] == 19001
    assert deployed["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
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
