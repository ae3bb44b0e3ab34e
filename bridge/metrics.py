"""Prometheus metrics of one running bridge; every name starts with ``meshbridge_``.

:class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry` of its
own (never the process-global one), so several bridges in one process — tests,
the demo — keep separate figures. ``/metrics`` renders it with
:meth:`Metrics.render`.

What is measured, and where it comes from:

- ``meshbridge_source_synced{source}`` (gauge): 1 once the source finished
  its initial sync; read from the store at scrape time.
- ``meshbridge_source_events_total{source,operation}`` (counter): changes a
  source applied to the store (``upsert``, ``delete``, ``diagnostics``);
  equal values are no-ops and not counted. From the store, at scrape time.
- ``meshbridge_snapshot_build_duration_seconds{stage}`` (histogram):
  ``resolve``, ``translate``, ``publish`` and ``total`` of every build,
  failed ones included; ``meshbridge_snapshot_builds_total{result}`` counts
  them (``ok``, ``error``) and ``meshbridge_snapshot_build_failing`` is 1
  while the last one failed (the last good snapshot stays live).
- ``meshbridge_snapshots_published_total``, ``meshbridge_world_version``,
  ``meshbridge_snapshot_resources{type}`` and
  ``meshbridge_snapshot_version_info{type,version}`` (always 1): the last
  published snapshot.
- ``meshbridge_diagnostics{severity}`` (gauge): problems of the last build
  and of the sources.
- ``meshbridge_xds_connected_envoys`` (distinct node ids with an open
  stream) and ``meshbridge_xds_streams{mode}`` (gauges);
  ``meshbridge_xds_responses_total{type}``,
  ``meshbridge_xds_response_bytes_total{type}``,
  ``meshbridge_xds_acks_total{type}`` and ``meshbridge_xds_nacks_total{type}``
  (counters), from the ADS server's observer hooks.
- ``meshbridge_xds_change_to_ack_seconds{type}`` (histogram): see below.
- ``meshbridge_identity_cert_expiry_timestamp_seconds{identity}`` (gauge,
  seconds since the epoch): the gateway's certificate per mesh identity
  (``identity/istio``...), from the mesh secrets of the last World.
- ``meshbridge_catalog_sync_writes_total{target,operation}`` (counter):
  reported by catalog sync through :meth:`Metrics.record_catalog_writes`.

``type`` is the xDS type's short name: ``listener``, ``route``, ``cluster``,
``endpoint``, ``secret``.

**Change to ACK.** ``meshbridge_xds_change_to_ack_seconds`` measures, per
xDS type and per connected node, the time from the first change a source put
into the store for a batch (the store's monotonic clock at that moment; a
batch whose build failed keeps its time into the next build) to the moment
that node ACKs that type at a version published by that batch or a later
one. One observation per (node, type, batch that changed the type). It does
not include the time a source takes to notice a change outside the process
(the directory source's poll, a watch's delivery); it does include the
debounce, the build, the push and Envoy applying the update. Batches
published before a node connected are not counted for it. A node that
watches only some resources of a type (a proxyless gRPC client) may have a
change to a resource it does not watch counted at its next ACK of that type.

Catalog sync reports its writes through :meth:`Metrics.record_catalog_writes`
(``target`` ``consul`` or ``kubernetes``; ``operation`` such as
``register``, ``deregister``, ``create``, ``update``, ``delete``) — any
callable of that shape will do, so the sync itself needs no metrics library.

Nothing here reads or renders key material: identities appear by secret name
and expiry only.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.model.diagnostics import Diagnostic
from bridge.model.ir import IdentitySecret
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

if TYPE_CHECKING:
    from bridge.model.world import World
    from bridge.pipeline import BuildStats
    from bridge.server.cache import Snapshot
    from bridge.store import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SHORT = {
    LISTENER: "listener",
    ROUTE: "route",
    CLUSTER: "cluster",
    ENDPOINT: "endpoint",
    SECRET: "secret",
}

# Seconds. Debounce alone is 50 ms by default; a change reaching a busy Envoy
# can take seconds; beyond a minute it is an outage, not a latency.
CHANGE_TO_ACK_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BUILD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STAGES = ("resolve", "translate", "publish", "total")
# Batches remembered for change-to-ACK; a node further behind than this is not measured.
_MAX_BATCHES = 1024


def type_name(type_url: str) -> str:
    """The short label of an xDS type URL (``endpoint`` for ClusterLoadAssignment)."""
    return _SHORT.get(type_url) or type_url.rsplit(".", 1)[-1]


class CatalogWriteRecorder(Protocol):
    """What catalog sync calls after writing: ``record(target, operation, count)``."""

    def __call__(self, target: str, operation: str, count: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class _Batch:
    seq: int
    changed_at: float
    types: frozenset[str]


class ChangeToAck:
    """Matches ACKs to the batches whose changes they carry; see the module docstring.

    ``published`` is called for every snapshot with the changed types and their
    new versions; ``ack`` for every ACK. ``observe(type_url, seconds)`` receives
    each measurement. Memory is bounded by :data:`_MAX_BATCHES` and by the
    connected nodes.
    """

    def __init__(
        self, observe: Callable[[str, float], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._observe = observe
        self._clock = clock
        self.seq = 0
        self._batches: collections.deque[_Batch] = collections.deque(maxlen=_MAX_BATCHES)
        self._version_seq: dict[tuple[str, str], int] = {}
        self._baseline: dict[str, int] = {}  # node -> seq when it connected
        self._streams: collections.Counter[str] = collections.Counter()
        self._done: dict[tuple[str, str], int] = {}  # (node, type) -> last seq measured

    def published(self, changed_at: float | None, versions: Mapping[str, str]) -> None:
        """A snapshot was published; ``versions`` holds the types it changed."""
        self.seq += 1
        for type_url, version in versions.items():
            self._version_seq[(type_url, version)] = self.seq
        if changed_at is not None and versions:
            self._batches.append(_Batch(self.seq, changed_at, frozenset(versions)))
        if len(self._version_seq) > 4 * _MAX_BATCHES:
            oldest = self._batches[0].seq if self._batches else self.seq
            self._version_seq = {k: s for k, s in self._version_seq.items() if s >= oldest}

    def connect(self, node_id: str) -> None:
        if self._streams[node_id] == 0:
            self._baseline[node_id] = self.seq
        self._streams[node_id] += 1

    def disconnect(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] <= 0:
            del self._streams[node_id]
            self._baseline.pop(node_id, None)
            for key in [k for k in self._done if k[0] == node_id]:
                del self._done[key]

    def ack(self, node_id: str, type_url: str, version: str) -> None:
        seq = self._version_seq.get((type_url, version))
        if seq is None or node_id not in self._baseline:
            return
        key = (node_id, type_url)
        last = self._done.get(key, self._baseline[node_id])
        if seq <= last:
            return
        self._done[key] = seq
        now = self._clock()
        for batch in self._batches:
            if last < batch.seq <= seq and type_url in batch.types:
                self._observe(type_url, max(0.0, now - batch.changed_at))


class _XdsObserver:
    """The :class:`bridge.server.ads.XdsObserver` that feeds :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def on_connect(self, node_id: str, group: str, mode: str) -> None:
        m = self._m
        m.xds_streams.labels(mode).inc()
        m.nodes[node_id] += 1
        m.xds_envoys.set(len(m.nodes))
        m.change_to_ack.connect(node_id)

    def on_disconnect(self, node_id: str, group: str, mode: str) -> None:
        m = self._m
        m.xds_streams.labels(mode).dec()
        m.nodes[node_id] -= 1
        if m.nodes[node_id] <= 0:
            del m.nodes[node_id]
        m.xds_envoys.set(len(m.nodes))
        m.change_to_ack.disconnect(node_id)

    def on_response(self, node_id: str, type_url: str, resources: int, size: int) -> None:
        name = type_name(type_url)
        self._m.xds_responses.labels(name).inc()
        self._m.xds_response_bytes.labels(name).inc(size)

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        self._m.xds_acks.labels(type_name(type_url)).inc()
        try:
            self._m.change_to_ack.ack(node_id, type_url, version)
        except Exception:  # a metrics bug must never break a stream
            log.exception("change-to-ACK bookkeeping failed")

    def on_nack(self, node_id: str, type_url: str, message: str) -> None:
        self._m.xds_nacks.labels(type_name(type_url)).inc()


