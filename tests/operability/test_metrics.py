"""``/metrics``: names, per-bridge registries, and the figures operators alert on."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc

from bridge.app import Bridge
from bridge.config import load_config
from bridge.metrics import CHANGE_TO_ACK_BUCKETS, ChangeToAck, Metrics
from bridge.store import Store
from bridge.xds.resources import CLUSTER, ENDPOINT
from tests.operability.support import Running, metric_value, running_bridge
from tests.server.client import SotwStream
from tests.support.wait import async_wait_for

# -- change to ACK, with a fake clock ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tracker() -> tuple[ChangeToAck, Clock, list[tuple[str, float]]]:
    clock = Clock()
    seen: list[tuple[str, float]] = []
    return ChangeToAck(lambda t, s: seen.append((t, s)), clock), clock, seen


def test_change_to_ack_measures_from_the_batch_change_to_the_ack(
    tracker: tuple[ChangeToAck, Clock, list[tuple[str, float]]],
) -> None:
    t, clock, seen = tracker
    t.published(None, {CLUSTER: "c1", ENDPOINT: "e1"})  # the first snapshot: no change time
    t.connect("gw")
    t.ack("gw", CLUSTER, "c1")  # what it got on connecting is not a change
    assert seen == []
    t.published(100.0, {ENDPOINT: "e2"})
    clock.now = 100.25
    t.ack("gw", ENDPOINT, "e2")
    assert seen == [(ENDPOINT, 0.25)]
    t.ack("gw", ENDPOINT, "e2")  # the same ACK again counts once
    t.ack("gw", CLUSTER, "c1")  # an unchanged type: nothing
    assert seen == [(ENDPOINT, 0.25)]


def test_one_ack_covering_two_batches_measures_each(
    tracker: tuple[ChangeToAck, Clock, list[tuple[str, float]]],
) -> None:
    t, clock, seen = tracker
    t.connect("gw")
    t.published(100.0, {ENDPOINT: "e1"})
    t.published(100.5, {ENDPOINT: "e2", CLUSTER: "c2"})
    clock.now = 101.0
    t.ack("gw", ENDPOINT, "e1")  # the older version: the first batch only
    t.ack("gw", ENDPOINT, "e2")
    t.ack("gw", CLUSTER, "c2")
    assert seen == [(ENDPOINT, 1.0), (ENDPOINT, 0.5), (CLUSTER, 0.5)]


def test_each_node_is_measured_and_late_joiners_are_not(
    tracker: tuple[ChangeToAck, Clock, list[tuple[str, float]]],
) -> None:
    t, clock, seen = tracker
    t.connect("a")
    t.published(100.0, {ENDPOINT: "e1"})
    t.connect("b")  # joined after the change: its first ACK is not a change's latency
    clock.now = 100.1
    t.ack("a", ENDPOINT, "e1")
    t.ack("b", ENDPOINT, "e1")
    t.ack("nobody", ENDPOINT, "e1")  # not connected: ignored
    assert seen == [(ENDPOINT, pytest.approx(0.1))]
    t.disconnect("a")
    t.connect("a")
    t.ack("a", ENDPOINT, "e1")  # reconnected: a fresh baseline
    assert len(seen) == 1


# -- the registry -----------------------------------------------------------------------


def test_every_metric_is_named_meshbridge_and_registries_are_per_bridge() -> None:
    config = load_config(None, env={})
    a = Bridge(config, lambda s: [], xds_address="127.0.0.1:0", admin_address="")
    b = Bridge(config, lambda s: [], xds_address="127.0.0.1:0", admin_address="")
    a.metrics.record_catalog_writes("consul", "register", 3)
    names = sorted(set(a.metrics.names()))
    assert names and all(n.startswith("meshbridge_") for n in names), names
    text = a.metrics.render().decode()
    samples = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"]
    assert samples and all(s.startswith("meshbridge_") for s in samples)
    assert (
        metric_value(
            text, "meshbridge_catalog_sync_writes_total", target="consul", operation="register"
        )
        == 3
    )
    assert "meshbridge_catalog_sync_writes_total{" not in b.metrics.render().decode()
    # Everything the issue asks for is there.
    for name in (
        "meshbridge_source_synced",
        "meshbridge_source_events",
        "meshbridge_snapshot_build_duration_seconds",
        "meshbridge_world_version",
        "meshbridge_snapshots_published",
        "meshbridge_xds_connected_envoys",
        "meshbridge_xds_acks",
        "meshbridge_xds_nacks",
        "meshbridge_xds_change_to_ack_seconds",
        "meshbridge_identity_cert_expiry_timestamp_seconds",
        "meshbridge_catalog_sync_writes",
    ):
        assert name in names, name


def test_a_metrics_object_without_a_bridge_renders() -> None:
    m = Metrics(store=Store())
    assert b"meshbridge_diagnostics" in m.render()


# -- a running bridge -------------------------------------------------------------------------


async def scrape(env: Running) -> str:
    status, ctype, body = await env.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return body.decode()


async def test_sources_builds_versions_and_identities(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        text = await scrape(env)
        app = env.app
        assert app.pipeline.world is not None
        for source in app.store.sync_state():
            assert metric_value(text, "meshbridge_source_synced", source=source) == 1, source
        dir_source = next(s for s in app.store.sync_state() if s.startswith("dir:"))
        # Every object of the test world was put once.
        assert (
            metric_value(
                text, "meshbridge_source_events_total", source=dir_source, operation="upsert"
            )
            == 15
        )
        assert (
            metric_value(
                text, "meshbridge_source_events_total", source="identity/istio", operation="upsert"
            )
            == 2
        )
        assert metric_value(text, "meshbridge_world_version") == app.pipeline.world.version
        assert metric_value(text, "meshbridge_snapshots_published_total") == app.pipeline.published
        for stage in ("resolve", "translate", "publish", "total"):
            count = metric_value(
                text, "meshbridge_snapshot_build_duration_seconds_count", stage=stage
            )
            assert count == app.pipeline.attempts, stage
        assert metric_value(text, "meshbridge_snapshot_resources", type="cluster") == 4
        assert env.istio.current is not None
        expiry = metric_value(
            text, "meshbridge_identity_cert_expiry_timestamp_seconds", identity="identity/istio"
        )
        assert expiry == env.istio.current.not_after.replace(microsecond=0).timestamp()
        assert expiry > dt.datetime.now(dt.UTC).timestamp()
        assert metric_value(text, "meshbridge_diagnostics", severity="error") == 1  # shop/legacy
        assert metric_value(text, "meshbridge_snapshot_build_failing") == 0


async def test_envoys_acks_nacks_and_change_to_ack(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        async with grpc.aio.insecure_channel(env.app.xds_target) as channel:
            stream = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(channel), "gw-1")
            try:
                await stream.send(CLUSTER)
                cds = await stream.recv()
                await stream.ack(cds)
                await stream.send(ENDPOINT, ["shop/web/http"])
                eds = await stream.recv()
                await stream.ack(eds, ["shop/web/http"])
                text = await _scrape_until(env, "meshbridge_xds_acks_total", type="endpoint")
                assert metric_value(text, "meshbridge_xds_connected_envoys") == 1
                assert metric_value(text, "meshbridge_xds_streams", mode="sotw") == 1
                assert metric_value(text, "meshbridge_xds_acks_total", type="cluster") == 1
                assert not metric_value(
                    text, "meshbridge_xds_change_to_ack_seconds_count", type="endpoint"
                )

                # A source change: the endpoint moves; its EDS is ACKed; one observation.
                edited = asyncio.get_running_loop().time()
                path = env.world / "web-slice.yaml"
                path.write_text(path.read_text().replace("8080", "8081"))
                eds2 = await stream.recv()
                await stream.ack(eds2, ["shop/web/http"])
                text = await _scrape_until(
                    env, "meshbridge_xds_change_to_ack_seconds_count", type="endpoint"
                )
                elapsed = asyncio.get_running_loop().time() - edited
                count = metric_value(
                    text, "meshbridge_xds_change_to_ack_seconds_count", type="endpoint"
                )
                total = metric_value(
                    text, "meshbridge_xds_change_to_ack_seconds_sum", type="endpoint"
                )
                assert count == 1 and total is not None
                # At least the debounce hold-off, at most what the test saw from outside.
                assert 0.005 <= total <= elapsed
                assert not metric_value(
                    text, "meshbridge_xds_change_to_ack_seconds_count", type="cluster"
                )
                le = next(b for b in CHANGE_TO_ACK_BUCKETS if total <= b)
                assert (
                    metric_value(
                        text,
                        "meshbridge_xds_change_to_ack_seconds_bucket",
                        type="endpoint",
                        le=str(le),
                    )
                    == 1
                )

                # A NACK is counted by type.
                path.write_text(path.read_text().replace("8081", "8082"))
                eds3 = await stream.recv()
                await stream.send(ENDPOINT, ["shop/web/http"], nonce=eds3.nonce, error="no thanks")
                text = await _scrape_until(env, "meshbridge_xds_nacks_total", type="endpoint")
                assert metric_value(text, "meshbridge_xds_nacks_total", type="endpoint") == 1
            finally:
                await stream.close()
        text = await _scrape_until(
            env, "meshbridge_xds_connected_envoys", value=0.0, what="the stream to close"
        )
        assert metric_value(text, "meshbridge_xds_streams", mode="sotw") == 0


async def test_failed_builds_are_counted(tmp_path: Path) -> None:
    from tests.operability.test_secrets import failing_resolve

    flag = {"fail": False}
    async with running_bridge(tmp_path, wrap_resolve=failing_resolve(flag)) as env:
        flag["fail"] = True
        path = env.world / "web-slice.yaml"
        path.write_text(path.read_text().replace("8080", "8081"))
        text = await _scrape_until(env, "meshbridge_snapshot_builds_total", result="error")
        assert metric_value(text, "meshbridge_snapshot_build_failing") == 1
        failed = metric_value(text, "meshbridge_snapshot_builds_total", result="error")
        ok = metric_value(text, "meshbridge_snapshot_builds_total", result="ok")
        assert failed is not None and failed >= 1
        flag["fail"] = False
        path.write_text(path.read_text().replace("8081", "8082"))
        text = await _scrape_until(env, "meshbridge_snapshot_build_failing", value=0.0)
        # Failed builds were counted as such, and the recovery as a success.
        assert (
            metric_value(text, "meshbridge_snapshot_builds_total", result="error") or 0
        ) >= failed
        assert (metric_value(text, "meshbridge_snapshot_builds_total", result="ok") or 0) > (
            ok or 0
        )


async def _scrape_until(
    env: Running, name: str, *, value: float | None = None, what: str = "", **labels: str
) -> str:
    """Scrape until ``name{labels}`` is present and non-zero (or equals ``value``)."""

    async def ready() -> str:
        text = await scrape(env)
        got = metric_value(text, name, **labels)
        ok = got == value if value is not None else bool(got)
        return text if ok else ""

    return await async_wait_for(ready, timeout=10, what=what or f"{name}{labels}")
