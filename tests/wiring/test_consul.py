"""``meshbridge serve`` / ``sync-catalog`` with Consul: the stand-in agent, real Envoys.

- resolver ``consul``: the gateway's endpoints are Consul's passing instances,
  and an instance going critical leaves the endpoint set;
- mesh ``consul``: the gateway's Connect leaf from the agent reaches a backend
  behind a real Envoy enforcing Connect's inbound rules, and a leaf rotation
  while requests flow fails none;
- ``sync-catalog --dry-run`` prints the plan and writes nothing; without it
  the plan is applied; ``serve`` with catalog sync registers a new Service
  (counted on ``/metrics``) and a NodePort Service at its Node's address.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from bridge.cli import main
from bridge.demo.meshes import Backend, InlineCert, consul_sidecar
from bridge.model.secrets import PrivateKey
from tests.e2e.backends import NamedBackend
from tests.meshes.load import Load
from tests.standins.consul_agent import ConsulAgent
from tests.support.envoy import EnvoyProcess
from tests.wiring.support import (
    DEADLINE,
    LoopThread,
    endpoint_slice,
    free_port,
    loop_thread,
    namespace,
    serve,
    service,
    wait_for,
    write_docs,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def consul() -> Iterator[tuple[LoopThread, ConsulAgent]]:
    with loop_thread() as lt:

        async def start() -> ConsulAgent:
            return await ConsulAgent().start()

        agent = lt.call(start)
        try:
            yield lt, agent
        finally:
            lt.call(agent.stop)


def consul_config(agent: ConsulAgent, extra: str = "") -> str:
    return f"consul:\n  address: {agent.address}\n" + extra


def answer(port: int, path: str) -> tuple[int, str, str]:
    """One GET on a fresh connection: status, body, the peer the sidecar verified."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode().strip(), r.getheader("x-mesh-peer") or ""
    finally:
        conn.close()


def backends_seen(port: int, path: str, n: int = 12) -> frozenset[str]:
    out = set()
    for _ in range(n):
        status, body, _ = answer(port, path)
        out.add(body if status == 200 else f"status {status}")
    return frozenset(out)


def serial(pem: str) -> int:
    return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


def test_resolver_consul_endpoints_follow_health_through_envoy(
    tmp_path: Path, consul: tuple[LoopThread, ConsulAgent]
) -> None:
    lt, agent = consul
    with NamedBackend("alpha") as a, NamedBackend("beta") as b:
        lt.do(lambda: agent.register("node-a", "127.0.0.1", "web", a.port, service_id="web-a"))
        lt.do(lambda: agent.register("node-b", "127.0.0.1", "web", b.port, service_id="web-b"))
        world = tmp_path / "world"
        world.mkdir()
        ann = {
            "meshbridge.io/prefix": "/web",
            "meshbridge.io/resolver": "consul",
            "meshbridge.io/mesh": "none",
        }
        write_docs(world / "web.yaml", [namespace("shop"), service("shop", "web", ann)])
        with serve(tmp_path, world, consul_config(agent)) as s:
            # Ready means Consul was read: the first snapshot already has the instances.
            snapshot = s.admin("/debug/snapshot.json?type=endpoints")
            assert str(a.port) in snapshot and str(b.port) in snapshot, snapshot[:2000]
            wait_for(
                lambda: backends_seen(s.gateway_port, "/web") == {"alpha", "beta"},
                timeout=DEADLINE,
                what=f"both Consul instances to answer (log: {s.log()})",
            )
            lt.do(lambda: agent.set_check_status("node-a", "web-a", "critical"))
            wait_for(
                lambda: backends_seen(s.gateway_port, "/web") == {"beta"},
                timeout=DEADLINE,
                what="the critical instance to leave the endpoint set",
            )
            # One watch per Consul service, on the health endpoint, passing filter ours.
            assert lt.do(lambda: agent.count("GET", "/v1/health/service/web")) >= 2


