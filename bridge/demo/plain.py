"""The demo's plain flow: example world → in-process bridge → real Envoy → two backends.

See :mod:`bridge.demo` for the story. Routes are taken from what the bridge
resolved (not from a list kept here), so the table always matches the
world. A route passes when the gateway answers 200 from the backend its
Service's endpoints point at. Services the bridge left out because of a
diagnostic are listed under the table: that is the demo showing that one
bad annotation costs nothing else.
"""

from __future__ import annotations

import asyncio
import http.client
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from bridge.app import Bridge, wait_ready
from bridge.bootstrap import bootstrap_yaml
from bridge.config import Config, GatewayConfig, ListenerConfig, XdsConfig
from bridge.demo import world_files
from bridge.demo.backends import NameServer
from bridge.demo.envoy import DemoEnvoy, envoy_binary
from bridge.errors import MeshbridgeError
from bridge.model.diagnostics import Severity
from bridge.model.ir import Resolved, Route
from bridge.model.k8s import Kind
from bridge.sources.dir import DirSource
from bridge.store import Store

NODE_ID = "meshbridge-demo-gateway"
BACKENDS = ("alpha", "beta")
ROUTE_DEADLINE = 20.0  # seconds for the gateway to start answering a route


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RouteResult:
    route: str
    mesh: str
    resolver: str
    peer: str  # the peer identity the gateway verified, "n/a" for mesh none
    status: int  # 0: no answer
    latency_ms: float
    backend: str  # who answered
    expected: str

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.backend == self.expected


def write_world(target: Path, backend_ports: dict[str, int]) -> dict[tuple[str, str], str]:
    """Copy the bundled world into ``target``, EndpointSlices pointed at the backends.

    Returns which backend each Service's endpoints now point at. Services
    are given backends in turn, in (namespace, name) order.
    """
    names = sorted(backend_ports)
    docs_by_file: dict[str, list[Any]] = {}
    services: list[tuple[str, str]] = []
    for f in world_files():
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        docs_by_file[f.name] = docs
        for d in docs:
            if d.get("kind") == "Service":
                meta = d["metadata"]
                services.append((meta.get("namespace", "default"), meta["name"]))
    assignment = {svc: names[i % len(names)] for i, svc in enumerate(sorted(services))}
    for fname, docs in docs_by_file.items():
        for d in docs:
            if d.get("kind") != "EndpointSlice":
                continue
            meta = d["metadata"]
            svc = (meta.get("namespace", "default"), meta["labels"]["kubernetes.io/service-name"])
            port = backend_ports[assignment[svc]]
            d["endpoints"] = [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]
            for p in d.get("ports") or []:
                p["port"] = port
        (target / fname).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return assignment


def demo_config(listen_port: int) -> Config:
    return Config(
        source="dir:.",
        xds=XdsConfig(address="127.0.0.1:0", allowed_node_ids=(NODE_ID,)),
        gateway=GatewayConfig(listeners=(ListenerConfig("http", listen_port, "127.0.0.1"),)),
    )


def _request_host(host: str) -> str:
    if host == "*":
        return "demo.local"
    if host.startswith("*."):
        return "demo" + host[1:]
    return host


def http_get(port: int, host: str, path: str, timeout: float = 5.0) -> tuple[int, str, float]:
    """One GET through the gateway: (status, x-backend, latency ms); status 0 on no answer."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-backend", ""), (time.perf_counter() - start) * 1000
    except OSError:
        return 0, "", (time.perf_counter() - start) * 1000
    finally:
        conn.close()


def routes_of(resolved: Resolved) -> list[tuple[Route, str, str]]:
    """Every route with its Service's mesh and resolver, in a stable order."""
    out = []
    for res in sorted(resolved.services.values(), key=lambda r: r.ref):
        if not res.exposed:
            continue
        for r in res.routes:
            out.append(
                (
                    r,
                    res.mesh.value if res.mesh else "-",
                    res.resolver.value if res.resolver else "-",
                )
            )
    return out


