"""End to end: the API stand-in, ``meshbridge serve --source kubernetes``, a real Envoy.

The bridge is the ``meshbridge`` command in a subprocess that finds the
cluster through ``KUBECONFIG`` (a kubeconfig pointing at the stand-in), the
gateway is a real Envoy started from ``meshbridge bootstrap``, the backends are
HTTP servers on two loopback addresses sharing one port (as two pods of one
Service would). The test only changes objects in the API server and sends
requests through the gateway.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.conftest import endpoint_slice, namespace, service
from tests.standins.kube_api import KubeApiServer
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "k8s-e2e-gateway"
DEADLINE = 20.0


class Backend:
    """An HTTP server on one loopback address answering ``x-backend: <address>``."""

    def __init__(self, address: str, port: int) -> None:
        name = address

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("x-backend", name)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def shared_port(addresses: list[str]) -> int:
    """A port free on every one of ``addresses``."""
    for _ in range(50):
        port = free_port()
        try:
            for a in addresses:
                with socket.socket() as s:
                    s.bind((a, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every address")


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "shop.local"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-backend", "")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Env:
    kube: KubeApiServer
    gateway_port: int
    backend_port: int
    bridge_log: Path

    def backends_seen(self, n: int = 20) -> set[str]:
        return {get(self.gateway_port, "/web")[1] for _ in range(n)}

    def wait(self, cond: object, what: str) -> None:
        wait_for(
            cond,  # type: ignore[arg-type]
            timeout=DEADLINE,
            what=f"{what} (bridge log: {self.bridge_log.read_text()[-3000:]})",
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    xds_port, admin_port, gateway_port = free_port(), free_port(), free_port()
    config = tmp_path / "meshbridge.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            xds:
              address: 127.0.0.1:{xds_port}
              allowed_node_ids: [{NODE_ID}]
            admin:
              address: 127.0.0.1:{admin_port}
            gateway:
              listeners:
              - name: http
                port: {gateway_port}
                address: 127.0.0.1
            debounce:
              hold_off_ms: 20
              max_delay_ms: 200
            """
        )
    )
    addresses = ["127.0.0.2", "127.0.0.3"]
    port = shared_port(addresses)
    with (
        KubeApiServer(bookmark_interval=0.5) as kube,
        Backend(addresses[0], port),
        Backend(addresses[1], port),
    ):
        kube.apply(namespace("shop"))
        kube.apply(service("shop", "web", {"meshbridge.io/prefix": "/web"}))
        kube.apply(endpoint_slice("shop", "web-abcde", "web", [addresses[0]], port=port))
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        environ = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        environ["KUBECONFIG"] = str(kubeconfig)
        log_path = tmp_path / "bridge.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bridge", "serve"),
                    *("--config", str(config), "--source", "kubernetes"),
                ],
                cwd=REPO,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: proc.poll() is None and _ready(admin_port),
                timeout=DEADLINE,
                what=f"the bridge to be ready ({log_path.read_text()[-2000:]})",
            )
            boot = subprocess.run(
                [
                    *(sys.executable, "-m", "bridge", "bootstrap"),
                    *("--xds", f"127.0.0.1:{xds_port}", "--node-id", NODE_ID),
                    *("--listen-port", str(gateway_port), "--admin-port", str(free_port())),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            with EnvoyProcess(boot.stdout):
                yield Env(kube, gateway_port, port, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def bad_service_events(kube: KubeApiServer) -> list[dict[str, Any]]:
    return [
        e
        for e in kube.objects("v1", "Event", "shop")
        if e["involvedObject"]["name"] == "bad" and e["involvedObject"]["kind"] == "Service"
    ]


def test_annotated_service_is_routable_scales_and_goes_away(env: Env) -> None:
    env.wait(lambda: get(env.gateway_port, "/web") == (200, "127.0.0.2"), "the annotated Service")

    # Scale up: a second endpoint joins the rotation.
    env.kube.apply(
        endpoint_slice(
            "shop", "web-abcde", "web", ["127.0.0.2", "127.0.0.3"], port=env.backend_port
        )
    )
    env.wait(lambda: env.backends_seen() == {"127.0.0.2", "127.0.0.3"}, "both endpoints")

    # The API server goes away for a while: the routes stay.
    with env.kube.unavailable("reset"):
        before = len(env.kube.requests)
        env.wait(lambda: len(env.kube.requests) >= before + 8, "the bridge's failed reconnects")
        assert env.backends_seen() == {"127.0.0.2", "127.0.0.3"}
    # Scale down after it is back: the removed endpoint gets no more traffic.
    env.kube.apply(endpoint_slice("shop", "web-abcde", "web", ["127.0.0.3"], port=env.backend_port))
    env.wait(lambda: env.backends_seen() == {"127.0.0.3"}, "only the remaining endpoint")

    # A bad annotation: the Service is left out, and the diagnostic becomes an
    # Event on it, written by the replica holding the Events Lease.
    env.kube.apply(
        service("shop", "bad", {"meshbridge.io/prefix": "/bad", "meshbridge.io/timeout": "fast"})
    )
    env.wait(lambda: bad_service_events(env.kube), "an Event on the bad Service")
    (event,) = bad_service_events(env.kube)
    assert event["type"] == "Warning" and "meshbridge.io/timeout" in event["message"]
    lease = env.kube.get("coordination.k8s.io/v1", "Lease", "meshbridge", "meshbridge-events")
    assert lease is not None and lease["spec"]["holderIdentity"]
    assert get(env.gateway_port, "/bad")[0] == 404
    assert get(env.gateway_port, "/web")[0] == 200, "the other routes keep working"

    # Deleting the Service removes the route.
    env.kube.delete("v1", "Service", "shop", "web")
    env.wait(lambda: get(env.gateway_port, "/web")[0] == 404, "the route to be gone")
