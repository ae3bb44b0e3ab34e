"""Diagnostics as Kubernetes Events: deduplicated, rate-limited, written by the leader only."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.kubernetes.events import DiagnosticEvents, EventRecorder, reason_of
from adapters.kubernetes.leader import EVENTS_LEASE, LeaseElector, LeaseSettings
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Ir, Resolved
from bridge.model.k8s import K8sService, Kind, ObjectRef
from bridge.model.world import World
from tests.standins.kube_api import KubeApiServer
from tests.support.wait import async_wait_for

WEB = ObjectRef(Kind.SERVICE, "shop", "web")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events(kube: KubeApiServer) -> list[dict[str, Any]]:
    return kube.objects("v1", "Event", "shop")


async def test_same_reason_and_message_counts_up_instead_of_new_events(
    kube: KubeApiServer, api_client: Any
) -> None:
    clock = FakeClock()
    rec = EventRecorder(api_client, clock=clock, burst=100)
    for _ in range(5):
        await rec.record(WEB, "AnnotationInvalid", "bad timeout", uid="u-1")
    (ev,) = events(kube)
    assert ev["count"] == 5 and ev["reason"] == "AnnotationInvalid" and ev["type"] == "Warning"
    assert ev["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": "shop",
        "name": "web",
        "uid": "u-1",
    }
    assert ev["source"]["component"] == "meshbridge"
    assert rec.created == 1 and rec.patched == 4

    await rec.record(WEB, "AnnotationInvalid", "bad port")
    assert len(events(kube)) == 2
    # Outside the dedup window the same message starts a new Event.
    clock.now += 601
    await rec.record(WEB, "AnnotationInvalid", "bad timeout")
    assert len(events(kube)) == 3


async def test_rate_limited_per_object_and_counts_kept(
    kube: KubeApiServer, api_client: Any
) -> None:
    clock = FakeClock()
    rec = EventRecorder(api_client, clock=clock, burst=3, refill_s=60)
    for i in range(10):
        await rec.record(WEB, "Flapping", f"message {i}")
    assert len(events(kube)) == 3 and rec.suppressed == 7
    other = ObjectRef(Kind.SERVICE, "shop", "cart")
    await rec.record(other, "Flapping", "message 0")
    assert len(events(kube)) == 4, "another object has its own budget"

    await rec.record(WEB, "Flapping", "message 0")  # suppressed: no token left
    clock.now += 60
    await rec.record(WEB, "Flapping", "message 0")  # one token back: the count carries both
    web0 = [
        e
        for e in events(kube)
        if e["involvedObject"]["name"] == "web" and e["message"] == "message 0"
    ]
    assert web0[0]["count"] == 3


async def test_diagnostic_events_only_for_new_service_diagnostics(
    kube: KubeApiServer, api_client: Any
) -> None:
    rec = EventRecorder(api_client, clock=FakeClock(), burst=100)
    de = DiagnosticEvents(rec)
    d1 = Diagnostic(
        WEB,
        "metadata.annotations[meshbridge.io/timeout]",
        "'fast' is not a duration",
        "use 15s",
        code="annotation.invalid",
    )
    d2 = Diagnostic(WEB, "spec.ports", "several ports", code="port.ambiguous")
    not_a_service = Diagnostic(
        ObjectRef(Kind.FILE, "", "/x.yaml"), "", "bad yaml", code="file.invalid"
    )
    assert await de.update([d1, not_a_service]) == 1
    assert await de.update([d1, not_a_service]) == 0, (
        "the same diagnostic on the next build: no write"
    )
    assert await de.update([d1, d2]) == 1
    (ev1,) = [e for e in events(kube) if e["reason"] == "AnnotationInvalid"]
    assert "fix: use 15s" in ev1["message"] and "meshbridge.io/timeout" in ev1["message"]
    await de.update([d2])
    await de.update([d1, d2])  # d1 came back: counted on its Event
    (ev1,) = [e for e in events(kube) if e["reason"] == "AnnotationInvalid"]
    assert ev1["count"] == 2
    assert reason_of("port.ambiguous") == "PortAmbiguous"


async def test_pipeline_observer_writes_events_for_new_diagnostics(
    kube: KubeApiServer, api_client: Any
) -> None:
    de = DiagnosticEvents(EventRecorder(api_client, clock=FakeClock()))
    d = Diagnostic(WEB, "spec.ports", "several ports", code="port.ambiguous")
    world = World(services=FrozenDict({WEB: K8sService("shop", "web", uid="uid-web")}))
    resolved = Resolved(services=FrozenDict(), ir=Ir(), diagnostics=(d,))
    de.observe(world, resolved, None)
    de.observe(world, resolved, None)  # the next build, same diagnostic: nothing new
    await de.aclose()
    (ev,) = events(kube)
    assert ev["reason"] == "PortAmbiguous" and ev["involvedObject"]["uid"] == "uid-web"


class Gate:
    """A leader gate a test opens and closes."""

    def __init__(self) -> None:
        self.open = False
        self._changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.open

    def set(self, leading: bool) -> None:
        self.open = leading
        self._changed.set()

    async def wait_leader(self) -> None:
        while not self.open:
            self._changed.clear()
            await self._changed.wait()


def build(*diags: Diagnostic) -> tuple[World, Resolved]:
    world = World(services=FrozenDict({WEB: K8sService("shop", "web", uid="uid-web")}))
    return world, Resolved(services=FrozenDict(), ir=Ir(), diagnostics=diags)


PORTS = Diagnostic(WEB, "spec.ports", "several ports", code="port.ambiguous")
TIMEOUT = Diagnostic(WEB, "metadata.annotations", "'fast' is not a duration", code="timeout.bad")


async def test_a_follower_writes_nothing_and_writes_what_is_current_when_it_takes_over(
    kube: KubeApiServer, api_client: Any
) -> None:
    gate = Gate()
    de = DiagnosticEvents(EventRecorder(api_client, clock=FakeClock()), leader=gate, poll_s=0.01)
    runner = asyncio.create_task(de.run())
    try:
        de.observe(*build(PORTS), None)
        de.observe(*build(PORTS, TIMEOUT), None)
        assert de.pending_writes == 0 and not events(kube)

        # Taking the lead between builds: the diagnostics present now are written.
        gate.set(True)
        await async_wait_for(lambda: len(events(kube)) == 2, 5, what="events on takeover")
        de.observe(*build(PORTS, TIMEOUT), None)  # the next build: nothing new
        # Losing the lead, then a new diagnostic only the leader may write.
        await de.aclose()
        gate.set(False)
        de.observe(*build(TIMEOUT), None)
        assert de.pending_writes == 0
        assert {e["reason"] for e in events(kube)} == {"PortAmbiguous", "TimeoutBad"}
        assert all(e["count"] == 1 for e in events(kube))
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_two_replicas_on_one_lease_write_each_event_once(
    kube: KubeApiServer, api_client: Any
) -> None:
    fast = {"lease_duration_s": 1.0, "renew_deadline_s": 0.6, "retry_period_s": 0.1}
    replicas = []
    for name in ("a", "b"):
        elector = LeaseElector(
            api_client, LeaseSettings("meshbridge", name=EVENTS_LEASE, identity=name, **fast)
        )
        events_ = DiagnosticEvents(
            EventRecorder(api_client, instance=name, clock=FakeClock()),
            leader=elector,
            poll_s=0.02,
        )
        replicas.append((elector, events_))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(t)
        for elector, events_ in replicas
        for t in (elector.run(stop), events_.run())
    ]
    try:
        await async_wait_for(
            lambda: any(e.is_leader for e, _ in replicas), 5, what="one replica leads"
        )
        # Every replica sees every build, as both pipelines would.
        for _, events_ in replicas:
            events_.observe(*build(PORTS), None)
        await async_wait_for(lambda: len(events(kube)) == 1, 5, what="the Event")
        for _ in range(3):
            for _, events_ in replicas:
                events_.observe(*build(PORTS, TIMEOUT), None)
        await async_wait_for(lambda: len(events(kube)) == 2, 5, what="the second Event")
        leader = next(i for i, (e, _) in enumerate(replicas) if e.is_leader)
        assert {e["source"]["host"] for e in events(kube)} == {"ab"[leader]}
        assert all(e["count"] == 1 for e in events(kube)), "no replica wrote a repeat"
    finally:
        stop.set()
        await asyncio.gather(*tasks[0::2])  # electors release the Lease and return
        for t in tasks[1::2]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_shutdown_lets_scheduled_writes_finish(kube: KubeApiServer, api_client: Any) -> None:
    de = DiagnosticEvents(EventRecorder(api_client, clock=FakeClock()))
    runner = asyncio.create_task(de.run())
    await asyncio.sleep(0)
    de.observe(*build(PORTS, TIMEOUT), None)
    runner.cancel()  # the bridge stopping right after a build
    await asyncio.gather(runner, return_exceptions=True)
    assert len(events(kube)) == 2, "run() awaited the writes on the way out (aclose)"
