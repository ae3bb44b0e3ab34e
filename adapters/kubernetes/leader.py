"""Leader election on a ``coordination.k8s.io/v1`` Lease, for writers (catalog sync).

:class:`LeaseElector` is a :class:`bridge.leader.LeaderGate`: ``is_leader``
is true only while this replica holds the Lease and has renewed it recently
enough that no other replica can have taken it over.

The algorithm is client-go's: read the Lease; take it when it is free, ours,
or its holder has not renewed for its ``leaseDurationSeconds`` *as observed
by our own monotonic clock* (so clock skew between nodes does not matter);
write with the read resourceVersion, so two replicas racing get one success
and one ``409 Conflict``. The leader renews every ``retry_period_s``.

Why a replica that cannot renew stops writing before another can lead:
``is_leader`` is computed from the clock on every read as "a renew that was
*sent* less than ``renew_deadline_s`` ago succeeded". The server stored that
renew after it was sent, and any other replica waits a full
``lease_duration_s`` after it *observes* the last change before taking
over; since ``renew_deadline_s < lease_duration_s``, our flag is false first,
even if the renew loop itself is stuck in a hung request.

On shutdown the holder clears ``holderIdentity`` so another replica can take
over at once instead of waiting out the lease.

The clock is injectable (monotonic seconds). Blocking client calls run in
worker threads with timeouts shorter than the retry period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client

from adapters.kubernetes.client import Conflict, NotFound, call, read_json
from bridge.config import Config
from bridge.errors import SourceError

log = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


CATALOG_SYNC_LEASE = "meshbridge-catalog-sync"
EVENTS_LEASE = "meshbridge-events"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    namespace: str
    name: str = CATALOG_SYNC_LEASE
    identity: str = field(default_factory=default_identity)
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "lease timings must satisfy retry_period < renew_deadline < lease_duration"
            )


def lease_settings_for(config: Config, identity: str = "") -> LeaseSettings:
    """The Lease ``serve`` elects its one writer on, in the gateway's namespace.

    With catalog sync on: ``meshbridge-catalog-sync`` (its leader also writes
    the Events). Without: ``meshbridge-events``, for the Events alone — a
    different name, so the one-shot ``sync-catalog`` (which refuses to write
    while a live replica holds the catalog-sync Lease) is not held off by
    replicas that never sync. Identity defaults to host and pid.
    """
    sync = config.catalog_sync
    on = sync.to_consul.enabled or sync.to_kubernetes.enabled
    return LeaseSettings(
        namespace=config.gateway.namespace,
        name=CATALOG_SYNC_LEASE if on else EVENTS_LEASE,
        identity=identity or default_identity(),
    )


def _micro_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquire, renew and release one Lease; see the module docstring."""

    def __init__(
        self,
        api_client: Any,
        settings: LeaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = k8s_client.CoordinationV1Api(api_client)
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._leading = False
        self._valid_until = float("-inf")  # monotonic: is_leader is false from here on
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._other_holds = False  # the last read showed another holder
        self._became_leader = asyncio.Event()
        self.transitions = 0  # times this replica became leader

    # -- LeaderGate --------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock() < self._valid_until

    async def wait_leader(self) -> None:
        while not self.is_leader:
            self._became_leader.clear()
            await self._became_leader.wait()

    # -- running -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and lead until ``stop`` is set; then release the Lease if held."""
        s = self.settings
        rnd = random.Random()
        try:
            while not stop.is_set():
                sent = self._clock()
                try:
                    ok = await asyncio.to_thread(self._try_acquire_or_renew)
                except SourceError as exc:
                    ok = False
                    log.warning("lease %s/%s: %s", s.namespace, s.name, exc)
                if ok:
                    self._valid_until = sent + s.renew_deadline_s
                    if not self._leading:
                        self._leading = True
                        self.transitions += 1
                        log.info("lease %s/%s: %s now leads", s.namespace, s.name, s.identity)
                    self._became_leader.set()
                elif self._leading and (not self.is_leader or self._other_holds):
                    self._leading = False
                    self._valid_until = float("-inf")
                    log.warning(
                        "lease %s/%s: not renewed within %.1fs (or taken over); %s stops leading",
                        s.namespace,
                        s.name,
                        s.renew_deadline_s,
                        s.identity,
                    )
                # Candidates spread their retries; the leader renews on the period.
                period = s.retry_period_s * (1.0 if self._leading else 1.0 + 0.2 * rnd.random())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await stop.wait()
        finally:
            was_leading = self._leading
            self._leading = False
            if was_leading:
                with contextlib.suppress(SourceError):
                    await asyncio.to_thread(self._release)

    # -- Lease I/O (worker threads) ------------------------------------------------

    def _timeout(self) -> tuple[float, float]:
        t = max(0.1, self.settings.retry_period_s)
        return (t, t)

    def _get(self) -> dict[str, Any] | None:
        s = self.settings
        what = f"get lease {s.namespace}/{s.name}"
        try:
            resp = call(
                what,
                self._api.read_namespaced_lease,
                s.name,
                s.namespace,
                _preload_content=False,
                _request_timeout=self._timeout(),
            )
        except NotFound:
            return None
        data: dict[str, Any] = read_json(what, resp)
        return data

    def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        now = self._wall()
        self._other_holds = False
        lease = self._get()
        if lease is None:
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": {
                    "holderIdentity": s.identity,
                    "leaseDurationSeconds": max(1, round(s.lease_duration_s)),
                    "acquireTime": _micro_time(now),
                    "renewTime": _micro_time(now),
                    "leaseTransitions": 0,
                },
            }
            try:
                resp = call(
                    f"create lease {s.namespace}/{s.name}",
                    self._api.create_namespaced_lease,
                    s.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self._timeout(),
                )
            except Conflict:
                return False  # another replica created it first
            read_json("create lease", resp)
            self._observe(body["spec"], self._clock())
            return True

        spec = lease.get("spec") or {}
        self._observe(spec, self._clock(), lease.get("metadata", {}).get("resourceVersion"))
        holder = spec.get("holderIdentity") or ""
        self._other_holds = bool(holder) and holder != s.identity
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration_s)
        if holder and holder != s.identity and self._clock() < self._observed_at + duration:
            return False  # someone else holds a lease that has not expired to our eyes
        new_spec = dict(spec)
        new_spec["holderIdentity"] = s.identity
        new_spec["leaseDurationSeconds"] = max(1, round(s.lease_duration_s))
        new_spec["renewTime"] = _micro_time(now)
        if holder != s.identity:
            new_spec["acquireTime"] = _micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            resp = call(
                f"update lease {s.namespace}/{s.name}",
                self._api.replace_namespaced_lease,
                s.name,
                s.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self._timeout(),
            )
        except Conflict:
            return False  # changed since we read it: another replica won this round
        updated = read_json("update lease", resp)
        self._observe(
            new_spec, self._clock(), (updated.get("metadata") or {}).get("resourceVersion")
        )
        return True

    def _observe(self, spec: dict[str, Any], at: float, rv: Any = None) -> None:
        key = (spec.get("holderIdentity"), spec.get("renewTime"), rv)
        if key[:2] != (self._observed or (None, None, None))[:2]:
            self._observed = key
            self._observed_at = at

    def _release(self) -> None:
        s = self.settings
        lease = self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
            return
        now = _micro_time(self._wall())
        lease["spec"] = dict(
            lease["spec"],
            holderIdentity=None,
            leaseDurationSeconds=1,
            renewTime=now,
            acquireTime=now,
        )
        with contextlib.suppress(Conflict):
            resp = call(
                f"release lease {s.namespace}/{s.name}",
                self._api.replace_namespaced_lease,
                s.name,
                s.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self._timeout(),
            )
            read_json("release lease", resp)
            log.info("lease %s/%s: released by %s", s.namespace, s.name, s.identity)
