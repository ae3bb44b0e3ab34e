"""The demo's Envoys own their ports: the demo never picks a port for Envoy to bind later.

Another process on the machine (a parallel test run, say) could take such a
port in between, or, as Envoy listeners use ``SO_REUSEPORT``, silently
share it and receive part of the traffic. So the sidecars and every admin
bind port 0 and report what they got; a sidecar's listener binds its port
alone; the gateway's port, which meshbridge's config must name up front, is
held by the demo until Envoy binds it, and a second listener on it is caught.
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.demo.envoy import DemoEnvoy, PortReservation, other_listeners
from bridge.demo.meshes import DemoMeshCa, InlineCert, istio_sidecar
from bridge.errors import MeshbridgeError
from bridge.model.ir import Mesh

pytestmark = pytest.mark.e2e

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT sharing and /proc are Linux's"
)
DIRECT = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"


@pytest.fixture
def envoys() -> Iterator[list[DemoEnvoy]]:
    started: list[DemoEnvoy] = []
    yield started
    for envoy in started:
        envoy.stop()


def start(envoys: list[DemoEnvoy], boot: dict[str, Any], workdir: Path, name: str) -> DemoEnvoy:
    envoy = DemoEnvoy(yaml.safe_dump(boot), workdir=workdir, name=name)
    envoys.append(envoy)
    envoy.launch()
    return envoy


def sidecar(port: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca = DemoMeshCa(Mesh.ISTIO, now=now)
    cert = InlineCert.of(ca.issue("bookstore", "bookstore-reviews", now=now))
    return istio_sidecar(name="reviews", port=port, cert=cert, trust=ca.root_pem, admin_port=0)


def answering(port: int) -> dict[str, Any]:
    """A listener ``probe`` on ``port`` (SO_REUSEPORT, Envoy's default) that says ``envoy``."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "probe",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.direct_response",
                                    "typed_config": {
                                        "@type": DIRECT,
                                        "response": {"inline_string": "envoy"},
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def first_bytes(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.settimeout(5)
        return conn.recv(16)


async def test_a_sidecar_binds_a_port_of_its_own_and_reports_it(
    tmp_path: Path, envoys: list[DemoEnvoy]
) -> None:
    first = start(envoys, sidecar(port=0), tmp_path, "first")
    await first.wait_ready()
    assert first.admin_port > 0
    port = first.listener_ports()["inbound_reviews"]
    assert port > 0
    # A second sidecar on that port does not share it (as two SO_REUSEPORT
    # listeners would): it fails to start, and says why.
    second = start(envoys, sidecar(port=port), tmp_path, "second")
    with pytest.raises(MeshbridgeError, match=r"(?s)envoy \(second\) exited.*already in use"):
        await second.wait_ready(timeout=20)
    assert first.listener_ports()["inbound_reviews"] == port


@linux_only
async def test_the_reserved_gateway_port_goes_to_envoy_alone(
    tmp_path: Path, envoys: list[DemoEnvoy]
) -> None:
    reservation = PortReservation()
    try:
        # Held, the port is never handed out to a socket asking for any port.
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                assert s.getsockname()[1] != reservation.port
        envoy = start(envoys, answering(reservation.port), tmp_path, "gateway")
        await envoy.wait_ready()
        await envoy.wait_listener("probe", reservation.port, timeout=20)
        # The reservation never listens, so it takes none of the connections.
        assert {first_bytes(reservation.port) for _ in range(20)} == {b"envoy"}
        assert envoy.proc is not None and other_listeners(reservation.port, envoy.proc.pid) == 0
    finally:
        reservation.close()


@linux_only
async def test_another_listener_on_the_gateway_port_is_caught(
    tmp_path: Path, envoys: list[DemoEnvoy]
) -> None:
    reservation = PortReservation()
    stranger = socket.socket()
    try:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", reservation.port))
        stranger.listen()
        envoy = start(envoys, answering(reservation.port), tmp_path, "gateway")
        await envoy.wait_ready()
        with pytest.raises(MeshbridgeError, match=r"another process also listens on 127\.0\.0\.1:"):
            await envoy.wait_listener("probe", reservation.port, timeout=20)
    finally:
        stranger.close()
        reservation.close()