def _epoch(rfc3339: str) -> float | None:
    try:
        when = dt.datetime.fromisoformat(rfc3339)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class _ScrapeCollector:
    """Figures read at scrape time from the store and the last published state."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        # What the registry checks names against, without reading state that may
        # not exist yet (the collector is registered while the bridge is built).
        return [
            GaugeMetricFamily("meshbridge_source_synced", "", labels=["source"]),
            CounterMetricFamily("meshbridge_source_events", "", labels=["source", "operation"]),
            GaugeMetricFamily(
                "meshbridge_identity_cert_expiry_timestamp_seconds", "", labels=["identity"]
            ),
            GaugeMetricFamily("meshbridge_diagnostics", "", labels=["severity"]),
        ]

    def collect(self) -> Iterable[Metric]:
        m = self._m
        synced = GaugeMetricFamily(
            "meshbridge_source_synced",
            "1 once the source finished its initial sync (nothing is published before all are)",
            labels=["source"],
        )
        events = CounterMetricFamily(
            "meshbridge_source_events",
            "Changes a source applied to the store, by operation (equal values are no-ops)",
            labels=["source", "operation"],
        )
        if m.store is not None:
            for source, ok in sorted(m.store.sync_state().items()):
                synced.add_metric([source], 1.0 if ok else 0.0)
            for (source, op), n in sorted(m.store.event_counts().items()):
                events.add_metric([source, op], n)
        yield synced
        yield events
        expiry = GaugeMetricFamily(
            "meshbridge_identity_cert_expiry_timestamp_seconds",
            "When the gateway's certificate for a mesh expires (seconds since the epoch)",
            labels=["identity"],
        )
        diagnostics = GaugeMetricFamily(
            "meshbridge_diagnostics",
            "Problems found in the last build and by the sources, by severity",
            labels=["severity"],
        )
        world = m.world() if m.world is not None else None
        if world is not None:
            for name, secret in sorted(world.mesh_secrets.items()):
                if isinstance(secret, IdentitySecret) and secret.not_after:
                    when = _epoch(secret.not_after)
                    if when is not None:
                        expiry.add_metric([str(name)], when)
        counts: collections.Counter[str] = collections.Counter(
            d.severity.value for d in (m.diagnostics() if m.diagnostics is not None else ())
        )
        for severity in ("error", "warning", "info"):
            diagnostics.add_metric([severity], counts.get(severity, 0))
        yield expiry
        yield diagnostics


class Metrics:
    """The registry and every metric of one bridge; see the module docstring.

    ``store``, ``world`` and ``diagnostics`` are read at scrape time (the
    Bridge wires them); builds, snapshots and xDS events are pushed.
    """

    def __init__(
        self,
        *,
        store: Store | None = None,
        world: Callable[[], World | None] | None = None,
        diagnostics: Callable[[], Iterable[Diagnostic]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.world = world
        self.diagnostics = diagnostics
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_seconds = Histogram(
            "meshbridge_snapshot_build_duration_seconds",
            "Time to build a snapshot, by stage (resolve, translate, publish, total)",
            ["stage"],
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.builds = Counter(
            "meshbridge_snapshot_builds", "Snapshot builds, by result", ["result"], registry=r
        )
        self.build_failing = Gauge(
            "meshbridge_snapshot_build_failing",
            "1 while the last build failed (the last good snapshot stays live)",
            registry=r,
        )
        self.published = Counter(
            "meshbridge_snapshots_published", "Snapshots published to Envoy", registry=r
        )
        self.world_version = Gauge(
            "meshbridge_world_version", "Version of the World of the last snapshot", registry=r
        )
        self.snapshot_resources = Gauge(
            "meshbridge_snapshot_resources",
            "Resources in the last snapshot, by xDS type",
            ["type"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "meshbridge_snapshot_version_info",
            "The last snapshot's version of each xDS type (value always 1)",
            ["type", "version"],
            registry=r,
        )
        self.xds_envoys = Gauge(
            "meshbridge_xds_connected_envoys",
            "Distinct node ids with at least one open ADS stream",
            registry=r,
        )
        self.xds_streams = Gauge(
            "meshbridge_xds_streams",
            "Open ADS streams, by mode (sotw, delta)",
            ["mode"],
            registry=r,
        )
        self.xds_responses = Counter(
            "meshbridge_xds_responses", "xDS responses sent, by type", ["type"], registry=r
        )
        self.xds_response_bytes = Counter(
            "meshbridge_xds_response_bytes",
            "xDS response bytes sent, by type",
            ["type"],
            registry=r,
        )
        self.xds_acks = Counter(
            "meshbridge_xds_acks", "ACKs received, by type", ["type"], registry=r
        )
        self.xds_nacks = Counter(
            "meshbridge_xds_nacks",
            "NACKs received (config rejected), by type",
            ["type"],
            registry=r,
        )
        self.change_to_ack_seconds = Histogram(
            "meshbridge_xds_change_to_ack_seconds",
            "From a source's change reaching the store to a node ACKing a version "
            "that carries it, per type and node (see bridge.metrics)",
            ["type"],
            buckets=CHANGE_TO_ACK_BUCKETS,
            registry=r,
        )
        self.catalog_writes = Counter(
            "meshbridge_catalog_sync_writes",
            "Writes catalog sync made, by target (consul, kubernetes) and operation",
            ["target", "operation"],
            registry=r,
        )
        for mode in ("sotw", "delta"):
            self.xds_streams.labels(mode)
        for result in ("ok", "error"):
            self.builds.labels(result)
        r.register(_ScrapeCollector(self))
        self.nodes: collections.Counter[str] = collections.Counter()
        self.change_to_ack = ChangeToAck(self._observe_change_to_ack, clock)
        self.xds_observer = _XdsObserver(self)
        self._versions: dict[str, str] = {}
        self._seen_attempts = 0

    def _observe_change_to_ack(self, type_url: str, seconds: float) -> None:
        self.change_to_ack_seconds.labels(type_name(type_url)).observe(seconds)

    # -- pushed by the bridge --------------------------------------------------

    def builds_seen(self, attempts: int, recent: Iterable[BuildStats]) -> None:
        """Count the builds made since the last call (``recent``: newest last)."""
        new = attempts - self._seen_attempts
        if new <= 0:
            return
        self._seen_attempts = attempts
        stats = list(recent)[-new:]
        for s in stats:
            self.builds.labels("ok" if s.ok else "error").inc()
            for stage, ms in zip(
                _STAGES, (s.resolve_ms, s.translate_ms, s.publish_ms, s.total_ms), strict=True
            ):
                self.build_seconds.labels(stage).observe(ms / 1000)
        if stats:
            self.build_failing.set(0 if stats[-1].ok else 1)

    def snapshot_published(self, stats: BuildStats, snapshot: Snapshot | None) -> None:
        """A snapshot was published from ``stats``' build."""
        self.published.inc()
        self.world_version.set(stats.world_version)
        if snapshot is None:
            return
        changed = {t: snapshot.version(t) for t in snapshot.changed}
        for type_url, ts in snapshot.types.items():
            name = type_name(type_url)
            self.snapshot_resources.labels(name).set(len(ts.entries))
            version = ts.version
            old = self._versions.get(type_url)
            if old != version:
                if old is not None:
                    self.snapshot_version.remove(name, old)
                self.snapshot_version.labels(name, version).set(1)
                self._versions[type_url] = version
        self.change_to_ack.published(stats.changed_at, changed)

    def record_catalog_writes(self, target: str, operation: str, count: int = 1) -> None:
        """Catalog sync wrote ``count`` objects (a :class:`CatalogWriteRecorder`)."""
        self.catalog_writes.labels(target, operation).inc(count)

    # -- scraping ----------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))

    def names(self) -> Iterator[str]:
        """Every metric family name registered (for tests and docs)."""
        for metric in self.registry.collect():
            yield metric.name
