"""Fixtures: an ADS server on a free loopback port and raw clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc

from bridge.server.ads import AdsServer
from bridge.server.cache import AccessPolicy, SnapshotCache
from bridge.server.listen import XdsServer
from tests.server.client import DeltaStream, SotwStream


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    cache: SnapshotCache
    ads: AdsServer
    server: XdsServer
    channel: grpc.aio.Channel
    clock: FakeClock
    streams: list[SotwStream | DeltaStream]

    @property
    def stub(self) -> ads_grpc.AggregatedDiscoveryServiceStub:
        return ads_grpc.AggregatedDiscoveryServiceStub(self.channel)

    def sotw(self, node_id: str = "gw") -> SotwStream:
        s = SotwStream(self.stub, node_id)
        self.streams.append(s)
        return s

    def delta(self, node_id: str = "gw") -> DeltaStream:
        s = DeltaStream(self.stub, node_id)
        self.streams.append(s)
        return s


@pytest.fixture
def policy() -> AccessPolicy:
    return AccessPolicy()


@pytest.fixture
async def harness(policy: AccessPolicy) -> AsyncIterator[Harness]:
    cache = SnapshotCache(policy=policy)
    clock = FakeClock()
    ads = AdsServer(cache, clock=clock)
    server = XdsServer(ads, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(server.target)
    h = Harness(cache, ads, server, channel, clock, [])
    try:
        yield h
    finally:
        for s in h.streams:
            await s.close()
        await channel.close(None)
        await server.stop(0)


MakeHarness = Callable[[], Harness]
