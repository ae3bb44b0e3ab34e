"""Catalog sync cost: HTTP requests to Consul for 1,000 Services x 10 endpoints.

Runs meshbridge's Kubernetes → Consul syncer against the Consul stand-in
(tests/standins/consul_agent.py) over a real socket and counts the requests
the stand-in receives:

- the initial sync (empty Consul → 10,000 registrations);
- one change (one endpoint turns not-ready);
- steady state: the World is handed over again and again with nothing
  changed (writes must stay 0), and the drift watches' blocking queries
  (our node's services, and its checks' status) are measured over a short
  window with a short wait, then scaled to the real wait (300 s) for
  requests per hour;

beside consul-k8s's scheme computed for the same world (one PUT per
instance at start and every 30 s). Prints figures; asserts nothing.

    PYTHONPATH=. .venv/bin/python bench/consul_sync.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.consul.client import ConsulClient
from adapters.consul.settings import ConsulClientSettings
from adapters.consul.sync import CatalogSyncSettings, ToConsulSyncer
from bridge.store import Store
from tests.consul.worlds import SOURCE, endpoints, fill
from tests.standins.consul_agent import ConsulAgent

SERVICES = 1000
PER_SERVICE = 10
REAL_WAIT_S = 300.0  # the syncer's default blocking wait (Consul's default 5 min)
SHORT_WAIT_S = 0.5  # the wait used while measuring steady state
WINDOW_S = 5.0
K8S_INTERVAL_S = 30.0  # consul-k8s's consul-write-interval


async def main() -> None:
    store = Store()
    fill(store, SERVICES, PER_SERVICE)
    instances = SERVICES * PER_SERVICE
    sync_settings = CatalogSyncSettings(debounce_s=0.2)
    async with ConsulAgent(jitter=lambda w: 0.0) as agent:
        settings = ConsulClientSettings(
            host="127.0.0.1", port=agent.port, wait_s=REAL_WAIT_S, min_interval_s=0.2
        )
        async with ConsulClient(settings) as client:
            syncer = ToConsulSyncer(client, sync_settings)
            task = asyncio.create_task(syncer.run())
            try:
                # Initial sync.
                t0 = time.perf_counter()
                n0 = len(agent.requests)
                syncer.update(store.take()[0], kubernetes_synced=True)
                await syncer.wait_idle()
                initial_s = time.perf_counter() - t0
                initial = agent.requests[n0:]
                initial_txn = [r for r in initial if r.path == "/v1/txn"]
                assert len(agent.services_on("k8s-sync")) == instances

                # One change.
                n1 = len(agent.requests)
                ips = [f"10.0.7.{j + 1}" for j in range(PER_SERVICE)]
                store.upsert(SOURCE, endpoints("svc-0007", ips, not_ready=frozenset({ips[0]})))
                t1 = time.perf_counter()
                syncer.update(store.take()[0], kubernetes_synced=True)
                await syncer.wait_idle()
                change_s = time.perf_counter() - t1
                await asyncio.sleep(0.5)  # let the drift watch answer to our own write
                change = agent.requests[n1:]

                # Steady state writes: many unchanged Worlds.
                n2 = len(agent.requests)
                for _ in range(20):
                    syncer.update(store.take()[0], kubernetes_synced=True)
                    await syncer.wait_idle()
                steady_writes = [r for r in agent.requests[n2:] if r.method == "PUT"]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        # Steady state reads: the same loop with a short wait, over a window.
        short = dataclasses.replace(settings, wait_s=SHORT_WAIT_S)
        async with ConsulClient(short) as client:
            syncer = ToConsulSyncer(client, sync_settings)
            task = asyncio.create_task(syncer.run())
            try:
                syncer.update(store.take()[0], kubernetes_synced=True)
                await syncer.wait_idle()
                await asyncio.sleep(SHORT_WAIT_S * 2)  # past the restart's first answers
                n3 = len(agent.requests)
                await asyncio.sleep(WINDOW_S)
                window = agent.requests[n3:]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # Steady state is only the drift watches' blocking reads, each returning when
    # its wait ends: one request per wait per watch. (Measured with a short wait;
    # an answer listing 10,000 instances takes the stand-in longer than 0.5 s, so
    # the window holds fewer than one per wait: the count is checked, not scaled.)
    watches = sorted({r.path for r in window if r.method == "GET"})
    per_watch = {p: sum(1 for r in window if r.path == p) for p in watches}
    window_puts = sum(1 for r in window if r.method == "PUT")
    others = len(window) - sum(per_watch.values())
    per_hour = len(watches) * 3600 / REAL_WAIT_S

    k8s_initial = instances
    k8s_per_hour = instances * 3600 / K8S_INTERVAL_S

    print(f"world: {SERVICES} Services x {PER_SERVICE} endpoints = {instances} instances")
    print()
    print("meshbridge (change-driven, /v1/txn batches of <= 128 operations)")
    print(
        f"  initial sync:    {len(initial)} requests "
        f"({len(initial) - len(initial_txn)} reads, {len(initial_txn)} txn PUTs of "
        f"{sum(r.ops for r in initial_txn)} operations; "
        f"ceil({2 * instances + 1}/128) = {math.ceil((2 * instances + 1) / 128)}) "
        f"in {initial_s:.2f} s"
    )
    print(
        f"  one change:      {len(change)} requests "
        f"({sum(1 for r in change if r.method == 'PUT')} txn PUT, "
        f"{sum(1 for r in change if r.method == 'GET')} blocking-read answers) "
        f"in {change_s * 1000:.0f} ms"
    )
    print(f"  steady state:    {len(steady_writes)} writes over 20 unchanged Worlds")
    print(
        f"                   {len(window)} requests in {WINDOW_S:.0f} s at wait={SHORT_WAIT_S}s: "
        + ", ".join(f"{n} x {p}" for p, n in per_watch.items())
        + f"; {window_puts} PUTs, {others} other"
    )
    print(
        f"                   -> {len(watches)} blocking reads per {REAL_WAIT_S:.0f} s wait = "
        f"{per_hour:.0f} requests/hour, 0 writes"
    )
    print()
    print("consul-k8s scheme (one PUT /v1/catalog/register per instance, every 30 s)")
    print(f"  initial sync:    {k8s_initial} PUTs")
    print(f"  one change:      waits up to 30 s, then {instances} PUTs (the next full tick)")
    print(f"  steady state:    {k8s_per_hour:,.0f} PUTs/hour")


if __name__ == "__main__":
    asyncio.run(main())
