"""Real Envoy fed by the bridge over ADS, state-of-the-world and delta."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bridge.bootstrap import envoy_bootstrap
from bridge.server.ads import AdsServer
from bridge.server.cache import Snapshot, SnapshotCache
from bridge.server.listen import XdsServer
from bridge.xds.resources import LISTENER, Resources
from tests.server.builders import cla, cluster, listener, resources, route_config
from tests.support.envoy import EnvoyProcess
from tests.support.wait import async_wait_for, free_port

pytestmark = pytest.mark.e2e
MODES = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]


@contextmanager
def backend(name: str) -> Iterator[int]:
    """A tiny HTTP backend on 127.0.0.1 answering its name."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def world(listen_port: int, backend_port: int, route_to: str = "one") -> Resources:
    return resources(
        listener("http", listen_port, "routes"),
        route_config("routes", route_to),
        cluster("one"),
        cluster("two"),
        cla("one", [("127.0.0.1", backend_port)]),
        cla("two", [("127.0.0.1", backend_port + 0)]),
    )


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@asynccontextmanager
async def bridge(port: int = 0) -> AsyncIterator[tuple[SnapshotCache, AdsServer, XdsServer]]:
    cache = SnapshotCache()
    ads = AdsServer(cache)
    server = XdsServer(ads, f"127.0.0.1:{port}")
    await server.start()
    try:
        yield cache, ads, server
    finally:
        await server.stop(0)


@asynccontextmanager
async def envoy(xds: str, delta: bool) -> AsyncIterator[EnvoyProcess]:
    proc = EnvoyProcess(envoy_bootstrap(xds=xds, node_id="gw", admin_port=free_port(), delta=delta))
    try:
        await asyncio.to_thread(proc.start)
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


def listener_names(proc: EnvoyProcess) -> list[str]:
    """Envoy's dynamic listeners, including refused ones it keeps an error state for."""
    for config in proc.config_dump()["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            return sorted(d["name"] for d in config.get("dynamic_listeners", []))
    return []


async def serves(port: int, body: str) -> bool:
    status, text = await asyncio.to_thread(get, port)
    return status == 200 and text == body


@pytest.mark.parametrize("delta", MODES)
async def test_envoy_routes_rejects_a_bad_update_without_looping_then_applies_a_good_one(
    delta: bool,
) -> None:
    listen = free_port()
    with backend("one") as p1, backend("two") as p2:
        async with bridge() as (cache, ads, server):
            r = resources(cla("two", [("127.0.0.1", p2)]), base=world(listen, p1))
            snap = Snapshot.from_resources(r)
            cache.set_snapshot("default", snap)
            async with envoy(server.target, delta) as proc:
                await async_wait_for(lambda: serves(listen, "one"), what="traffic via Envoy")
                # A listener on an address Envoy cannot parse: passes proto validation,
                # Envoy rejects it.
                bad = resources(listener("bad", free_port(), "routes", address="999.1.1.1"), base=r)
                snap = Snapshot.from_resources(bad, snap)
                cache.set_snapshot("default", snap)
                await async_wait_for(lambda: ads.nack_counts[LISTENER] >= 1, what="Envoy's NACK")
                [st] = ads.status()
                assert st.last_nack is not None
                assert "999.1.1.1" in st.last_nack.message
                sent = st.responses
                # Envoy keeps serving, and the bridge does not resend the rejected listener.
                for _ in range(10):
                    assert await serves(listen, "one")
                await asyncio.sleep(0.5)  # a window in which a looping server would resend
                assert ads.status()[0].responses == sent
                assert ads.nack_counts[LISTENER] == 1
                # A later valid change applies (the bad listener goes, the route moves).
                snap = Snapshot.from_resources(
                    resources(route_config("routes", "two"), base=r), snap
                )
                cache.set_snapshot("default", snap)
                await async_wait_for(lambda: serves(listen, "two"), what="the new route")
                await async_wait_for(
                    lambda: listener_names(proc) == ["http"], what="the refused listener to go"
                )


@pytest.mark.parametrize("delta", MODES)
async def test_restarting_the_bridge_mid_traffic_loses_no_requests(delta: bool) -> None:
    listen = free_port()
    xds_port = free_port()
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                status, _ = get(listen)
                if status != 200:
                    failures.append(str(status))
                else:
                    served += 1
            except OSError as exc:
                failures.append(repr(exc))
            stop.wait(0.01)

    with backend("one") as p1, backend("two") as p2:
        r = resources(cla("two", [("127.0.0.1", p2)]), base=world(listen, p1))
        async with bridge(xds_port) as (cache, _ads, server):
            cache.set_snapshot("default", Snapshot.from_resources(r))
            async with envoy(server.target, delta) as proc:
                await async_wait_for(lambda: serves(listen, "one"), what="traffic via Envoy")
                thread = threading.Thread(target=traffic)
                thread.start()
                try:
                    await server.stop(0)  # the bridge goes away mid-traffic
                    await async_wait_for(lambda: served > 20, what="traffic without the bridge")
                    async with bridge(xds_port) as (cache2, ads2, _server2):
                        snap = Snapshot.from_resources(r)
                        cache2.set_snapshot("default", snap)
                        await async_wait_for(
                            lambda: ads2.status() and len(ads2.status()[0].types) == 4,
                            timeout=15,
                            what="Envoy to reconnect and ask for all four types",
                        )
                        if delta:
                            # It told us what it has (initial_resource_versions): the
                            # bridge resends nothing it already holds.
                            assert ads2.status()[0].responses == 0
                        cache2.set_snapshot(
                            "default",
                            Snapshot.from_resources(
                                resources(route_config("routes", "two"), base=r), snap
                            ),
                        )
                        await async_wait_for(lambda: serves(listen, "two"), what="convergence")
                finally:
                    stop.set()
                    await asyncio.to_thread(thread.join, 10)
                assert failures == [], proc.log()
                assert served > 20
