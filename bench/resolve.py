"""Resolve benchmark: a 10k-Service World, full and one-endpoint-change incremental.

Prints figures; asserts nothing about time. Run:
    PYTHONPATH=. .venv/bin/python bench/resolve.py [--services N] [--endpoints M]
        [--rounds R] [--full-repeat K] [--gc-freeze]

"cold full resolve" is the median CPU time (process_time) of K full resolves
of the same World with the collector paused, as ``Pipeline`` runs a build:
the first "full resolve" line (wall time, collector running) also counts
collections of the whole heap the build happens to trigger.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from bridge.model.frozen import FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sPod,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.settings import ResolveSettings
from bridge.resolve import resolve
from bridge.store import Store


def _slice(i: int, m: int, shift: int = 0) -> K8sEndpointSlice:
    return K8sEndpointSlice(
        namespace=f"ns{i % 50}",
        name=f"svc{i}-a",
        service_name=f"svc{i}",
        ports=(EndpointPort(port=8080, name="http"),),
        endpoints=tuple(
            SliceEndpoint(
                addresses=(f"10.{i // 256 % 256}.{i % 256}.{j + shift}",),
                target_pod=f"svc{i}-{j}",
            )
            for j in range(m)
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--full-repeat", type=int, default=5, help="cold full resolves to time")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() the built World")
    args = ap.parse_args()
    n, m = args.services, args.endpoints
    settings = ResolveSettings()

    store = Store()
    for i in range(n):
        ns = f"ns{i % 50}"
        ann = {"meshbridge.io/prefix": f"/svc{i}", "meshbridge.io/host": f"h{i % 100}.example.com"}
        store.upsert(
            "bench",
            K8sService(
                namespace=ns,
                name=f"svc{i}",
                ports=(ServicePort(port=80, name="http"),),
                annotations=FrozenDict(ann),
            ),
        )
        store.upsert("bench", _slice(i, m))
        for j in range(m):
            store.upsert("bench", K8sPod(namespace=ns, name=f"svc{i}-{j}"))
    world, _ = store.take()
    if args.gc_freeze:
        # A long-running server's World is old-generation data: keep the
        # collector from walking it on every change.
        gc.collect()
        gc.freeze()

    t0 = time.perf_counter()
    full = resolve(world, settings)
    t_full = time.perf_counter() - t0
    routes = sum(len(vh.routes) for vh in full.ir.virtual_hosts)
    eps = sum(len(u.endpoints) for u in full.ir.upstreams.values())
    print(
        f"world: {n} services, {eps} endpoints, {routes} routes, "
        f"{len(full.ir.virtual_hosts)} virtual hosts"
    )
    print(f"full resolve:                      {t_full * 1000:8.1f} ms")
    cold: list[float] = []
    for _ in range(args.full_repeat):
        gc.disable()
        c0 = time.process_time()
        again = resolve(world, settings)
        cold.append(time.process_time() - c0)
        gc.enable()
        del again
    if cold:
        med = statistics.median(cold)
        print(
            f"cold full resolve, collector paused: {med * 1000:6.1f} ms median CPU "
            f"({med / n * 1e6:.1f} µs per Service), min {min(cold) * 1000:.1f} ms "
            f"over {len(cold)}"
        )

    prev = full
    times: list[float] = []
    takes: list[float] = []
    cpu: list[float] = []
    frees: list[float] = []
    for r in range(args.rounds):
        i = (r * 7919) % n
        store.upsert("bench", _slice(i, m, shift=(r % 2) + 1))
        t0 = time.perf_counter()
        world, changed = store.take()
        takes.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        new = resolve(world, settings, prev, changed)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        # Dropping the previous result frees the previous World's maps (the
        # store copies its index maps per change); timed apart from resolve.
        t0 = time.perf_counter()
        prev = new
        del new
        frees.append(time.perf_counter() - t0)
    print(
        f"one endpoint change, incremental:  {statistics.median(times) * 1000:8.3f} ms median "
        f"wall, {statistics.median(cpu) * 1000:.3f} ms median CPU, "
        f"{max(times) * 1000:.3f} ms max wall over {args.rounds}"
    )
    print(f"  (store.take for it:              {statistics.median(takes) * 1000:8.3f} ms median)")
    print(f"  (freeing the previous World:     {statistics.median(frees) * 1000:8.3f} ms median)")
    assert prev.ir.virtual_hosts is full.ir.virtual_hosts

    times = []
    for r in range(10):
        i = (r * 104729) % n
        old = world.services[next(iter(k for k in world.services if k.name == f"svc{i}"))]
        ann = dict(old.annotations) | {"meshbridge.io/prefix": f"/moved{r}"}
        store.upsert(
            "bench",
            K8sService(
                namespace=old.namespace, name=old.name, ports=old.ports, annotations=FrozenDict(ann)
            ),
        )
        world, changed = store.take()
        t0 = time.perf_counter()
        new = resolve(world, settings, prev, changed)
        times.append(time.perf_counter() - t0)
        prev = new
        del new
    print(f"one route change, incremental:     {statistics.median(times) * 1000:8.3f} ms median")

    t0 = time.perf_counter()
    check = resolve(world, settings)
    t_full2 = time.perf_counter() - t0
    assert check == prev, "incremental result differs from a full resolve"
    print(f"full resolve again (check):        {t_full2 * 1000:8.1f} ms; incremental == full")


if __name__ == "__main__":
    main()
