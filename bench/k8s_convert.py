"""Kubernetes object conversion: µs per object for the shapes a cluster sends most.

Times :func:`bridge.sources.convert.parse_object` on the EndpointSlice (10
endpoints), Pod, Service and Namespace shapes of ``bench/k8s_sync.py``, each
decoded from JSON as the reflector does (fresh dicts, strings not shared), and
the memory the converted objects hold (tracemalloc) per object.

Usage (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/k8s_convert.py [--objects 20000] [--profile KIND]
        [--careful-only]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench.k8s_sync import make_slice
from bridge.sources import convert
from bridge.sources.convert import parse_object


def make_pod(i: int, e: int) -> dict[str, Any]:
    ns, svc = f"ns-{i % 100}", f"svc-{i}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": ns,
            "name": f"{svc}-{e}",
            "uid": f"0b6e3c8a-{i:04x}-{e:04x}-9c1d-5f0e8b2a7c41",
            "resourceVersion": str(100_000 + i * 10 + e),
            "labels": {"app": svc, "security.istio.io/tlsMode": "istio"},
            "annotations": {"kubectl.kubernetes.io/default-container": svc},
        },
        "spec": {
            "serviceAccountName": svc,
            "serviceAccount": svc,
            "nodeName": f"node-{e % 50}",
            "containers": [{"name": svc, "image": "registry.example/app:1.0"}],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{(i >> 8) & 255}.{i & 255}.{e + 1}",
            "podIPs": [{"ip": f"10.{(i >> 8) & 255}.{i & 255}.{e + 1}"}],
        },
    }


def make_service(i: int) -> dict[str, Any]:
    svc = f"svc-{i}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": f"ns-{i % 100}",
            "name": svc,
            "uid": f"5d2f1e9a-{i:04x}-4c3b-8a7d-1e2f3a4b5c6d",
            "annotations": {"meshbridge.io/prefix": f"/{svc}"},
        },
        "spec": {
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "selector": {"app": svc},
            "clusterIP": f"172.20.{(i >> 8) & 255}.{i & 255}",
            "type": "ClusterIP",
        },
    }


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "EndpointSlice": lambda i: make_slice(i, 10, 0),
    "Pod": lambda i: make_pod(i // 10, i % 10),
    "Service": make_service,
}


def decoded(kind: str, n: int) -> list[dict[str, Any]]:
    # Through JSON, as from the API server: every dict and string is fresh.
    make = SHAPES[kind]
    data: list[dict[str, Any]] = json.loads(json.dumps([make(i) for i in range(n)]))
    return data


def measure(kind: str, n: int) -> tuple[float, float]:
    """(µs per object, bytes held per converted object)."""
    best = float("inf")
    for _ in range(3):
        objs = decoded(kind, n)
        gc.collect()
        t0 = time.perf_counter()
        for d in objs:
            parse_object(d, "bench")
        best = min(best, time.perf_counter() - t0)
    # What the converted objects keep once the decoded JSON is gone (the
    # strings they share with it included), as in the adapter's store.
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    objs = decoded(kind, n)
    kept = [parse_object(d, "bench") for d in objs]
    del objs
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return best / n * 1e6, held / n


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--objects", type=int, default=20_000)
    p.add_argument("--profile", choices=sorted(SHAPES), help="print a cProfile of one kind")
    p.add_argument(
        "--careful-only",
        action="store_true",
        help="time the careful path alone (what every object cost before the fast paths)",
    )
    args = p.parse_args()
    if args.careful_only:
        convert._FAST.clear()
    if args.profile:
        objs = decoded(args.profile, args.objects)
        prof = cProfile.Profile()
        prof.enable()
        for d in objs:
            parse_object(d, "bench")
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
        return
    for kind in SHAPES:
        us, held = measure(kind, args.objects)
        print(f"{kind:14} {us:7.1f} µs/object   {held:7.0f} bytes held per converted object")


if __name__ == "__main__":
    main()
