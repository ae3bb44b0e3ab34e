"""Benchmark: what the admin pages cost on a large world.

Builds N exposed Services (one EndpointSlice of M ready endpoints each)
through a real Bridge's store and pipeline (no servers started), then times
rendering ``/debug`` (plain and with a ``?q=`` search), every form of
``/debug/snapshot.json`` (the default names-only form, each ``?type=``, a
``?name=`` search; rendered, then again from the per-snapshot cache) and
``/metrics``, and prints their sizes. ``/debug`` and ``/metrics`` render on
the event loop that also serves xDS, so that is how long a page view or a
scrape holds it; snapshot.json renders in a worker thread.

Run from the repository root:

    .venv/bin/python bench/admin_pages.py [--services 10000] [--endpoints-per 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge import debug
from bridge.app import Bridge
from bridge.config import load_config
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sNamespace,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.store import Store

SOURCE = "bench"


def fill(store: Store, services: int, per: int) -> None:
    for n in range(min(services, 50)):
        store.upsert(SOURCE, K8sNamespace(name=f"ns{n}"))
    for i in range(services):
        ns = f"ns{i % 50}"
        store.upsert(
            SOURCE,
            K8sService(
                namespace=ns,
                name=f"svc{i}",
                ports=(ServicePort(port=80, name="http", target_port=8080),),
                annotations=FrozenDict({"meshbridge.io/prefix": f"/svc{i}/"}),
            ),
        )
        store.upsert(
            SOURCE,
            K8sEndpointSlice(
                namespace=ns,
                name=f"svc{i}-a",
                service_name=f"svc{i}",
                ports=(EndpointPort(port=8080, name="http"),),
                endpoints=tuple(
                    SliceEndpoint(addresses=(f"10.{(i >> 8) & 255}.{i & 255}.{j + 1}",))
                    for j in range(per)
                ),
            ),
        )
    store.mark_synced(SOURCE)


def best(fn: Callable[[], bytes], repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - t0)
    return min(times) * 1000, size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints-per", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    app = Bridge(load_config(None, env={}), lambda s: [], admin_address="")
    fill(app.store, args.services, args.endpoints_per)
    t0 = time.perf_counter()
    assert app.pipeline.build_once(), app.pipeline.last_error
    print(f"world: {args.services} Services x {args.endpoints_per} endpoints")
    print(f"first build: {(time.perf_counter() - t0) * 1000:.0f} ms")
    last = f"svc{args.services - 1}"
    pages: list[tuple[str, Callable[[], bytes]]] = [
        ("/debug", lambda: debug.page(app)),
        (f"/debug?q={last}", lambda: debug.page(app, query=last)),
        ("/metrics", app.metrics.render),
    ]
    for name, fn in pages:
        ms, size = best(fn, args.repeat)
        print(f"{name:42} {ms:9.1f} ms  {size / 1024:9.0f} KiB")
    print("/debug/snapshot.json forms: rendered, then from the cache")
    cache = debug.SnapshotJson()
    queries = [debug.SnapshotQuery()]
    queries += [debug.SnapshotQuery(type=t) for t in debug.TYPE_PARAMS]
    queries += [debug.SnapshotQuery(name=f"/{last}/"), debug.SnapshotQuery(name="svc1234")]
    for q in queries:
        ms, size = best(lambda q=q: debug.snapshot_json(app, q), args.repeat)  # type: ignore[misc]
        cache.render(app, q)
        cached, _ = best(lambda q=q: cache.render(app, q), 3)  # type: ignore[misc]
        print(f"{q.link():42} {ms:9.1f} ms  {size / 1024:9.0f} KiB  cached {cached:7.3f} ms")


if __name__ == "__main__":
    main()
