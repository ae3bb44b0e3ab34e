"""xDS serving figures: snapshot cost of one endpoint change, fan-out to 100 ADS
streams, memory per stream, and bytes per Envoy in state-of-the-world vs delta.

Run:  .venv/bin/python bench/xds_stream.py [--services 10000] [--streams 100]

The world is N services with 10 endpoints each (EDS clusters built by
bridge.xds.clusters) handed over as ShardedMaps, a change as a version evolved
from the previous one, as translation does. The stream
clients run in a child process (raw grpc.aio ADS clients that ACK everything)
so the server's RSS is measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from bridge.model.frozen import FrozenDict
from bridge.model.ir import Discovery, Endpoint, Upstream, UpstreamKey
from bridge.model.sharded import ShardedMap
from bridge.server.ads import AdsServer, NullObserver
from bridge.server.cache import Snapshot, SnapshotCache
from bridge.server.listen import XdsServer
from bridge.xds.clusters import build_cluster, build_load_assignment
from bridge.xds.names import cluster_name
from bridge.xds.resources import CLUSTER, ENDPOINT, Resources


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upstream(i: int, generation: int = 0) -> Upstream:
    eps = tuple(
        Endpoint(f"10.{(i >> 8) & 255}.{i & 255}.{j + 1 + generation}", 8080, zone=f"z{j % 3}")
        for j in range(10)
    )
    return Upstream(UpstreamKey(f"ns{i % 50}", f"svc{i}", "http"), Discovery.EDS, endpoints=eps)


def build_world(n: int) -> tuple[dict[str, object], dict[str, object]]:
    clusters: dict[str, object] = {}
    clas: dict[str, object] = {}
    for i in range(n):
        u = upstream(i)
        name = cluster_name(u.key)
        clusters[name] = build_cluster(u)
        clas[name] = build_load_assignment(u)
    return clusters, clas


_sharded: dict[int, ShardedMap[str, object]] = {}


def sharded(mapping: Mapping[str, object]) -> ShardedMap[str, object]:
    """The mapping as a ShardedMap, made once per dict (as translation keeps them)."""
    if isinstance(mapping, ShardedMap):
        return mapping
    return _sharded.setdefault(id(mapping), ShardedMap.of(mapping.items()))


def resources(clusters: Mapping[str, object], clas: Mapping[str, object]) -> Resources:
    # Translation hands over the very same mapping for a type that did not change, and
    # a changed one as a ShardedMap evolved from the previous one.
    return Resources(FrozenDict({CLUSTER: sharded(clusters), ENDPOINT: sharded(clas)}))  # type: ignore[dict-item]


class AckCounter(NullObserver):
    def __init__(self) -> None:
        self.target = ""
        self.acks = 0
        self.done = asyncio.Event()
        self.need = 0

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        if type_url == ENDPOINT and version == self.target:
            self.acks += 1
            if self.acks >= self.need:
                self.done.set()


CLIENTS = r"""
import asyncio, sys, grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

async def stream(stub, i, names, synced):
    call = stub.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id=f"bench-{i}"), type_url=CDS))
    first_eds = True
    while True:
        resp = await call.read()
        if resp is grpc.aio.EOF:
            return
        if resp.type_url == CDS:
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce))
            if first_eds:
                first_eds = False
                await call.write(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names))
        else:
            await call.write(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names,
                version_info=resp.version_info, response_nonce=resp.nonce))
            if not synced[i]:
                synced[i] = True
                if all(synced):
                    print("synced", flush=True)

async def main():
    target, n = sys.argv[1], int(sys.argv[2])
    names = [line.strip() for line in sys.stdin]
    opts = [("grpc.max_receive_message_length", 1 << 28)]
    async with grpc.aio.insecure_channel(target, options=opts) as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        synced = [False] * n
        await asyncio.gather(*(stream(stub, i, names, synced) for i in range(n)))

