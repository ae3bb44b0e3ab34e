"""End to end with a real Envoy: change-to-ACK as seen from outside, and the SIGTERM drain.

``meshbridge serve --log-format json`` runs as a subprocess over a watched
directory; a real Envoy started from ``meshbridge bootstrap`` connects.

Change to ACK: the test edits an EndpointSlice file and polls Envoy's admin
``/clusters`` until the new endpoint shows, timing it from outside. The
bridge's ``meshbridge_xds_change_to_ack_seconds{type="endpoint"}`` gets one
observation for that edit, which must fall in the same bucket. The outside
time is longer by what the histogram leaves out (the directory poll, the
admin poll); the debounce hold-off is set to 600 ms so both land well inside
the (0.5, 1] bucket rather than near an edge.

SIGTERM: the bridge refuses new xDS streams at once and says so on
``/readyz``, keeps serving the open stream (a change made during the drain
still reaches Envoy), and exits 0 when the drain ends. A second SIGTERM or
SIGINT during the drain ends it at once, still with exit status 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from bridge.metrics import CHANGE_TO_ACK_BUCKETS
from bridge.xds.resources import CLUSTER
from tests.e2e.backends import NamedBackend
from tests.operability.support import metric_value
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "op-e2e-gateway"
HOLD_OFF_MS = 600
DRAIN_S = 4.0

WORLD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {meshbridge.io/mesh: none}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {meshbridge.io/prefix: /web}
spec:
  ports: [{name: http, port: 80}]
"""


def endpoint_slice(port: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abcde
          namespace: shop
          labels: {{kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{{name: http, port: {port}}}]
        endpoints:
        - addresses: ["127.0.0.1"]
          conditions: {{ready: true}}
        """
    )


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


@dataclass
class Env:
    world: Path
    admin_port: int
    xds_port: int
    bridge: subprocess.Popen[bytes]
    log_path: Path
    envoy: EnvoyProcess
    a: NamedBackend
    b: NamedBackend

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def metrics(self) -> str:
        status, text = http_get(self.admin_port, "/metrics")
        assert status == 200
        return text

    def envoy_has(self, port: int) -> bool:
        return f"::127.0.0.1:{port}::" in (self.envoy.admin_get("/clusters") or "")


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
            admin: {{address: "127.0.0.1:{admin_port}"}}
            gateway:
              listeners: [{{name: http, port: {gateway_port}, address: 127.0.0.1}}]
            debounce: {{hold_off_ms: {HOLD_OFF_MS}, max_delay_ms: 2000}}
            dir_source: {{poll_interval_ms: 10}}
            """
        )
    )
    with NamedBackend("alpha") as a, NamedBackend("beta") as b:
        (world / "web.yaml").write_text(WORLD)
        (world / "web-slice.yaml").write_text(endpoint_slice(a.port))
        log_path = tmp_path / "bridge.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bridge", "serve", "--config", str(config)),
                    *("--source", f"dir:{world}", "--log-format", "json"),
                    *("--drain", str(DRAIN_S)),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: proc.poll() is None and http_get(admin_port, "/readyz")[0] == 200,
                timeout=30,
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
                e = Env(world, admin_port, xds_port, proc, log_path, envoy, a, b)
                wait_for(lambda: e.envoy_has(a.port), timeout=30, what="Envoy's first endpoint")
                yield e
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def bucket(seconds: float) -> float:
    return next((b for b in CHANGE_TO_ACK_BUCKETS if seconds <= b), float("inf"))


