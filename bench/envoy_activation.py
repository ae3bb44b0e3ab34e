"""Time until a real Envoy has all 10k clusters active: meshbridge's ADS server
beside a minimal server that sends pre-serialized resources.

Run from the repository root:

    .venv/bin/python bench/envoy_activation.py [--services 10000] [--endpoints-per 10]
        [--rounds 3]

Two servers run in child processes, each built once from the same World
(bench/common.py, through the Store):

- **meshbridge**: the real pipeline's snapshot (resolve → translate →
  ``Snapshot``) served by :class:`bridge.server.ads.AdsServer` over
  :class:`bridge.server.listen.XdsServer`;
- **minimal**: a tiny grpc.aio ADS that holds one pre-built
  ``DiscoveryResponse`` for CDS (every cluster) and one for EDS (every
  assignment), made from the same bytes (bench/full_build.py's floor), and
  answers a stream's first CDS request and each EDS request that names more
  clusters than it last answered with them. Nothing else: no versions, no
  ACK handling.

For each round, and for each server in turn, a fresh Envoy (``--concurrency
1``) starts from ``meshbridge bootstrap`` output (CDS over ADS only: LDS is
left out so both servers do the same work) and the clock runs from its
launch until its admin stats say ``cluster_manager.active_clusters`` counts
every cluster (plus the static xDS cluster) and
``cluster_manager.warming_clusters`` is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import yaml
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.protobuf import any_pb2

from bench.common import fill_store
from bench.full_build import floor_build
from bridge.bootstrap import envoy_bootstrap
from bridge.model.settings import ResolveSettings
from bridge.pipeline import Pipeline, SnapshotPublisher
from bridge.server.ads import SERVICE, SOTW_METHOD, AdsServer
from bridge.server.cache import SnapshotCache
from bridge.server.listen import XdsServer
from bridge.store import Store
from bridge.xds.resources import CLUSTER, ENDPOINT
from tests.support.envoy import envoy_binary
from tests.support.wait import free_port

_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


# -- the servers (child processes) ----------------------------------------------


async def serve_until_stdin_closes(start: Any, stop: Any) -> None:
    port = await start()
    print(f"port {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await stop()


def child_meshbridge(args: argparse.Namespace) -> None:
    store = Store()
    fill_store(store, args.services, args.endpoints_per)
    cache = SnapshotCache()
    pipeline = Pipeline(store, ResolveSettings(), SnapshotPublisher(cache))
    assert pipeline.build_once(), pipeline.last_error
    server = XdsServer(AdsServer(cache), "127.0.0.1:0")

    async def start() -> int:
        await server.start()
        assert server.port is not None
        return server.port

    async def stop() -> None:
        await server.stop(0)

    asyncio.run(serve_until_stdin_closes(start, stop))


def prebuilt_responses(args: argparse.Namespace) -> dict[str, bytes]:
    store = Store()
    fill_store(store, args.services, args.endpoints_per)
    world, _ = store.take()
    by_type: dict[str, list[bytes]] = {CLUSTER: [], ENDPOINT: []}
    for type_url, _, value in floor_build(world):
        if type_url in by_type:
            by_type[type_url].append(value)
    return {
        type_url: discovery_v3.DiscoveryResponse(
            version_info="1",
            type_url=type_url,
            nonce=str(n),
            resources=[any_pb2.Any(type_url=type_url, value=v) for v in values],
        ).SerializeToString()
        for n, (type_url, values) in enumerate(by_type.items(), 1)
    }


def child_minimal(args: argparse.Namespace) -> None:
    responses = prebuilt_responses(args)

    async def stream(requests: Any, context: Any) -> Any:
        answered: dict[str, int] = {}  # type URL -> names in the request last answered
        async for req in requests:
            payload = responses.get(req.type_url)
            if payload is None:
                continue
            names = len(req.resource_names)
            if req.type_url not in answered or names > answered[req.type_url]:
                answered[req.type_url] = names
                yield payload

    def identity(b: bytes) -> bytes:
        return b

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            SOTW_METHOD: grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=discovery_v3.DiscoveryRequest.FromString,
                response_serializer=identity,
            )
        },
    )
    servers: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server(options=_OPTIONS)  # made inside the running loop
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    async def stop() -> None:
        await servers[0].stop(0)

    asyncio.run(serve_until_stdin_closes(start, stop))


# -- Envoy -----------------------------------------------------------------------


def admin_stats(port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{port}/stats?filter=^cluster_manager%5C.(active|warming)_clusters$"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def activation_time(xds_port: int, clusters: int, node_id: str, timeout: float) -> float:
    """Seconds from launching Envoy until every cluster is active and none is warming."""
    admin_port = free_port()
    bootstrap = envoy_bootstrap(xds=f"127.0.0.1:{xds_port}", node_id=node_id, admin_port=admin_port)
    del bootstrap["dynamic_resources"]["lds_config"]  # clusters only, on both sides
    workdir = tempfile.mkdtemp(prefix="meshbridge-bench-envoy-")
    config = Path(workdir) / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    cmd = [envoy_binary(), "-c", str(config), "--log-level", "warning"]
    cmd += ["--disable-hot-restart", "--concurrency", "1"]
    cmd += ["--log-path", str(Path(workdir) / "envoy.log")]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = start + timeout
        while True:
            stats = admin_stats(admin_port)
            active = stats.get("cluster_manager.active_clusters", 0)
            if active >= clusters + 1 and stats.get("cluster_manager.warming_clusters") == 0:
                return time.perf_counter() - start
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {proc.returncode}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{active} of {clusters} clusters active after {timeout}s")
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


# -- the parent --------------------------------------------------------------------


class Child:
    def __init__(self, side: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--side", side]
        cmd += ["--services", str(args.services), "--endpoints-per", str(args.endpoints_per)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.close()
            raise SystemExit(f"{side} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints-per", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--side", choices=["meshbridge", "minimal"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "meshbridge":
        child_meshbridge(args)
        return
    if args.side == "minimal":
        child_minimal(args)
        return

    print(f"world: {args.services} Services x {args.endpoints_per} endpoints; Envoy 1.40, SotW ADS")
    servers = {"minimal": Child("minimal", args), "meshbridge": Child("meshbridge", args)}
    times: dict[str, list[float]] = {side: [] for side in servers}
    try:
        for n in range(args.rounds):  # interleaved: load from others hits both sides alike
            for side, child in servers.items():
                t = activation_time(child.port, args.services, f"bench-{side}-{n}", args.timeout)
                times[side].append(t)
                print(f"  round {n + 1}: {side:10s} {t:6.2f} s", flush=True)
    finally:
        for child in servers.values():
            child.close()
    floor, ours = min(times["minimal"]), min(times["meshbridge"])
    print(
        f"minimal pre-serialized server: best {floor:.2f} s, median "
        f"{statistics.median(times['minimal']):.2f} s"
    )
    print(
        f"meshbridge:                    best {ours:.2f} s, median "
        f"{statistics.median(times['meshbridge']):.2f} s"
    )
    print(f"ratio (best to best): {ours / floor:.2f}x (target <= 1.2x)")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
