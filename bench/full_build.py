"""Full build of a 10k-Service, 100k-endpoint World beside the raw protobuf floor,
then one endpoint changed: control-plane time and bytes sent per Envoy.

Run from the repository root:

    .venv/bin/python bench/full_build.py [--services 10000] [--endpoints-per 10]
        [--repeat 2] [--trials 50]

The World is made through the real Store with the model's objects
(bench/common.py: N Services exposed by annotations, one EndpointSlice each
with M endpoints over three zones, one Pod per endpoint, 50 Namespaces).

Each side runs in its own child process, so one side's memory cannot count
against the other's; the sides are interleaved ``--repeat`` times and the
fastest run of each is kept (the machine is shared):

- **meshbridge**: ``Pipeline.build_once`` as ``serve`` runs it for its first
  snapshot: ``resolve`` → ``translate`` → ``Snapshot.from_resources``
  (serialize, hash, Any-encode, reference check) → ``set_snapshot``
  (consistency check), with the cyclic collector paused as the pipeline
  pauses it (its first pass over the new objects, as it is re-enabled, is
  part of the time);
- **floor**: the same resources made from the same World by a minimal loop
  (direct protobuf construction, ``SerializeToString``, the bytes kept as a
  snapshot keeps them), no meshbridge code, once with the collector on and
  once paused; the ratio is to the faster of the two. Both sides' bytes are
  compared (a digest over every resource) so the floor builds exactly what
  we build.

Peak RSS (VmHWM) of each child is printed with the RSS of the World alone.

A third child measures one endpoint changed, through the real pipeline:
``Store.upsert`` of one EndpointSlice, then ``Pipeline.build_once`` (take →
incremental resolve → incremental translate → ``from_resources`` →
``set_snapshot``), ``--trials`` times; then the bytes an ADS server sends one
state-of-the-world and one delta client (each subscribed to every cluster
and endpoint) for such a change.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from bench.common import changed_slice, fill_store, peak_rss_mb, rss_mb
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.pipeline import Pipeline, SnapshotPublisher
from bridge.server.ads import AdsServer
from bridge.server.cache import SnapshotCache
from bridge.server.listen import XdsServer
from bridge.store import Store
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

Built = list[tuple[str, str, bytes]]  # (type URL, name, serialized message)


def make_world(services: int, per: int) -> tuple[Store, World]:
    store = Store()
    fill_store(store, services, per)
    world, _ = store.take()
    return store, world


def digest(items: Iterable[tuple[str, str, bytes]]) -> str:
    h = hashlib.sha256()
    for type_url, name, value in sorted(items):
        h.update(f"{type_url}\0{name}\0{len(value)}\0".encode())
        h.update(value)
    return h.hexdigest()[:16]


# -- the floor: minimal code, no meshbridge layers ----------------------------


def floor_build(world: World) -> Built:
    """What meshbridge serves for this World, by the shortest loop that makes it."""
    out: Built = []
    slices: dict[tuple[str, str], list[Any]] = {}
    for s in world.endpoint_slices.values():
        slices.setdefault((s.namespace, s.service_name), []).append(s)
    routes: dict[str, list[tuple[str, str, str]]] = {}
    for svc in world.services.values():
        prefix = svc.annotations.get("meshbridge.io/prefix")
        if prefix is None:
            continue
        port = svc.ports[0]
        name = f"{svc.namespace}/{svc.name}/{port.name}"
        routes.setdefault(svc.annotations.get("meshbridge.io/host", "*"), []).append(
            (prefix, name, f"Service {svc.namespace}/{svc.name}")
        )
        cluster = cluster_v3.Cluster(name=name, type=cluster_v3.Cluster.EDS)
        cluster.connect_timeout.seconds = 5
        eds = cluster.eds_cluster_config
        eds.eds_config.ads.SetInParent()
        eds.eds_config.resource_api_version = 2  # V3
        eds.service_name = name
        out.append((CLUSTER, name, cluster.SerializeToString()))
        endpoints = set()
        for s in slices.get((svc.namespace, svc.name), ()):
            number = next(p.port for p in s.ports if p.name == port.name)
            for e in s.endpoints:
                if e.ready and not e.terminating:
                    endpoints.add((e.addresses[0], number, e.zone or ""))
        zones: dict[str, list[tuple[str, int, str]]] = {}
        for e in sorted(endpoints):
            zones.setdefault(e[2], []).append(e)
        cla = endpoint_v3.ClusterLoadAssignment(cluster_name=name)
        for zone in sorted(zones):
            locality = cla.endpoints.add()
            locality.locality.zone = zone
            locality.load_balancing_weight.value = len(zones[zone])
            for address, number, _ in zones[zone]:
                socket = locality.lb_endpoints.add().endpoint.address.socket_address
                socket.address = address
                socket.port_value = number
        out.append((ENDPOINT, name, cla.SerializeToString()))

    config = route_v3.RouteConfiguration(name="http/routes")
    for host in sorted(routes, key=lambda h: (h == "*", h)):
        vhost = config.virtual_hosts.add(name=host, domains=[host])
        for prefix, cluster_name, route_name in sorted(
            routes[host], key=lambda r: (-len(r[0]), r[0])
        ):
            route = vhost.routes.add(name=route_name)
            route.match.prefix = prefix
            route.route.cluster = cluster_name
            route.route.timeout.seconds = 15
    out.append((ROUTE, config.name, config.SerializeToString()))

    hcm = hcm_v3.HttpConnectionManager(stat_prefix="http", merge_slashes=True)
    hcm.strip_any_host_port = True
    hcm.use_remote_address.value = True
    hcm.normalize_path.value = True
    hcm.rds.route_config_name = "http/routes"
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = 2
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_v3.Router())
    listener = listener_v3.Listener(name="http")
    listener.address.socket_address.address = "0.0.0.0"
    listener.address.socket_address.port_value = 8080
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager"
    ).typed_config.Pack(hcm)
    out.append((LISTENER, listener.name, listener.SerializeToString()))
    return out


# -- the children ---------------------------------------------------------------


def child_floor(args: argparse.Namespace) -> dict[str, Any]:
    _, world = make_world(args.services, args.endpoints_per)
    gc.collect()
    world_rss = rss_mb()
    # The floor as plain code runs it (collector on), and with the collector
    # paused as meshbridge's build runs: the ratio is taken against the faster.
    if args.side == "floor-paused":
        gc.disable()
    t0 = time.perf_counter()
    built = floor_build(world)
    total = time.perf_counter() - t0
    gc.enable()
    return {
        "total_s": total,
        "peak_mb": peak_rss_mb(),
        "world_mb": world_rss,
        "resources": len(built),
        "bytes": sum(len(v) for _, _, v in built),
        "digest": digest(built),
    }


def child_meshbridge(args: argparse.Namespace) -> dict[str, Any]:
    """One full build through ``Pipeline.build_once``, as ``serve`` makes its first snapshot."""
    store, _ = make_world(args.services, args.endpoints_per)
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    pipeline = Pipeline(store, ResolveSettings(), publisher)
    gc.collect()
    world_rss = rss_mb()
    t0 = time.perf_counter()
    assert pipeline.build_once(), pipeline.last_error
    total = time.perf_counter() - t0
    stats = pipeline.builds[-1]
    peak = peak_rss_mb()
    snapshot = publisher.snapshot
    assert snapshot is not None
    built = [
        (t, name, e.message.SerializeToString())
        for t, ts in snapshot.types.items()
        for name, e in ts.entries.items()
    ]
    return {
        "resolve_s": stats.resolve_ms / 1000,
        "translate_s": stats.translate_ms / 1000,
        "snapshot_s": stats.publish_ms / 1000,
        "total_s": total,
        # take, the collector's first pass over what the build made (it runs
        # as the build re-enables it), bookkeeping
        "other_s": total - stats.total_ms / 1000,
        "peak_mb": peak,
        "world_mb": world_rss,
        "resources": len(built),
        "bytes": sum(len(v) for _, _, v in built),
        "digest": digest(built),
    }


def child_change(args: argparse.Namespace) -> dict[str, Any]:
    store, _ = make_world(args.services, args.endpoints_per)
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    pipeline = Pipeline(store, ResolveSettings(), publisher)
    assert pipeline.build_once()
    gc.collect()
    totals: list[float] = []
    stages: dict[str, list[float]] = {
        "upsert": [],
        "take": [],
        "resolve": [],
        "translate": [],
        "publish": [],
    }
    for r in range(args.trials):
        i = (r * 7919) % args.services
        changed = changed_slice(i, args.endpoints_per, r)
        t0 = time.perf_counter()
        store.upsert("bench", changed)
        t1 = time.perf_counter()
        ok = pipeline.build_once()
        t2 = time.perf_counter()
        totals.append(t2 - t0)
        assert ok, pipeline.last_error
        stats = pipeline.builds[-1]
        stages["upsert"].append((t1 - t0) * 1000)
        # take, releasing the previous build's results, bookkeeping
        stages["take"].append((t2 - t1) * 1000 - stats.total_ms)
        stages["resolve"].append(stats.resolve_ms)
        stages["translate"].append(stats.translate_ms)
        stages["publish"].append(stats.publish_ms)
        snap = publisher.snapshot
        assert snap is not None and snap.changed.keys() == {ENDPOINT}, snap and snap.changed
    sent = asyncio.run(bytes_per_envoy(store, pipeline, cache, args))
    return {
        "median_ms": statistics.median(totals) * 1000,
        "p95_ms": statistics.quantiles(totals, n=20)[-1] * 1000,
        "max_ms": max(totals) * 1000,
        "stages_median_ms": {k: statistics.median(v) for k, v in stages.items()},
        "bytes": sent,
    }


async def bytes_per_envoy(
    store: Store, pipeline: Pipeline, cache: SnapshotCache, args: argparse.Namespace
) -> dict[str, int]:
    """Bytes sent to one SotW and one delta client (CDS + EDS for everything) for one change."""
    ads = AdsServer(cache)
    server = XdsServer(ads, "127.0.0.1:0")
    await server.start()
    snap = cache.snapshot("default")
    assert snap is not None
    names = list(snap.entries(ENDPOINT))
    opts = [("grpc.max_receive_message_length", 1 << 28)]
    try:
        async with grpc.aio.insecure_channel(server.target, options=opts) as channel:
            stub = ads_grpc.AggregatedDiscoveryServiceStub(channel)
            sotw = stub.StreamAggregatedResources()
            await sotw.write(
                discovery_v3.DiscoveryRequest(node=base_v3.Node(id="sotw"), type_url=CLUSTER)
            )
            r = await sotw.read()
            await sotw.write(
                discovery_v3.DiscoveryRequest(
                    type_url=CLUSTER, version_info=r.version_info, response_nonce=r.nonce
                )
            )
            await sotw.write(discovery_v3.DiscoveryRequest(type_url=ENDPOINT, resource_names=names))
            r = await sotw.read()
            await sotw.write(
                discovery_v3.DiscoveryRequest(
                    type_url=ENDPOINT,
                    resource_names=names,
                    version_info=r.version_info,
                    response_nonce=r.nonce,
                )
            )
            delta = stub.DeltaAggregatedResources()
            await delta.write(
                discovery_v3.DeltaDiscoveryRequest(node=base_v3.Node(id="delta"), type_url=CLUSTER)
            )
            r = await delta.read()
            await delta.write(
                discovery_v3.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce)
            )
            await delta.write(
                discovery_v3.DeltaDiscoveryRequest(
                    type_url=ENDPOINT, resource_names_subscribe=names
                )
            )
            r = await delta.read()
            await delta.write(
                discovery_v3.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r.nonce)
            )
            before = {s.node_id: s.bytes_sent for s in ads.status()}
            store.upsert("bench", changed_slice(1, args.endpoints_per, 999))
            assert pipeline.build_once(), pipeline.last_error
            rs = await sotw.read()
            rd = await delta.read()
            assert len(rs.resources) == 1 and len(rd.resources) == 1, "more than the change sent"
            after = {s.node_id: s.bytes_sent for s in ads.status()}
            sotw.cancel()
            delta.cancel()
    finally:
        await server.stop(0)
    return {mode: after[mode] - before[mode] for mode in ("sotw", "delta")}


CHILDREN = {
    "floor": child_floor,
    "floor-paused": child_floor,
    "meshbridge": child_meshbridge,
    "change": child_change,
}


def run_child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--services",
        str(args.services),
        "--endpoints-per",
        str(args.endpoints_per),
        "--trials",
        str(args.trials),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{proc.stdout}{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints-per", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--side", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(CHILDREN[args.side](args)))
        return

    print(
        f"world: {args.services} Services x {args.endpoints_per} endpoints "
        f"(+ {args.services * args.endpoints_per} Pods), through the Store"
    )
    floors: list[dict[str, Any]] = []
    paused: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for _ in range(args.repeat):  # interleaved: load from others hits all sides alike
        floors.append(run_child("floor", args))
        paused.append(run_child("floor-paused", args))
        ours.append(run_child("meshbridge", args))
    floor_on = min(floors, key=lambda r: r["total_s"])
    floor_off = min(paused, key=lambda r: r["total_s"])
    floor = min(floor_on, floor_off, key=lambda r: r["total_s"])
    best = min(ours, key=lambda r: r["total_s"])
    same = floor["digest"] == best["digest"] and floor["bytes"] == best["bytes"]
    print(
        f"raw protobuf floor (build + serialize):   {floor_on['total_s'] * 1000:8.0f} ms  "
        f"({floor['resources']} resources, {floor['bytes']} bytes)"
    )
    print(f"  the same, collector paused:             {floor_off['total_s'] * 1000:8.0f} ms")
    print(
        f"meshbridge full build (Pipeline.build_once): {best['total_s'] * 1000:5.0f} ms  "
        f"= {best['total_s'] / floor['total_s']:.2f}x the faster floor (target <= 2x)"
    )
    print(
        f"  resolve {best['resolve_s'] * 1000:.0f} ms, translate {best['translate_s'] * 1000:.0f} "
        f"ms, snapshot (serialize + hash + refs + check) {best['snapshot_s'] * 1000:.0f} ms, "
        f"other (take, the collector's pass as it is re-enabled) {best['other_s'] * 1000:.0f} ms"
    )
    print(
        f"  same bytes as the floor: {'yes' if same else 'NO'} "
        f"(digest {best['digest']} vs {floor['digest']})"
    )
    print(
        f"  all runs (ms): floor {[round(r['total_s'] * 1000) for r in floors]}, "
        f"floor paused {[round(r['total_s'] * 1000) for r in paused]}, "
        f"meshbridge {[round(r['total_s'] * 1000) for r in ours]}"
    )
    print(
        f"peak RSS, meshbridge side: {max(r['peak_mb'] for r in ours):.0f} MB (target <= 400 MB; "
        f"the World alone {best['world_mb']:.0f} MB); floor side: "
        f"{max(r['peak_mb'] for r in floors):.0f} MB"
    )

    change = run_child("change", args)
    st = change["stages_median_ms"]
    print(
        f"one endpoint changed (Store.upsert -> take -> resolve -> translate -> from_resources "
        f"-> set_snapshot), {args.trials} trials: median {change['median_ms']:.2f} ms, "
        f"p95 {change['p95_ms']:.2f} ms, max {change['max_ms']:.2f} ms (target <= 5 ms)"
    )
    print(
        f"  stage medians: upsert {st['upsert']:.2f} ms, take + release + bookkeeping "
        f"{st['take']:.2f} ms, resolve {st['resolve']:.2f} ms, translate "
        f"{st['translate']:.2f} ms, snapshot + set {st['publish']:.2f} ms"
    )
    b = change["bytes"]
    print(
        f"bytes sent per Envoy for that change: SotW {b['sotw']} B, delta {b['delta']} B "
        "(each only the changed ClusterLoadAssignment)"
    )


if __name__ == "__main__":
    main()
