"""Benchmark: IR → Envoy resources at 10k upstreams / 100k endpoints.

Prints, measured side by side in one run:

- full translation of a cold IR (no previous translation), and serializing
  every resource, beside the raw-protobuf floor: the same messages built by a
  minimal loop (no names module, no memo) and serialized;
- re-translation after one endpoint changed (the cost resolve's caller pays
  per change), with the IR's upstreams as resolve hands them over (a
  ShardedMap evolved from the previous one: found by ``changed_since``) and as
  a plain mapping (compared key by key), and after no change;
- peak RSS of the process.

Run from the repository root:

    .venv/bin/python bench/translate.py [--upstreams 10000] [--endpoints-per 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    Discovery,
    Endpoint,
    Ir,
    Listener,
    Route,
    Upstream,
    UpstreamKey,
    VirtualHost,
)
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.sharded import ShardedMap
from bridge.xds.resources import CLUSTER, ENDPOINT, Resources
from bridge.xds.translate import translate

HOSTS = 100
T = TypeVar("T")


def build_ir(n_upstreams: int, endpoints_per: int) -> Ir:
    upstreams: dict[UpstreamKey, Upstream] = {}
    routes_by_host: dict[str, list[Route]] = {}
    for i in range(n_upstreams):
        ns, svc = f"ns{i % 50}", f"svc{i}"
        key = UpstreamKey(ns, svc, "http")
        endpoints = tuple(
            Endpoint(f"10.{i // 256 % 256}.{i % 256}.{j + 1}", 8080, f"zone-{j % 3}")
            for j in range(endpoints_per)
        )
        upstreams[key] = Upstream(key, Discovery.EDS, endpoints=endpoints)
        host = f"h{i % HOSTS}.example.com"
        routes_by_host.setdefault(host, []).append(
            Route(host, f"/{svc}/", key, ObjectRef(Kind.SERVICE, ns, svc), timeout_ms=15_000)
        )
    vhosts = tuple(VirtualHost(h, tuple(routes_by_host[h])) for h in sorted(routes_by_host))
    return Ir(
        listeners=(Listener("http", 8080),),
        virtual_hosts=vhosts,
        upstreams=FrozenDict(upstreams),
    )


def serialize_all(resources: Resources) -> int:
    return sum(
        len(m.SerializeToString()) for msgs in resources.by_type.values() for m in msgs.values()
    )


def raw_floor(ir: Ir) -> list[Message]:
    """The same resources built by a minimal loop (kept, as a snapshot keeps them)."""
    out: list[Message] = []
    listener = listener_v3.Listener(name="http")
    listener.address.socket_address.address = "0.0.0.0"
    listener.address.socket_address.port_value = 8080
    hcm = hcm_v3.HttpConnectionManager(stat_prefix="http", merge_slashes=True)
    hcm.strip_any_host_port = True
    hcm.use_remote_address.value = True
    hcm.normalize_path.value = True
    hcm.rds.route_config_name = "http/routes"
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = 2
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_v3.Router())
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager"
    ).typed_config.Pack(hcm)
    out.append(listener)
    rc = route_v3.RouteConfiguration(name="http/routes")
    for vhost in ir.virtual_hosts:
        vh = rc.virtual_hosts.add(name=vhost.host, domains=[vhost.host])
        for r in vhost.routes:
            route = vh.routes.add(name=f"Service {r.source.namespace}/{r.source.name}")
            route.match.prefix = r.prefix
            route.route.cluster = f"{r.upstream.namespace}/{r.upstream.service}/{r.upstream.port}"
            route.route.timeout.seconds = r.timeout_ms // 1000
    out.append(rc)
    for key, up in ir.upstreams.items():
        name = f"{key.namespace}/{key.service}/{key.port}"
        cluster = cluster_v3.Cluster(name=name, type=cluster_v3.Cluster.EDS)
        cluster.connect_timeout.seconds = up.connect_timeout_ms // 1000
        cluster.eds_cluster_config.eds_config.ads.SetInParent()
        cluster.eds_cluster_config.eds_config.resource_api_version = 2
        cluster.eds_cluster_config.service_name = name
        out.append(cluster)
        cla = endpoint_v3.ClusterLoadAssignment(cluster_name=name)
        zones: dict[str, list[Endpoint]] = {}
        for e in up.endpoints:
            zones.setdefault(e.zone, []).append(e)
        for zone in sorted(zones):
            loc = cla.endpoints.add()
            loc.locality.zone = zone
            loc.load_balancing_weight.value = len(zones[zone])
            for e in zones[zone]:
                sa = loc.lb_endpoints.add().endpoint.address.socket_address
                sa.address = e.address
                sa.port_value = e.port
        out.append(cla)
    return out


def floor_build_and_serialize(ir: Ir) -> int:
    return sum(len(m.SerializeToString()) for m in raw_floor(ir))


def best_of(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best of ``repeat`` runs (the machine is shared: the minimum is the least disturbed)."""
    times: list[float] = []
    result: T | None = None
    for _ in range(repeat):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return min(times), result