def test_connect_leaf_rotation_under_load_fails_no_request(
    tmp_path: Path, consul: tuple[LoopThread, ConsulAgent]
) -> None:
    lt, agent = consul
    cert, key = lt.do(lambda: agent.issue_cert("payments"))
    gateway_spiffe = agent.spiffe_id("meshbridge")
    with NamedBackend("payments") as backend:
        side_port = free_port()
        sidecar = consul_sidecar(
            name="payments",
            port=side_port,
            cert=InlineCert(cert, PrivateKey(key)),
            trust=agent.active_root_pem,
            allow=[gateway_spiffe],  # an allow intention for the gateway's identity only
            backend=Backend("127.0.0.1", backend.port),
            max_requests_per_connection=2,  # new handshakes keep showing the gateway's leaf
        )
        with EnvoyProcess(sidecar):
            lt.do(
                lambda: agent.register(
                    "node-p",
                    "127.0.0.1",
                    "payments-sidecar-proxy",
                    side_port,
                    kind="connect-proxy",
                    destination="payments",
                )
            )
            world = tmp_path / "world"
            world.mkdir()
            ann = {
                "meshbridge.io/prefix": "/pay",
                "meshbridge.io/resolver": "consul",
                "meshbridge.io/mesh": "consul",
            }
            write_docs(world / "pay.yaml", [namespace("pay"), service("pay", "payments", ann)])
            with serve(tmp_path, world, consul_config(agent, "  connect: true\n")) as s:
                wait_for(
                    lambda: answer(s.gateway_port, "/pay") == (200, "payments", gateway_spiffe),
                    timeout=DEADLINE,
                    what=f"the Connect route to answer (log: {s.log()})",
                )
                first = lt.do(lambda: agent.leaf_pem("meshbridge"))
                assert first is not None
                load = Load(s.gateway_port, "/pay", rate=60, seconds=20).start()
                try:
                    wait_for(lambda: serial(first) in load.result.peer_serials, timeout=DEADLINE)
                    lt.do(lambda: agent.rotate_leaf("meshbridge"))
                    second = lt.do(lambda: agent.leaf_pem("meshbridge"))
                    assert second is not None and serial(second) != serial(first)
                    wait_for(
                        lambda: serial(second) in load.result.peer_serials,
                        timeout=DEADLINE,
                        what="the sidecar to see the rotated leaf",
                    )
                    # A few more handshakes with the new leaf before stopping.
                    done = load.result.done
                    wait_for(lambda: load.result.done > done + 20, timeout=DEADLINE)
                finally:
                    load.stop()
                    result = load.join(15)
                assert result.done > 40
                assert result.failed == 0, f"{result.summary()}: {result.errors[:5]}"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The meshbridge command in this process (the stand-in runs on its own thread)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_catalog_dry_run_prints_the_plan_then_applies_it(
    tmp_path: Path, consul: tuple[LoopThread, ConsulAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    lt, agent = consul
    world = tmp_path / "world"
    world.mkdir()
    write_docs(
        world / "web.yaml",
        [
            namespace("shop"),
            service("shop", "web", {}),
            endpoint_slice("shop", "web", "10.1.2.3", 8080),
        ],
    )
    # Ours and stale (our node, our tag); another cluster's node: never touched.
    lt.do(lambda: agent.register("k8s-sync", "127.0.0.1", "gone", 80, tags=["k8s"]))
    lt.do(lambda: agent.register("k8s-sync-b", "127.0.0.1", "theirs", 80, tags=["k8s"]))
    config = tmp_path / "meshbridge.yaml"
    config.write_text(consul_config(agent) + "catalog_sync:\n  to_consul:\n    enabled: true\n")
    args = ("--config", str(config), "--source", f"dir:{world}")

    code, out, err = cli(capsys, "sync-catalog", "--dry-run", *args)
    assert code == 0, err
    assert "1 to register, 1 to deregister" in out, out
    plus = [line for line in out.splitlines() if line.startswith("  + web ")]
    assert len(plus) == 1 and "10.1.2.3:8080 (from shop, check passing, tags k8s)" in plus[0]
    assert any(line.startswith("  - gone ") for line in out.splitlines()), out
    assert lt.do(lambda: agent.count("PUT")) == 0  # a dry run writes nothing

    code, out, err = cli(capsys, "sync-catalog", *args)
    assert code == 0, err
    assert "applied: 1 registered, 1 deregistered" in out, out
    ours = lt.do(lambda: agent.services_on("k8s-sync"))
    assert [s["Service"] for s in ours.values()] == ["web"]
    assert [s["Service"] for s in lt.do(lambda: agent.services_on("k8s-sync-b")).values()] == [
        "theirs"
    ]
    _, out, _ = cli(capsys, "sync-catalog", "--dry-run", *args)
    assert "(nothing to do)" in out, out


def test_sync_catalog_needs_a_direction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "meshbridge.yaml"
    config.write_text("")
    code, _, err = cli(capsys, "sync-catalog", "--dry-run", "--config", str(config))
    assert code == 2
    assert "catalog_sync: nothing to sync: enable catalog_sync.to_consul.enabled" in err


def test_serve_registers_a_new_service_in_consul_on_file_change(
    tmp_path: Path, consul: tuple[LoopThread, ConsulAgent]
) -> None:
    lt, agent = consul
    world = tmp_path / "world"
    world.mkdir()
    write_docs(world / "ns.yaml", [namespace("shop")])
    extra = "catalog_sync:\n  debounce_ms: 100\n  to_consul:\n    enabled: true\n"
    with serve(tmp_path, world, consul_config(agent) + extra) as s:
        start = time.monotonic()
        write_docs(
            world / "api.yaml",
            [service("shop", "api", {}), endpoint_slice("shop", "api", "10.1.2.4", 8080)],
        )

        def registered() -> bool:
            regs = lt.do(lambda: agent.services_on("k8s-sync")).values()
            return any(r["Service"] == "api" and r["Port"] == 8080 for r in regs)

        wait_for(registered, timeout=DEADLINE, what=f"api registered (log: {s.log()})")
        elapsed = time.monotonic() - start
        # A figure, not an assertion (timing depends on the machine): the file
        # poll (50 ms), the pipeline's and the syncer's debounce, one /v1/txn.
        print(f"file change to Consul registration: {elapsed * 1000:.0f} ms")
        assert lt.do(lambda: agent.count("PUT", "/v1/txn")) >= 1

        # The writes are counted on /metrics.
        written = re.compile(
            r'^meshbridge_catalog_sync_writes_total\{operation="register",target="consul"\} '
            r"([0-9.]+)$",
            re.M,
        )

        def registers() -> float:
            m = written.search(s.admin("/metrics"))
            return float(m.group(1)) if m else 0.0

        wait_for(lambda: registers() >= 1, timeout=DEADLINE, what="writes on /metrics")

        # A NodePort Service registers its endpoints' Node addresses (the Node is a
        # document of the directory source, as the Kubernetes source watches them).
        edge = service("shop", "edge", {})
        edge["spec"] = {
            "type": "NodePort",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "worker-1"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.168.10.5"},
                    {"type": "ExternalIP", "address": "203.0.113.5"},
                ]
            },
        }
        write_docs(
            world / "edge.yaml",
            [edge, node, endpoint_slice("shop", "edge", "10.1.2.9", 8080, node="worker-1")],
        )

        def edge_at() -> set[tuple[str, int]]:
            regs = lt.do(lambda: agent.services_on("k8s-sync")).values()
            return {(r["Address"], r["Port"]) for r in regs if r["Service"] == "edge"}

        wait_for(lambda: edge_at() == {("203.0.113.5", 30080)}, timeout=DEADLINE, what="edge")
        wait_for(lambda: registers() >= 2, timeout=DEADLINE, what="the second write counted")
