"""A real grpcio xDS client (``xds:///`` target) reaches a backend through the bridge."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from bridge.bootstrap import grpc_bootstrap
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Discovery, Endpoint, Protocol, Upstream, UpstreamKey
from bridge.server.ads import AdsServer
from bridge.server.cache import Snapshot, SnapshotCache
from bridge.server.listen import XdsServer
from bridge.xds.clusters import build_cluster, build_load_assignment
from bridge.xds.names import cluster_name
from bridge.xds.proxyless import listener_name, proxyless_resources, target
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources

pytestmark = pytest.mark.e2e

SERVICE, METHOD = "meshbridge.test.Echo", "Ping"

# The client runs in its own process: grpc reads GRPC_XDS_BOOTSTRAP once per process.
CLIENT = f"""
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    ping = channel.unary_unary("/{SERVICE}/{METHOD}")
    sys.stdout.write(ping(b"hello", timeout=15, wait_for_ready=True).decode())
"""


async def echo_backend(name: str) -> tuple[grpc.aio.Server, int]:
    async def ping(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return name.encode() + b":" + request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(ping)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_listener_names_are_what_clients_dial() -> None:
    key = UpstreamKey("default", "web", "8080")
    assert listener_name(key) == "web.default:8080"
    assert target(key) == "xds:///web.default:8080"
    res = proxyless_resources([Upstream(key, Discovery.EDS)])
    lst = res[LISTENER]["web.default:8080"]
    assert lst.HasField("api_listener")  # type: ignore[attr-defined]
    rc = res[ROUTE]["web.default:8080"]
    assert rc.virtual_hosts[0].routes[0].route.cluster == cluster_name(key)  # type: ignore[attr-defined]


async def test_grpc_xds_client_reaches_the_backend_through_the_bridge() -> None:
    backend, port = await echo_backend("echo-1")
    cache = SnapshotCache(groups={"grpc-client": "proxyless"})
    ads = AdsServer(cache)
    xds = XdsServer(ads, "127.0.0.1:0")
    await xds.start()
    tmp = tempfile.mkdtemp(prefix="meshbridge-grpc-")
    try:
        up = Upstream(
            key=UpstreamKey("default", "echo", "50051"),
            discovery=Discovery.EDS,
            endpoints=(Endpoint("127.0.0.1", port, zone="zone-a"),),
            protocol=Protocol.HTTP2,
        )
        name = cluster_name(up.key)
        by_type = dict(proxyless_resources([up]))
        by_type[CLUSTER] = FrozenDict({name: build_cluster(up)})
        by_type[ENDPOINT] = FrozenDict({name: build_load_assignment(up)})
        cache.set_snapshot("proxyless", Snapshot.from_resources(Resources(FrozenDict(by_type))))
        boot = Path(tmp) / "bootstrap.json"
        boot.write_text(json.dumps(grpc_bootstrap(xds=xds.target, node_id="grpc-client")))
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(boot)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            target(up.key),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()[-3000:]
        assert out == b"echo-1:hello"
        assert ads.nack_counts == {}
    finally:
        await xds.stop(0)
        await backend.stop(0)
        shutil.rmtree(tmp, ignore_errors=True)