def test_change_to_ack_histogram_matches_the_time_seen_from_outside(env: Env) -> None:
    name = "meshbridge_xds_change_to_ack_seconds"
    # Envoy ACKed its initial config: the histogram has nothing yet (joining is not a change).
    wait_for(
        lambda: metric_value(env.metrics(), "meshbridge_xds_acks_total", type="endpoint"),
        what="Envoy's first EDS ACK",
    )
    assert not metric_value(env.metrics(), f"{name}_count", type="endpoint")

    start = time.monotonic()
    (env.world / "web-slice.yaml").write_text(endpoint_slice(env.b.port))
    wait_for(lambda: env.envoy_has(env.b.port), timeout=20, interval=0.002, what="new endpoint")
    outside = time.monotonic() - start

    def observed() -> str:
        text = env.metrics()
        return text if metric_value(text, f"{name}_count", type="endpoint") else ""

    text = wait_for(observed, what="the change-to-ACK observation")
    assert metric_value(text, f"{name}_count", type="endpoint") == 1
    inside = metric_value(text, f"{name}_sum", type="endpoint")
    assert inside is not None
    print(f"change to ACK: histogram {inside * 1000:.1f} ms, outside {outside * 1000:.1f} ms")
    # The hold-off is a floor; the outside time includes everything the histogram does.
    assert HOLD_OFF_MS / 1000 <= inside <= outside + 0.05, (inside, outside)
    assert bucket(inside) == bucket(outside), (inside, outside)
    le = str(bucket(inside))
    assert metric_value(text, f"{name}_bucket", type="endpoint", le=le) == 1
    # An unchanged type got no observation.
    assert not metric_value(text, f"{name}_count", type="cluster")


def new_stream_refused(xds_port: int) -> bool:
    """Whether a fresh ADS stream is refused (UNAVAILABLE) by the bridge."""
    channel = grpc.insecure_channel(f"127.0.0.1:{xds_port}")
    try:
        stub = ads_grpc.AggregatedDiscoveryServiceStub(channel)
        req = discovery_v3.DiscoveryRequest(node=base_v3.Node(id=NODE_ID), type_url=CLUSTER)
        try:
            next(iter(stub.StreamAggregatedResources(iter([req]), timeout=2)))
        except grpc.RpcError as err:
            return bool(err.code() == grpc.StatusCode.UNAVAILABLE)
        return False
    finally:
        channel.close()


def test_sigterm_drains_open_streams_then_exits_zero(env: Env) -> None:
    assert not new_stream_refused(env.xds_port)  # accepted while serving
    signalled = time.monotonic()
    env.bridge.send_signal(signal.SIGTERM)
    wait_for(lambda: http_get(env.admin_port, "/readyz")[0] == 503, what="/readyz to say draining")
    assert "draining" in http_get(env.admin_port, "/readyz")[1]
    assert new_stream_refused(env.xds_port)

    # The open stream is still served: a change made now reaches Envoy.
    (env.world / "web-slice.yaml").write_text(endpoint_slice(env.b.port))
    wait_for(lambda: env.envoy_has(env.b.port), timeout=DRAIN_S, what="a change during the drain")
    assert env.bridge.poll() is None, "the bridge stopped before the drain ended"

    assert env.bridge.wait(timeout=DRAIN_S + 10) == 0, env.log()
    took = time.monotonic() - signalled
    assert DRAIN_S - 0.5 <= took <= DRAIN_S + 10, took
    # The log is JSON, one object per line, and tells the story.
    records = [json.loads(line) for line in env.log_path.read_text().splitlines() if line]
    messages = [str(r["message"]) for r in records]
    assert any(m.startswith("draining: refusing new xDS streams") for m in messages), messages
    assert messages[-1] == "stopped"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_cuts_the_drain_short_and_exits_zero(
    env: Env, second: signal.Signals
) -> None:
    env.bridge.send_signal(signal.SIGTERM)
    # The drain has begun, with Envoy's stream open.
    wait_for(lambda: http_get(env.admin_port, "/readyz")[0] == 503, what="/readyz to say draining")
    assert env.bridge.poll() is None
    cut = time.monotonic()
    env.bridge.send_signal(second)
    assert env.bridge.wait(timeout=DRAIN_S + 10) == 0, env.log()
    took = time.monotonic() - cut
    print(f"second signal to exit: {took * 1000:.0f} ms (drain {DRAIN_S:.0f} s)")
    assert took < DRAIN_S / 2, f"the drain was waited out ({took:.1f} s): {env.log()}"
    messages = [json.loads(line)["message"] for line in env.log_path.read_text().splitlines()]
    assert "second signal: cutting the drain short" in messages, messages
    assert messages[-1] == "stopped"
