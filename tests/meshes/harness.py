"""A meshbridge xDS server in a thread, a gateway Envoy fed by it, HTTP helpers.

The bridge runs the real translation (:func:`bridge.xds.translate.translate`),
snapshot cache and ADS server; the test hands it an IR (resolve's part is done
by hand from :mod:`bridge.resolve.meshtls`). It runs on its own event loop in
a background thread so tests stay synchronous and Envoy processes can be
shared by a module's tests.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from bridge.model.ir import Ir
from bridge.server.ads import AdsServer
from bridge.server.cache import DEFAULT_GROUP, Snapshot, SnapshotCache
from bridge.server.listen import XdsServer
from bridge.xds.translate import Translation, translate

T = TypeVar("T")

TYPE = "type.googleapis.com/"


class BridgeThread:
    """Translation + snapshot cache + ADS server on 127.0.0.1, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.cache = SnapshotCache()
        self._translation: Translation | None = None
        self._snapshot: Snapshot | None = None
        self.server: XdsServer | None = None
        self.port = 0
        self.publishes = 0

    def start(self) -> BridgeThread:
        self._thread.start()

        async def up() -> XdsServer:
            server = XdsServer(AdsServer(self.cache), "127.0.0.1:0")
            await server.start()
            return server

        self.server = self.call(up)
        assert self.server.port is not None
        self.port = self.server.port
        return self

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine on the bridge's loop and wait for its result."""

        async def run() -> T:
            return await make()

        fut: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return fut.result(timeout)

    def spawn(self, make: Callable[[], Awaitable[Any]]) -> Future[Any]:
        """Start a long-running coroutine on the bridge's loop (cancel the future to stop)."""

        async def run() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def publish(self, ir: Ir) -> None:
        """Translate ``ir`` and serve it (what the pipeline does after resolve)."""

        async def go() -> None:
            self._publish(ir)

        self.call(go)

    def _publish(self, ir: Ir) -> None:
        """On the bridge's loop: translate incrementally and set the snapshot."""
        self._translation = translate(ir, self._translation)
        self._snapshot = Snapshot.from_resources(self._translation.resources, self._snapshot)
        self.cache.set_snapshot(DEFAULT_GROUP, self._snapshot)
        self.publishes += 1

    def stop(self) -> None:
        if self.server is not None:
            server = self.server

            async def down() -> None:
                await server.stop(0)

            self.call(down)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def gateway_bootstrap(xds_port: int, node_id: str = "gateway") -> dict[str, Any]:
    """An Envoy bootstrap taking everything over ADS from the bridge."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": "meshbridge-gateway"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "meshbridge_xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "meshbridge_xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": TYPE
                            + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "meshbridge_xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


def get(port: int, path: str, headers: Mapping[str, str] | None = None) -> Reply:
    """One GET through the gateway on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        r = conn.getresponse()
        body = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        conn.close()
