"""The xDS certificates Job: material that really completes mutual TLS, created once."""

from __future__ import annotations

import datetime
import importlib.util
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import yaml

from tests.manifests.build import MANIFESTS, build, find

SCRIPT = MANIFESTS / "base" / "xds_certs.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xds_certs", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gateway_and_bridge_complete_mutual_tls_with_the_generated_material() -> None:
    certs = _script()
    bootstrap = yaml.safe_load(
        find(build("base"), "ConfigMap", "meshbridge-gateway-bootstrap")["data"]["bootstrap.yaml"]
    )
    (xds,) = bootstrap["static_resources"]["clusters"]
    tls = xds["transport_socket"]["typed_config"]
    (san,) = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    host = san["matcher"]["exact"]
    assert tls["sni"] == host
    material = certs.make_material(
        certs.server_names("meshbridge", "meshbridge", "cluster.local"),
        "meshbridge-gateway",
        datetime.datetime.now(datetime.UTC),
    )
    with tempfile.TemporaryDirectory() as d:
        for name, data in material.items():
            (Path(d) / name).write_bytes(data)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(f"{d}/server.crt", f"{d}/server.key")
        server.load_verify_locations(f"{d}/ca.crt")
        server.verify_mode = ssl.CERT_REQUIRED  # the bridge requires the gateway's cert
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_cert_chain(f"{d}/client.crt", f"{d}/client.key")
        client.load_verify_locations(f"{d}/ca.crt")

        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        peer: dict[str, object] = {}

        def accept() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as s:
                peer.update(s.getpeercert() or {})
                s.sendall(b"ok")

        t = threading.Thread(target=accept)
        t.start()
        try:
            port = listener.getsockname()[1]
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname=host) as s,
            ):
                assert s.recv(2) == b"ok"
        finally:
            t.join(10)
            listener.close()
    assert ("DNS", "meshbridge-gateway") in peer["subjectAltName"]  # type: ignore[operator]


def test_the_secret_is_created_once_and_never_replaced() -> None:
    from kubernetes import client as k8s_client

    from adapters.kubernetes.client import api_client_for
    from tests.standins.kube_api import KubeApiServer

    certs = _script()
    now = datetime.datetime.now(datetime.UTC)
    names = certs.server_names("meshbridge", "meshbridge", "cluster.local")
    with KubeApiServer() as api_server:
        api = k8s_client.CoreV1Api(api_client_for(api_server.url))
        first = certs.make_material(names, "meshbridge-gateway", now)
        assert certs.create_secret(api, "meshbridge", first) is True
        stored = api_server.get("v1", "Secret", "meshbridge", certs.SECRET_NAME)
        assert stored is not None
        second = certs.make_material(names, "meshbridge-gateway", now)
        assert certs.create_secret(api, "meshbridge", second) is False
        assert api_server.get("v1", "Secret", "meshbridge", certs.SECRET_NAME) == stored
        api.api_client.close()
    # The Job's service account may create Secrets and nothing else.
    role = find(build("base"), "Role", "meshbridge-xds-certs")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
