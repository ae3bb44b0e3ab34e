"""Kubernetes adapter at scale: initial sync time, RSS, sustained watch events/s.

Runs the API stand-in (tests/standins/kube_api.py) in a child process holding
a world of N Services, each with one EndpointSlice of E endpoints (and one Pod
per endpoint unless --no-pods), then measures in this process:

- time from start to every reflector having listed (the store's initial-sync
  signal), and this process's RSS before and after;
- EndpointSlice updates/s sustained: the child applies U updates as fast as it
  can while the adapter follows the watch; the rate is U over the time until
  the store holds the last update.

Usage (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/k8s_sync.py [--services 10000] [--endpoints 10]
        [--updates 20000] [--no-pods]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

from adapters.kubernetes.client import api_client_for
from adapters.kubernetes.source import KubernetesSource, KubernetesSourceSettings
from bridge.model.k8s import Kind, ObjectRef
from bridge.store import Store


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ns_of(i: int) -> str:
    return f"ns-{i % 100}"


def make_slice(i: int, eps: int, gen: int) -> dict[str, Any]:
    ns, svc = ns_of(i), f"svc-{i}"
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": ns,
            "name": f"{svc}-abcde",
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [f"10.{(i >> 8) & 255}.{i & 255}.{(e + gen) % 250 + 1}"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{svc}-{e}"},
                "nodeName": f"node-{e % 50}",
                "zone": "zone-a",
            }
            for e in range(eps)
        ],
    }


def serve(args: argparse.Namespace) -> None:
    """Child: populate the stand-in, print its URL, then run commands from stdin."""
    from tests.standins.kube_api import KubeApiServer

    srv = KubeApiServer(event_window=max(50_000, args.updates * 2), bookmark_interval=5.0).start()
    for n in range(100):
        srv.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": f"ns-{n}",
                    "labels": {"istio-injection": "enabled"} if n % 2 else {},
                },
            }
        )
    for i in range(args.services):
        ns, svc = ns_of(i), f"svc-{i}"
        srv.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "namespace": ns,
                    "name": svc,
                    "annotations": {"meshbridge.io/prefix": f"/{svc}"},
                },
                "spec": {
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    "selector": {"app": svc},
                    "clusterIP": f"172.20.{(i >> 8) & 255}.{i & 255}",
                },
            }
        )
        srv.apply(make_slice(i, args.endpoints, 0))
        if args.pods:
            for e in range(args.endpoints):
                srv.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "namespace": ns,
                            "name": f"{svc}-{e}",
                            "labels": {"app": svc, "security.istio.io/tlsMode": "istio"},
                        },
                        "spec": {"serviceAccountName": svc, "nodeName": f"node-{e % 50}"},
                        "status": {"podIPs": [{"ip": f"10.{(i >> 8) & 255}.{i & 255}.{e + 1}"}]},
                    }
                )
    print(json.dumps({"url": srv.url}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "burst":
            n = int(cmd[1])
            t0 = time.perf_counter()
            for u in range(n):
                i = (u * 7919) % args.services
                srv.apply(make_slice(i, args.endpoints, u + 1))
            print(json.dumps({"applied": n, "seconds": time.perf_counter() - t0}), flush=True)
        elif cmd and cmd[0] == "backlog":
            # Queue N updates behind held watches; "release" lets the client drain them.
            n = int(cmd[1])
            srv.hold_watches()
            for u in range(n):
                i = (u * 7919) % args.services
                srv.apply(make_slice(i, args.endpoints, 10_000_000 + u))
            print(json.dumps({"queued": n}), flush=True)
        elif cmd and cmd[0] == "release":
            srv.release_watches()
        elif cmd and cmd[0] == "quit":
            break
    srv.stop()


async def until(cond: Any) -> None:
    """Poll ``cond`` (a benchmark reads progress counters; nothing to wait on)."""
    while not cond():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def measure(args: argparse.Namespace) -> None:
    t_spawn = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        *sys.argv[1:],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdin is not None and child.stdout is not None

    async def ask(cmd: str, answer: bool = True) -> Any:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(cmd.encode() + b"\n")
        await child.stdin.drain()
        return json.loads(await child.stdout.readline()) if answer else None

    try:
        url = json.loads(await child.stdout.readline())["url"]
        pods = f", {args.services * args.endpoints} Pods" if args.pods else ""
        print(
            f"world: {args.services} Services, {args.services * args.endpoints} endpoints{pods}, "
            f"100 Namespaces (stand-in populated in {time.perf_counter() - t_spawn:.1f}s)"
        )
        rss0 = rss_mb()
        store = Store()
        api = api_client_for(url)
        settings = KubernetesSourceSettings(watch_pods=args.pods)
        src = KubernetesSource(store, settings, api_client=api)
        t0 = time.perf_counter()
        await src.start()
        await src.wait_synced()
        t_sync = time.perf_counter() - t0
        world, _ = store.take()
        n_eps = sum(len(s.endpoints) for s in world.endpoint_slices.values())
        print(
            f"initial sync: {t_sync:.2f}s to list {len(world.services)} Services, "
            f"{len(world.endpoint_slices)} EndpointSlices ({n_eps} endpoints), "
            f"{len(world.pods)} Pods"
        )
        del world  # a held World would keep every replaced object alive
        print(
            f"RSS: {rss0:.0f} MB before, {rss_mb():.0f} MB after sync (peak {peak_rss_mb():.0f} MB)"
        )

        stats = src.stats("kubernetes:EndpointSlice")
        u = args.updates - 1
        i = (u * 7919) % args.services
        ref = ObjectRef(Kind.ENDPOINT_SLICE, ns_of(i), f"svc-{i}-abcde")

        def final(gen: int) -> Any:
            want = make_slice(i, args.endpoints, gen)["endpoints"][0]["addresses"][0]
            return lambda: store.take()[0].endpoint_slices[ref].endpoints[0].addresses[0] == want

        # 1. Updates generated live: bounded by whichever side is slower.
        ev0 = stats.events
        t1 = time.perf_counter()
        gen_task = asyncio.create_task(ask(f"burst {args.updates}"))
        await until(lambda: stats.events - ev0 >= args.updates)
        await until(final(u + 1))
        t_events = time.perf_counter() - t1
        gen = await gen_task
        print(
            f"live updates: {args.updates} EndpointSlice updates in {t_events:.2f}s = "
            f"{args.updates / t_events:,.0f} events/s into the store (the stand-in generated "
            f"{args.updates / gen['seconds']:,.0f}/s on the same 2 cores)"
        )

        # 2. The adapter's own ceiling: drain a backlog queued behind held watches.
        await ask(f"backlog {args.updates}")
        ev0, batches0 = stats.events, src.batches_applied
        t2 = time.perf_counter()
        await ask("release", answer=False)
        await until(lambda: stats.events - ev0 >= args.updates)
        await until(final(10_000_000 + u))
        t_drain = time.perf_counter() - t2
        print(
            f"backlog drain: {args.updates} queued updates in {t_drain:.2f}s = "
            f"{args.updates / t_drain:,.0f} events/s into the store "
            f"({src.batches_applied - batches0} batches on the loop)"
        )
        print(f"RSS after updates: {rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)")
        await src.stop()
        api.close()
    finally:
        if child.returncode is None:
            child.stdin.write(b"quit\n")
            await child.stdin.drain()
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--no-pods", dest="pods", action="store_false")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args)
    else:
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
