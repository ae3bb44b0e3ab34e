"""Diagnostics as Kubernetes Events on the Service concerned: deduplicated, rate-limited.

:class:`EventRecorder` writes core/v1 Events the way ``kubectl describe``
shows them, with the habits of client-go's event correlator:

- **deduplication**: the same type, reason and message on the same object
  within ``dedup_window_s`` does not create a new Event; the existing one's
  ``count`` goes up and ``lastTimestamp`` moves (a PATCH);
- **rate limit**: a token bucket per object (``burst`` writes, then one per
  ``refill_s``) bounds the writes a flapping object can cause; a suppressed
  repeat is not lost, its count is carried into the next allowed write;
- writes are best-effort: a failure is logged (rate-limited) and dropped,
  never raised into the caller; they run in worker threads, serialized.

:class:`DiagnosticEvents` turns the pipeline's diagnostics into Events: it
is called with the full current set after every build and emits only the
diagnostics that are new since the previous call, for Services only, and
only while this replica leads when given a leader gate (``serve`` passes the
Lease elector, so two replicas don't write every Event twice).

The clock is injectable (monotonic seconds) so tests need no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client

from adapters.kubernetes.client import call, load_api_client, read_json
from bridge.config import Config
from bridge.errors import SourceError
from bridge.leader import LeaderGate
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Resolved
from bridge.model.k8s import K8sService, Kind, ObjectRef
from bridge.model.world import World

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024  # the API server's limit for event messages


def reason_of(code: str) -> str:
    """A CamelCase Event reason from a diagnostic code: ``port.ambiguous``, ``PortAmbiguous``."""
    parts = [p for chunk in code.split(".") for p in chunk.replace("-", "_").split("_") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) or "Diagnostic"


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Series:
    name: str | None  # the Event's name once created
    first_seen: float
    count: int  # occurrences recorded
    written: int  # count the API server has
    first_ts: str


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class EventRecorder:
    """Writes Events for objects; see the module docstring."""

    def __init__(
        self,
        api_client: Any,
        *,
        component: str = "meshbridge",
        instance: str | None = None,
        dedup_window_s: float = 600.0,
        burst: int = 10,
        refill_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = k8s_client.CoreV1Api(api_client)
        self.component = component
        self.instance = instance or socket.gethostname()
        self._window = dedup_window_s
        self._burst = burst
        self._refill_s = refill_s
        self._clock = clock
        self._wall = wall
        self._series: dict[tuple[ObjectRef, str, str, str], _Series] = {}
        self._buckets: dict[ObjectRef, _Bucket] = {}
        self._lock = asyncio.Lock()
        self.created = 0
        self.patched = 0
        self.suppressed = 0
        self.failed = 0

    def _allow(self, ref: ObjectRef) -> bool:
        now = self._clock()
        b = self._buckets.get(ref)
        if b is None:
            b = self._buckets[ref] = _Bucket(float(self._burst), now)
        b.tokens = min(float(self._burst), b.tokens + (now - b.at) / self._refill_s)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    async def record(
        self, ref: ObjectRef, reason: str, message: str, type_: str = "Warning", uid: str = ""
    ) -> None:
        """Record one occurrence; creates, counts or suppresses as described above."""
        message = message[:MAX_MESSAGE]
        key = (ref, type_, reason, message)
        now = self._clock()
        async with self._lock:
            series = self._series.get(key)
            if series is None or now - series.first_seen > self._window:
                series = _Series(None, now, 0, 0, _ts(self._wall()))
                self._series[key] = series
            series.count += 1
            if not self._allow(ref):
                self.suppressed += 1
                return
            try:
                if series.name is None:
                    series.name = await asyncio.to_thread(
                        self._create, ref, type_, reason, message, uid, series
                    )
                    self.created += 1
                else:
                    await asyncio.to_thread(self._patch, ref, series)
                    self.patched += 1
                series.written = series.count
            except SourceError as exc:
                self.failed += 1
                if self.failed == 1 or self.failed % 100 == 0:
                    log.warning(
                        "cannot write Event for %s (%d failures): %s", ref, self.failed, exc
                    )
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        if len(self._series) > 4096:
            for k in [k for k, s in self._series.items() if now - s.first_seen > self._window]:
                del self._series[k]

    def _create(
        self, ref: ObjectRef, type_: str, reason: str, message: str, uid: str, series: _Series
    ) -> str:
        now = self._wall()
        # client-go's naming: the object's name and a unique hex suffix.
        name = f"{ref.name}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ref.namespace or "default"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": ref.kind.value,
                "namespace": ref.namespace,
                "name": ref.name,
                **({"uid": uid} if uid else {}),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "count": series.count,
            "firstTimestamp": series.first_ts,
            "lastTimestamp": _ts(now),
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        resp = call(
            f"create Event for {ref}",
            self._api.create_namespaced_event,
            ref.namespace or "default",
            body,
            _preload_content=False,
            _request_timeout=(5.0, 10.0),
        )
        read_json("create Event", resp)
        return name

    def _patch(self, ref: ObjectRef, series: _Series) -> None:
        assert series.name is not None
        resp = call(
            f"update Event for {ref}",
            self._api.patch_namespaced_event,
            series.name,
            ref.namespace or "default",
            {"count": series.count, "lastTimestamp": _ts(self._wall())},
            _preload_content=False,
            _request_timeout=(5.0, 10.0),
        )
        read_json("update Event", resp)


class DiagnosticEvents:
    """Emits an Event for each Service diagnostic this replica has not written yet.

    Use :meth:`update` directly, or :meth:`observe` as a pipeline observer
    (``pipeline.observers.append(events.observe)``) with :meth:`run` as a
    :class:`bridge.app.Source`; :meth:`aclose` (called by :meth:`run` on the
    way out) lets the writes it scheduled finish, within a bound.

    With a ``leader`` gate only the leading replica writes, so two replicas
    don't each write the same Event. A replica that is not leading writes
    nothing and remembers nothing as written; when it takes over, it writes
    the diagnostics present then, as a restarted replica would (at worst one
    repeat per diagnostic per change of leader, never one per replica per
    build).
    """

    name = "events"

    def __init__(
        self,
        recorder: EventRecorder,
        *,
        leader: LeaderGate | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.recorder = recorder
        self.leader = leader
        self._poll_s = poll_s
        self._latest: frozenset[Diagnostic] = frozenset()
        self._services: Mapping[ObjectRef, K8sService] = {}
        self._written: frozenset[Diagnostic] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending_writes(self) -> int:
        """Event writes scheduled and not finished yet."""
        return len(self._tasks)

    @property
    def leading(self) -> bool:
        return self.leader is None or self.leader.is_leader

    def _take_new(self) -> list[Diagnostic]:
        if not self.leading:
            self._written = frozenset()
            return []
        new = sorted(self._latest - self._written)
        self._written = self._latest
        return new

    async def _emit(self, new: list[Diagnostic], uids: Mapping[ObjectRef, str]) -> None:
        for d in new:
            message = f"{d.field}: {d.message}" if d.field else d.message
            if d.fix:
                message += f" (fix: {d.fix})"
            await self.recorder.record(
                d.ref,
                reason_of(d.code),
                message,
                "Normal" if d.severity is Severity.INFO else "Warning",
                uids.get(d.ref, ""),
            )

    async def update(
        self, diags: Iterable[Diagnostic], uids: Mapping[ObjectRef, str] | None = None
    ) -> int:
        """Record the new diagnostics (if leading); returns how many were written."""
        self._latest = frozenset(d for d in diags if d.ref.kind is Kind.SERVICE)
        new = self._take_new()
        await self._emit(new, uids or {})
        return len(new)

    def observe(self, world: World, resolved: Resolved, _stats: object) -> None:
        """Pipeline observer: schedules the Events for this build's new diagnostics."""
        self._latest = frozenset(d for d in resolved.diagnostics if d.ref.kind is Kind.SERVICE)
        self._services = world.services
        self._flush()

    def _flush(self) -> None:
        new = self._take_new()
        if not new:
            return
        services = self._services
        uids = {d.ref: svc.uid for d in new if (svc := services.get(d.ref)) is not None}
        task = asyncio.get_running_loop().create_task(self._emit(new, uids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Write what is pending whenever this replica takes the lead; until cancelled."""
        try:
            if self.leader is None:
                await asyncio.Event().wait()
            assert self.leader is not None
            led = False
            while True:
                if not self.leader.is_leader:
                    led = False
                    self._written = frozenset()
                    await self.leader.wait_leader()
                    continue
                if not led:
                    led = True
                    self._flush()  # what the builds showed while another replica led
                # The gate has no "lost" signal: look again shortly.
                await asyncio.sleep(self._poll_s)
        finally:
            await self.aclose()

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait for the Event writes already scheduled, at most ``timeout``; cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def diagnostic_events(config: Config, leader: LeaderGate | None) -> DiagnosticEvents:
    """Events for ``serve --source kubernetes``: the configured cluster, written by ``leader``."""
    return DiagnosticEvents(
        EventRecorder(load_api_client(config.kubernetes.kubeconfig, config.kubernetes.context)),
        leader=leader,
    )
