"""Diagnostics as Kubernetes Events: deduplicated, rate-limited."""

from __future__ import annotations

from typing import Any

from adapters.kubernetes.events import DiagnosticEvents, EventRecorder, reason_of
from bridge.model.diagnostics import Diagnostic
from bridge.model.k8s import Kind, ObjectRef
from tests.standins.kube_api import KubeApiServer

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
    from bridge.model.frozen import FrozenDict
    from bridge.model.ir import Ir, Resolved
    from bridge.model.k8s import K8sService
    from bridge.model.world import World

    de = DiagnosticEvents(EventRecorder(api_client, clock=FakeClock()))
    d = Diagnostic(WEB, "spec.ports", "several ports", code="port.ambiguous")
    world = World(services=FrozenDict({WEB: K8sService("shop", "web", uid="uid-web")}))
    resolved = Resolved(services=FrozenDict(), ir=Ir(), diagnostics=(d,))
    de.observe(world, resolved, None)
    de.observe(world, resolved, None)  # the next build, same diagnostic: nothing new
    await de.aclose()
    (ev,) = events(kube)
    assert ev["reason"] == "PortAmbiguous" and ev["involvedObject"]["uid"] == "uid-web"
