"""The pipeline: the one task that turns store changes into published snapshots.

Loop: wait for a change in the :class:`bridge.store.Store`, debounce (wait
for ``hold_off`` seconds of quiet, but never more than ``max_delay`` after
the first change of a batch), then — once every source has finished its
initial sync, and not before — take a new World and the refs that changed,
``resolve`` (incrementally, from the previous result and the changed refs),
``translate`` (incrementally, from the previous translation), build a
snapshot and publish it.

Last good wins: if anything in a build raises (resolve, translate, the
snapshot, its consistency check), the previously published snapshot stays
live, the error is logged once and kept for ``/debug`` (:attr:`last_error`),
and the refs of that batch are carried into the next build so nothing is
lost once the cause is gone. A source outage never reaches here as an empty
world: sources keep their objects when they cannot read (see the store and
the sources).

Tests and the admin server observe :attr:`Pipeline.published` (a counter)
through :meth:`Pipeline.wait_published` instead of sleeping; :attr:`resolved`
is the latest successful :class:`Resolved` (``meshbridge resolve``,
``/debug``), and :attr:`builds` keeps recent build durations.

This module does no I/O of its own; it wires pure stages to the cache.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bridge.model.ir import Ir, Resolved
from bridge.model.k8s import ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve import resolve
from bridge.server.cache import DEFAULT_GROUP, Snapshot, SnapshotCache
from bridge.store import Store
from bridge.xds.resources import Resources
from bridge.xds.translate import Translation, translate

log = logging.getLogger(__name__)


# Above this many objects made (net) during one build, they are moved straight
# to the oldest generation as the collector resumes (see _collector_paused). A
# one-change build makes a few thousand; a full build of 10k Services a million.
_PROMOTE_AFTER = 100_000


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one build, then restore it as it was.

    A full build allocates about a million small objects (IR values, protobuf
    messages, memo entries) that all outlive it. Each 700 allocations start a
    young-generation pass, and every tenth of those an older one, which at
    this heap size keeps walking the World (millions of objects) and the new
    results for nothing: none of it is cyclic garbage, reference counting
    frees what the build drops. On the 10k-Service World this roughly halves
    a full build (``docs/benchmarks.md``).

    After a large build the young generation holds all of it, and resuming
    would walk it twice for nothing (a young pass of ~60-110 ms on the first
    allocation, a middle one soon after) and count it towards the next full
    collection (~0.6 s at that heap size). Instead it is moved to the oldest
    generation in place: ``gc.freeze()`` then at once ``gc.unfreeze()`` (two
    list splices). Nothing stays frozen: every object remains collectable and
    is examined by every later full collection, which keeps its own cadence;
    cyclic garbage young at that moment waits for that full collection rather
    than the next young pass. Skipped when something else keeps objects
    frozen (unfreezing would release them) and after small builds, whose few
    objects take the ordinary path.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_count()[0] > _PROMOTE_AFTER and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


class ResolveFn(Protocol):
    def __call__(
        self,
        world: World,
        settings: ResolveSettings,
        previous: Resolved | None,
        changed: frozenset[ObjectRef],
    ) -> Resolved: ...


TranslateFn = Callable[[Ir, Translation | None], Translation]


def default_resolve() -> ResolveFn:
    """The real resolver (:func:`bridge.resolve.resolve`); tests inject others."""
    return resolve


class SnapshotPublisher:
    """Builds a :class:`Snapshot` from resources and sets it for one node group.

    The cache checks consistency before it accepts a snapshot; on any error
    the previous snapshot stays the cache's and the base for the next build.
    """

    def __init__(self, cache: SnapshotCache, group: str = DEFAULT_GROUP) -> None:
        self.cache = cache
        self.group = group
        self.snapshot: Snapshot | None = None

    def __call__(self, resources: Resources) -> Snapshot:
        snapshot = Snapshot.from_resources(resources, self.snapshot)
        self.cache.set_snapshot(self.group, snapshot)  # raises ConsistencyError
        self.snapshot = snapshot
        return snapshot


@dataclass(frozen=True, slots=True)
class BuildStats:
    """One build: what it took, in milliseconds."""

    world_version: int
    changed: int  # refs that changed since the previous successful build
    resolve_ms: float
    translate_ms: float
    publish_ms: float
    ok: bool
    error: str = ""
    # Monotonic time (the store's clock) of the earliest source change this build
    # carries, failed batches included; None when the build carried no change.
    changed_at: float | None = None

    @property
    def total_ms(self) -> float:
        return self.resolve_ms + self.translate_ms + self.publish_ms


@dataclass(frozen=True, slots=True)
class BuildError:
    """The last failed build, for ``/debug``; cleared by the next success."""

    stage: str  # "resolve", "translate" or "publish"
    message: str
    world_version: int


class Pipeline:
    """One task; see the module docstring. Start with :meth:`run`."""

    def __init__(
        self,
        store: Store,
        settings: ResolveSettings,
        publish: Callable[[Resources], object],
        *,
        hold_off: float = 0.05,
        max_delay: float = 0.5,
        resolve_fn: ResolveFn | None = None,
        translate_fn: TranslateFn | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hold_off = hold_off
        self.max_delay = max(max_delay, hold_off)
        self._publish = publish
        self._resolve = resolve_fn or default_resolve()
        self._translate: TranslateFn = translate_fn or translate
        self._clock = clock
        self.resolved: Resolved | None = None
        self.translation: Translation | None = None
        self.world: World | None = None
        self.published = 0  # successful publishes
        self.attempts = 0  # builds tried (successful or not)
        self.held = 0  # batches held back because a source had not synced yet
        self.last_error: BuildError | None = None
        self.builds: collections.deque[BuildStats] = collections.deque(maxlen=64)
        self._pending: set[ObjectRef] = set()
        self._pending_since: float | None = None  # the store's changed_at, kept across failures
        self._cond = asyncio.Condition()
        self._logged_error: str | None = None
        # Called after each successful publish with (world, resolved, stats):
        # the Consul watch set, catalog sync and metrics follow the world here.
        self.observers: list[Callable[[World, Resolved, BuildStats], None]] = []

    # -- observing -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every source synced and a first snapshot published."""
        return self.published > 0

    async def wait_published(self, after: int) -> int:
        """Wait until more than ``after`` snapshots were published; returns the count."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.published > after)
            return self.published

    async def wait_attempted(self, after: int) -> int:
        """Wait until more than ``after`` builds were tried (successful or not)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.attempts > after)
            return self.attempts

    async def wait_held(self, after: int) -> int:
        """Wait until more than ``after`` batches were held back for the initial sync."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.held > after)
            return self.held

    # -- running ---------------------------------------------------------------

    async def run(self) -> None:
        """Build and publish on every (debounced) change until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self.store.wait()
            first = loop.time()
            while True:
                # Hold off until the burst is quiet, but never beyond the cap.
                left = first + self.max_delay - loop.time()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(min(self.hold_off, left)):
                        await self.store.wait()
                except TimeoutError:
                    break
            if not self.store.synced:
                self.held += 1  # changes stay in the store until the last source syncs
            else:
                self.build_once()
            async with self._cond:
                self._cond.notify_all()

    def build_once(self) -> bool:
        """Take the store's changes and build; returns whether a snapshot was published.

        The cyclic garbage collector is paused for the build (see
        :func:`_collector_paused`).
        """
        with _collector_paused():
            return self._build_once()

    def _build_once(self) -> bool:
        since = self.store.changed_at
        world, changed = self.store.take()
        self._pending |= changed
        if since is not None and (self._pending_since is None or since < self._pending_since):
            self._pending_since = since
        pending = frozenset(self._pending)
        self.attempts += 1
        stage = "resolve"
        t0 = self._clock()
        t1 = t2 = t0
        try:
            resolved = self._resolve(world, self.settings, self.resolved, pending)
            t1 = self._clock()
            stage = "translate"
            translation = self._translate(resolved.ir, self.translation)
            t2 = self._clock()
            stage = "publish"
            self._publish(translation.resources)
        except Exception as exc:
            t3 = self._clock()
            message = f"{type(exc).__name__}: {exc}"
            self.last_error = BuildError(stage, message, world.version)
            self.builds.append(
                BuildStats(
                    world.version,
                    len(pending),
                    (t1 - t0) * 1000,
                    (t2 - t1) * 1000,
                    (t3 - t2) * 1000,
                    ok=False,
                    error=message,
                    changed_at=self._pending_since,
                )
            )
            if message != self._logged_error:  # log a repeated failure once
                self._logged_error = message
                log.error(
                    "building the snapshot failed in %s (world version %d); "
                    "the last good snapshot stays live",
                    stage,
                    world.version,
                    exc_info=exc,
                )
            return False
        t3 = self._clock()
        self._pending.clear()
        changed_at, self._pending_since = self._pending_since, None
        self.world = world
        self.resolved = resolved
        self.translation = translation
        self.published += 1
        if self.last_error is not None:
            log.info("snapshot build recovered (world version %d)", world.version)
        self.last_error = None
        self._logged_error = None
        stats = BuildStats(
            world.version,
            len(pending),
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
            ok=True,
            changed_at=changed_at,
        )
        self.builds.append(stats)
        for observer in self.observers:
            try:
                observer(world, resolved, stats)
            except Exception:  # an observer's bug must not stop publishing
                log.exception("pipeline observer %r failed", observer)
        return True
