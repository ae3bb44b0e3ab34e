"""A raw ADS client for protocol tests: sends exactly the requests a test writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.rpc import status_pb2


class _Reader:
    """Reads responses in a task: cancelling a pending ``read`` would cancel the call."""

    call: Any

    def _start(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.received = 0

    async def _pump(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                self.received += 1
                await self.queue.put(resp)
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
        except grpc.aio.AioRpcError as err:
            await self.queue.put(err)

    async def recv(self, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        if self.task is None:
            self.task = asyncio.create_task(self._pump())
        resp = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(resp, grpc.aio.AioRpcError):
            raise resp
        assert resp is not grpc.aio.EOF, "stream ended"  # type: ignore[attr-defined]
        return resp

    async def nothing(self, within: float = 0.3) -> None:
        """Assert no response arrives within ``within`` seconds (absence needs a window)."""
        try:
            resp = await self.recv(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {resp}")

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class SotwStream(_Reader):
    """One StreamAggregatedResources call."""

    def __init__(self, stub: ads_grpc.AggregatedDiscoveryServiceStub, node_id: str) -> None:
        self.call: Any = stub.StreamAggregatedResources()
        self.node = base_v3.Node(id=node_id, cluster="test")
        self._first = True
        self._start()

    async def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_v3.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def ack(self, resp: discovery_v3.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        await self.send(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)


class DeltaStream(_Reader):
    """One DeltaAggregatedResources call."""

    def __init__(self, stub: ads_grpc.AggregatedDiscoveryServiceStub, node_id: str) -> None:
        self.call: Any = stub.DeltaAggregatedResources()
        self.node = base_v3.Node(id=node_id, cluster="test")
        self._first = True
        self._start()

    async def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: Mapping[str, str] | None = None,
    ) -> None:
        req = discovery_v3.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def ack(self, resp: discovery_v3.DeltaDiscoveryResponse) -> None:
        await self.send(resp.type_url, nonce=resp.nonce)


def names(resp: Any) -> list[str]:
    """Resource names in a SotW or delta response."""
    if isinstance(resp, discovery_v3.DeltaDiscoveryResponse):
        return [r.name for r in resp.resources]
    out = []
    for any_ in resp.resources:
        msg = _decode(any_)
        out.append(getattr(msg, "cluster_name", "") or msg.name)
    return out


def _decode(any_: Any) -> Any:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    for cls in (
        cluster_pb2.Cluster,
        endpoint_pb2.ClusterLoadAssignment,
        listener_pb2.Listener,
        route_pb2.RouteConfiguration,
        secret_pb2.Secret,
    ):
        if any_.type_url.endswith(cls.DESCRIPTOR.full_name):
            msg = cls()
            any_.Unpack(msg)
            return msg
    raise AssertionError(f"unknown type {any_.type_url}")