asyncio.run(main())
"""


async def fan_out(cache: SnapshotCache, snap: Snapshot, clas: dict, clusters: dict, streams: int):  # type: ignore[no-untyped-def,type-arg]
    counter = AckCounter()
    ads = AdsServer(cache, observer=counter)
    server = XdsServer(ads, "127.0.0.1:0")
    await server.start()
    gc.collect()
    rss_before = rss_mb()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENTS,
        server.target,
        str(streams),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n".join(clas).encode())
    proc.stdin.close()
    t0 = time.perf_counter()
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    assert line.strip() == b"synced", line
    initial = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # let the last ACKs land
    gc.collect()
    rss_after = rss_mb()
    times = []
    clas = sharded(clas)
    for k in range(5):
        name = next(iter(clas))
        clas = clas.evolve({name: build_load_assignment(upstream(0, generation=k + 1), name)})
        t = time.perf_counter()
        snap = Snapshot.from_resources(resources(clusters, clas), snap)
        counter.target, counter.acks, counter.need = snap.version(ENDPOINT), 0, streams
        counter.done.clear()
        cache.set_snapshot("default", snap)
        await asyncio.wait_for(counter.done.wait(), 60)
        times.append(time.perf_counter() - t)
    proc.kill()
    await proc.wait()
    await server.stop(0)
    return initial, rss_before, rss_after, times


async def bytes_per_envoy(snap: Snapshot, clusters: dict, clas: dict) -> dict[str, int]:  # type: ignore[type-arg]
    out = {}
    for mode in ("sotw", "delta"):
        cache = SnapshotCache()
        cache.set_snapshot("default", snap)
        ads = AdsServer(cache)
        server = XdsServer(ads, "127.0.0.1:0")
        await server.start()
        opts = [("grpc.max_receive_message_length", 1 << 28)]
        async with grpc.aio.insecure_channel(server.target, options=opts) as ch:
            stub = ads_grpc.AggregatedDiscoveryServiceStub(ch)
            node = base_v3.Node(id="envoy")
            if mode == "sotw":
                call = stub.StreamAggregatedResources()
                await call.write(discovery_v3.DiscoveryRequest(node=node, type_url=CLUSTER))
                r = await call.read()
                await call.write(
                    discovery_v3.DiscoveryRequest(
                        type_url=CLUSTER, version_info=r.version_info, response_nonce=r.nonce
                    )
                )
                await call.write(
                    discovery_v3.DiscoveryRequest(type_url=ENDPOINT, resource_names=list(clas))
                )
                r = await call.read()
            else:
                call = stub.DeltaAggregatedResources()
                await call.write(discovery_v3.DeltaDiscoveryRequest(node=node, type_url=CLUSTER))
                r = await call.read()
                await call.write(
                    discovery_v3.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce)
                )
                await call.write(
                    discovery_v3.DeltaDiscoveryRequest(
                        type_url=ENDPOINT, resource_names_subscribe=list(clas)
                    )
                )
                r = await call.read()
            before = ads.status()[0].bytes_sent
            name = next(iter(clas))
            changed = sharded(clas).evolve(
                {name: build_load_assignment(upstream(0, generation=99), name)}
            )
            cache.set_snapshot(
                "default", Snapshot.from_resources(resources(clusters, changed), snap)
            )
            await call.read()
            out[mode] = ads.status()[0].bytes_sent - before
            call.cancel()
        await server.stop(0)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--streams", type=int, default=100)
    args = ap.parse_args()
    n = args.services
    print(f"world: {n} services, {n * 10} endpoints")
    t = time.perf_counter()
    clusters, clas = build_world(n)
    print(f"  protos built (translation's share): {time.perf_counter() - t:.2f} s")
    rss0 = rss_mb()
    t = time.perf_counter()
    snap = Snapshot.from_resources(resources(clusters, clas))
    snap.check_consistency()
    full = time.perf_counter() - t
    print(
        f"  snapshot, full build (serialize + hash + refs): {full:.2f} s, "
        f"+{rss_mb() - rss0:.0f} MB RSS"
    )
    cache = SnapshotCache()
    cache.set_snapshot("default", snap)

    # One endpoint change: the cache's work (snapshot + consistency + set).
    name = next(iter(clas))
    samples = []
    cur = snap
    for k in range(30):
        changed = sharded(clas).evolve(
            {name: build_load_assignment(upstream(0, generation=k + 1), name)}
        )
        r = resources(clusters, changed)
        t = time.perf_counter()
        cur = Snapshot.from_resources(r, cur)
        cache.set_snapshot("default", cur)
        samples.append(time.perf_counter() - t)
    print(
        f"one endpoint change, control-plane time (from_resources + set_snapshot): "
        f"median {statistics.median(samples) * 1000:.2f} ms, max {max(samples) * 1000:.2f} ms "
        f"(target <= 5 ms)"
    )

    sent = await bytes_per_envoy(cur, clusters, clas)
    print(
        f"bytes sent per Envoy for one endpoint change: SotW {sent['sotw']} B, "
        f"delta {sent['delta']} B (both send only the changed ClusterLoadAssignment)"
    )

    initial, rss_before, rss_after, times = await fan_out(cache, cur, clas, clusters, args.streams)
    per = (rss_after - rss_before) / args.streams
    print(f"{args.streams} ADS streams (each CDS wildcard + EDS for all {n} names):")
    print(f"  initial sync of all streams: {initial:.1f} s")
    print(f"  server RSS {rss_before:.0f} MB -> {rss_after:.0f} MB: {per:.2f} MB per stream")
    print(
        f"  one endpoint change until all {args.streams} ACKed: "
        f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