async def probe(
    port: int, route: Route, mesh: str, resolver: str, expected: str, deadline: float
) -> RouteResult:
    """Request the route until it answers from ``expected`` or the deadline passes."""
    host, path = _request_host(route.host), route.prefix
    while True:
        status, backend, ms = await asyncio.to_thread(http_get, port, host, path)
        result = RouteResult(
            f"{route.host}{route.prefix}",
            mesh,
            resolver,
            "n/a" if mesh == "none" else "",
            status,
            ms,
            backend,
            expected,
        )
        if result.ok or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)  # the gateway is still warming: retry until the deadline


def render(results: list[RouteResult], left_out: list[str], out: TextIO) -> None:
    headers = ("ROUTE", "MESH", "RESOLVER", "PEER VERIFIED", "STATUS", "LATENCY", "RESULT")
    rows = [
        (
            r.route,
            r.mesh,
            r.resolver,
            r.peer or "-",
            str(r.status) if r.status else "no answer",
            f"{r.latency_ms:.1f} ms",
            f"ok ({r.backend})"
            if r.ok
            else f"FAIL (expected {r.expected}, got {r.backend or '-'})",
        )
        for r in results
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if left_out:
        print("\nLeft out because of a diagnostic (everything else keeps working):", file=out)
        for line in left_out:
            print(f"  {line}", file=out)


async def run(out: TextIO = sys.stdout) -> int:
    envoy_binary()  # fail early and clearly when Envoy is missing
    workdir = Path(tempfile.mkdtemp(prefix="meshbridge-demo-"))
    backends = [NameServer(name) for name in BACKENDS]
    app: Bridge | None = None
    envoy: DemoEnvoy | None = None
    try:
        for b in backends:
            await b.start()
        world = workdir / "world"
        world.mkdir()
        assignment = write_world(world, {b.name: b.port for b in backends})
        listen_port = free_port()
        config = demo_config(listen_port)

        def sources(store: Store) -> list[DirSource]:
            return [DirSource(store, world, poll_interval=0.2)]

        app = Bridge(config, sources, admin_address="")
        await app.start()
        await wait_ready(app)
        print(
            f"meshbridge demo: bridge serving xDS on {app.xds_target}, "
            f"gateway on 127.0.0.1:{listen_port}, backends "
            + ", ".join(f"{b.name}=127.0.0.1:{b.port}" for b in backends),
            file=out,
        )
        admin_port = free_port()
        envoy = DemoEnvoy(
            bootstrap_yaml(
                xds=app.xds_target, node_id=NODE_ID, listen_port=listen_port, admin_port=admin_port
            ),
            admin_port=admin_port,
            workdir=workdir,
        )
        envoy.launch()
        await envoy.wait_ready()
        resolved = app.pipeline.resolved
        assert resolved is not None
        deadline = time.monotonic() + ROUTE_DEADLINE
        results = [
            await probe(
                listen_port,
                route,
                mesh,
                resolver,
                assignment[(route.source.namespace, route.source.name)],
                deadline,
            )
            for route, mesh, resolver in routes_of(resolved)
        ]
        left_out = [
            f"{res.ref.namespace}/{res.ref.name}: {d.field}: {d.message}"
            for res in sorted(resolved.services.values(), key=lambda r: r.ref)
            if res.ref.kind is Kind.SERVICE
            for d in res.diagnostics
            if d.severity is Severity.ERROR
        ]
        render(results, left_out, out)
        if not results:
            print("no routes resolved: nothing to demonstrate", file=out)
            return 1
        failed = [r for r in results if not r.ok]
        if failed:
            print(f"\n{len(failed)} of {len(results)} routes failed; gateway log:", file=out)
            print(envoy.log_tail(), file=out)
            return 1
        print(f"\nall {len(results)} routes answered through the gateway", file=out)
        return 0
    finally:
        if envoy is not None:
            await asyncio.to_thread(envoy.stop)
        if app is not None:
            await app.stop(grace=0)
        for b in backends:
            await b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        return 130
    except MeshbridgeError as exc:
        print(f"meshbridge demo: {exc}", file=sys.stderr)
        return 1