def ours_once(ir: Ir) -> tuple[float, float, int]:
    """(translate seconds, translate + serialize seconds, bytes) for one cold build."""
    gc.collect()
    start = time.perf_counter()
    resources = translate(ir).resources
    translated = time.perf_counter()
    size = serialize_all(resources)
    return translated - start, time.perf_counter() - start, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstreams", type=int, default=10_000)
    parser.add_argument("--endpoints-per", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    ir = build_ir(args.upstreams, args.endpoints_per)
    n_endpoints = sum(len(u.endpoints) for u in ir.upstreams.values())
    print(
        f"IR: {len(ir.upstreams)} upstreams, {n_endpoints} endpoints, "
        f"{len(ir.virtual_hosts)} virtual hosts, 1 listener"
    )

    # Interleaved, so load from other processes hits both sides alike.
    floor_times: list[float] = []
    translate_times: list[float] = []
    our_times: list[float] = []
    floor_bytes = our_bytes = 0
    for _ in range(args.repeat):
        t_floor, floor_bytes = best_of(lambda: floor_build_and_serialize(ir), 1)
        floor_times.append(t_floor)
        t_translate, t_ours, our_bytes = ours_once(ir)
        translate_times.append(t_translate)
        our_times.append(t_ours)
    t_floor, ours = min(floor_times), min(our_times)
    print(
        f"raw protobuf floor (build + serialize): {t_floor * 1000:8.1f} ms  ({floor_bytes} bytes)"
    )
    print(f"translate (cold):                       {min(translate_times) * 1000:8.1f} ms")
    print(
        f"translate + serialize:                  {ours * 1000:8.1f} ms  ({our_bytes} bytes) "
        f"= {ours / t_floor:.2f}x floor"
    )

    # One endpoint changed: resolve hands over a new IR sharing every other object.
    key = next(iter(ir.upstreams))
    up = ir.upstreams[key]
    moved = dataclasses.replace(up, endpoints=(Endpoint("10.255.255.1", 8080), *up.endpoints[1:]))
    sharded = ShardedMap.of(ir.upstreams.items())
    sharded_ir = dataclasses.replace(ir, upstreams=sharded)
    ups = dict(ir.upstreams)
    ups[key] = moved
    for label, before, after in (
        ("sharded", sharded_ir, dataclasses.replace(ir, upstreams=sharded.evolve({key: moved}))),
        ("plain", ir, dataclasses.replace(ir, upstreams=FrozenDict(ups))),
    ):
        base = translate(before)
        t_change, changed = best_of(lambda: translate(after, base), max(args.repeat, 5))  # noqa: B023
        new = sum(
            1
            for t in (CLUSTER, ENDPOINT)
            for n, m in changed.resources.of(t).items()
            if base.resources.of(t).get(n) is not m
        )
        total = len(base.resources.of(CLUSTER)) + len(base.resources.of(ENDPOINT))
        print(
            f"re-translate, one endpoint changed ({label + '):':8s} {t_change * 1000:7.2f} ms  "
            f"({new} of {total} cluster/endpoint messages new)"
        )
    base = translate(ir)
    t_same, _ = best_of(lambda: translate(ir, base), max(args.repeat, 5))
    print(f"re-translate, nothing changed:          {t_same * 1000:8.3f} ms")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS:                               {peak_mb:8.0f} MB")


if __name__ == "__main__":
    main()
