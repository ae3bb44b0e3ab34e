"""The running control plane, assembled from its parts.

:class:`Bridge` wires one :class:`~bridge.store.Store`, the sources that feed
it, the :class:`~bridge.pipeline.Pipeline`, the snapshot cache, the xDS
servers and the admin server, and starts and stops them together. ``meshbridge
serve`` and ``meshbridge demo`` both run one.

Sources are given as a factory taking the store, so the CLI can wire
adapters (which ``bridge`` itself never imports) next to the directory
source. A source is anything with a ``name`` and an ``async run()`` that
registers itself with the store, marks itself synced after its initial load
and keeps applying changes until cancelled.

If a source or the pipeline task dies (a bug: they handle their own I/O
errors), :attr:`Bridge.failed` is set and the CLI exits non-zero rather than
serve a control plane that silently stopped updating.

The admin server (when an address is given) serves ``/healthz``, ``/readyz``,
``/metrics`` (:mod:`bridge.metrics`, a registry per Bridge), ``/debug`` and
``/debug/snapshot.json`` (:mod:`bridge.debug`).

Stopping drains: :meth:`Bridge.stop` first stops the xDS servers from
accepting new streams while open ones keep being served — sources and the
pipeline still run, so a change made during the drain still reaches them —
for ``drain`` seconds, then cancels what is left; ``/readyz`` answers 503
from the start of the drain. :func:`serve_until_signal` does this on
SIGTERM or SIGINT and returns the exit code; a second SIGTERM or SIGINT
during the drain (:meth:`Bridge.cut_drain`) closes the open streams at once
and the stop finishes promptly, still a clean exit.

``/debug`` takes ``?q=`` (a server-side Service search) and
``/debug/snapshot.json`` takes ``?type=`` and ``?name=``; the JSON is rendered
in a worker thread, one render at a time, and kept per snapshot and query
(:class:`bridge.debug.SnapshotJson`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bridge import debug
from bridge.admin import AdminServer, Request, Response, health_handlers
from bridge.config import Config, parse_address
from bridge.errors import ConfigError
from bridge.identity.provider import IdentityProvider, ProviderStatus
from bridge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bridge.metrics import Metrics
from bridge.model.diagnostics import Diagnostic
from bridge.model.ir import Resolved
from bridge.model.secrets import PrivateKey
from bridge.model.world import World
from bridge.pipeline import BuildStats, Pipeline, ResolveFn, SnapshotPublisher
from bridge.server.ads import AdsServer
from bridge.server.cache import AccessPolicy, SnapshotCache
from bridge.server.listen import ServerTls, XdsServer
from bridge.store import Store

log = logging.getLogger(__name__)

DEFAULT_DRAIN = 3.0  # seconds open xDS streams are still served after SIGTERM


class Source(Protocol):
    name: str

    async def run(self) -> None: ...


SourceFactory = Callable[[Store], Sequence[Source]]


def xds_addresses(config: Config, override: str | None = None) -> list[str]:
    """The addresses to serve xDS on: TCP (``override`` or the config's) and the Unix socket."""
    out: list[str] = []
    tcp = override if override is not None else config.xds.address
    if tcp:
        out.append(tcp)
    if config.xds.unix_socket:
        out.append(f"unix:{config.xds.unix_socket}")
    if not out:
        raise ConfigError("set an address or a unix_socket to serve xDS on", "xds.address")
    return out


def _server_tls(config: Config) -> ServerTls | None:
    tls = config.xds.tls
    if not (tls.cert_file or tls.key_file or tls.ca_file):
        return None
    for key in ("cert_file", "key_file", "ca_file"):
        if not getattr(tls, key):
            raise ConfigError(
                "mTLS needs cert_file, key_file and ca_file (the CA clients must chain to)",
                f"xds.tls.{key}",
            )
    try:
        return ServerTls(
            cert_chain_pem=Path(tls.cert_file).read_bytes(),
            private_key=PrivateKey(Path(tls.key_file).read_bytes()),
            client_ca_pem=Path(tls.ca_file).read_bytes(),
        )
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}", "xds.tls") from exc


class Bridge:
    """Store, sources, pipeline, cache, xDS and admin servers: started and stopped together."""

    def __init__(
        self,
        config: Config,
        sources: SourceFactory,
        *,
        xds_address: str | None = None,
        admin_address: str | None = None,
        resolve: ResolveFn | None = None,
        drain: float = DEFAULT_DRAIN,
    ) -> None:
        self.config = config
        self.drain = drain
        self.draining = False
        self.started_at = time.time()
        self.store = Store()
        self.sources = list(sources(self.store))
        self.metrics = Metrics(
            store=self.store, world=lambda: self.pipeline.world, diagnostics=self.diagnostics
        )
        allowed = frozenset(config.xds.allowed_node_ids) or None
        self.cache = SnapshotCache(policy=AccessPolicy(allowed_node_ids=allowed))
        self.ads = AdsServer(self.cache, observer=self.metrics.xds_observer)
        self.publisher = SnapshotPublisher(self.cache)
        self.pipeline = Pipeline(
            self.store,
            config.resolve_settings(),
            self.publisher,
            hold_off=config.debounce.hold_off_ms / 1000,
            max_delay=config.debounce.max_delay_ms / 1000,
            resolve_fn=resolve,
        )
        self.pipeline.observers.append(self._published)
        tls = _server_tls(config)
        self.xds_servers = [
            XdsServer(self.ads, addr, tls=None if addr.startswith("unix:") else tls)
            for addr in xds_addresses(config, xds_address)
        ]
        admin = admin_address if admin_address is not None else config.admin.address
        self.admin: AdminServer | None = None
        if admin:
            host, port = parse_address(admin)
            self.admin = AdminServer(host, port)
            for path, handler in health_handlers(self.readiness).items():
                self.admin.route(path, handler)
            self.admin.route("/metrics", self._metrics_page)
            self.admin.route_request("/debug", self._debug_page)
            self.admin.route_request(debug.SNAPSHOT_PATH, self._snapshot_page)
        self.snapshot_pages = debug.SnapshotJson()
        # One snapshot.json render at a time: a second request for the same page
        # waits and is answered from the cache instead of rendering it again.
        self._snapshot_lock = asyncio.Lock()
        self._cut = asyncio.Event()  # set by cut_drain(): end the drain now
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def xds_target(self) -> str:
        """What Envoy dials for the first xDS server (bound port filled in)."""
        return self.xds_servers[0].target

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: shutting down, not accepting new xDS streams"
        waiting = sorted(name for name, ok in self.store.sync_state().items() if not ok)
        if waiting:
            return False, f"waiting for the initial sync of: {', '.join(waiting)}"
        if not self.pipeline.ready:
            if self.pipeline.last_error is not None:
                return False, f"first snapshot failed to build: {self.pipeline.last_error.message}"
            return False, "waiting for the first snapshot"
        return True, f"ready: {self.pipeline.published} snapshot(s) published"

    def diagnostics(self) -> list[Diagnostic]:
        """Every diagnostic of the last successful build and of the sources now."""
        out: set[Diagnostic] = set()
        if self.pipeline.resolved is not None:
            out.update(self.pipeline.resolved.diagnostics)
            for res in self.pipeline.resolved.services.values():
                out.update(res.diagnostics)
        if self.pipeline.world is not None:
            out.update(self.pipeline.world.source_diagnostics)
        return sorted(out)

    def identities(self) -> list[ProviderStatus]:
        """The status of every mesh identity provider among the sources."""
        out = []
        for source in self.sources:
            provider = getattr(source, "provider", source)
            if isinstance(provider, IdentityProvider):
                out.append(provider.status())
        return sorted(out, key=lambda s: s.mesh.value)

    def _published(self, world: World, resolved: Resolved, stats: BuildStats) -> None:
        first = self.pipeline.published == 1
        self.metrics.builds_seen(self.pipeline.attempts, self.pipeline.builds)
        self.metrics.snapshot_published(stats, self.publisher.snapshot)
        log.info(
            "snapshot %d published (world version %d, %d change(s), built in %.1f ms)",
            self.pipeline.published,
            world.version,
            stats.changed,
            stats.total_ms,
            extra={"world_version": world.version, "build_ms": round(stats.total_ms, 3)},
        )
        if first:
            log.info("ready: every source synced and the first snapshot published")

    def _debug_page(self, request: Request) -> Response:
        unknown = sorted(set(request.query) - {"q"})
        if unknown:
            return Response.text(
                f"unknown parameter(s) {', '.join(unknown)}: /debug takes q=<search>\n", 400
            )
        return Response(200, debug.page(self, query=request.query.get("q", "")), debug.HTML)

    async def _snapshot_page(self, request: Request) -> Response:
        try:
            query = debug.SnapshotQuery.parse(request.query)
        except ValueError as exc:
            return Response.text(f"{exc}\n", 400)
        # A whole type at 10k clusters is seconds of json_format (bench/admin_pages.py):
        # off the loop that serves xDS. Snapshots and Worlds are immutable, so a
        # thread may read them.
        async with self._snapshot_lock:
            body = await asyncio.to_thread(self.snapshot_pages.render, self, query)
        return Response(200, body, debug.JSON)

    def _metrics_page(self) -> Response:
        # Failed builds reach no observer: count them at scrape time too.
        self.metrics.builds_seen(self.pipeline.attempts, self.pipeline.builds)
        return Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)

    def route(self, path: str, handler: Callable[[], Response]) -> None:
        """Add an admin page (no-op without an admin server)."""
        if self.admin is not None:
            self.admin.route(path, handler)

    async def start(self) -> None:
        started: list[XdsServer] = []
        try:
            for server in self.xds_servers:
                await server.start()
                started.append(server)
            if self.admin is not None:
                await self.admin.start()
        except BaseException:
            for server in started:
                await server.stop(0)
            raise
        self._spawn("pipeline", self.pipeline.run())
        for source in self.sources:
            self._spawn(f"source {source.name}", source.run())

    def _spawn(self, what: str, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=what)  # type: ignore[arg-type]

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is None:
                exc = RuntimeError(f"{what} stopped unexpectedly")
            log.error("%s failed; stopping", what, exc_info=exc)
            self.failure = exc
            self.failed.set()

        task.add_done_callback(done)
        self._tasks.append(task)

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop everything (see the module docstring).

        ``grace`` (default: ``drain``) is how long open streams are still
        served; new streams are refused from the start.
        """
        grace = self.drain if grace is None else grace
        self.draining = True
        if grace > 0 and self.ads.status():
            log.info(
                "draining: refusing new xDS streams, serving %d open stream(s) for %.1fs",
                len(self.ads.status()),
                grace,
            )
        if self._cut.is_set():
            grace = 0
        # Sources and the pipeline keep running meanwhile: open streams still get updates.
        await self._drain(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.admin is not None:
            await self.admin.stop()

    def cut_drain(self) -> None:
        """End a drain now (a second signal): open streams are closed at once."""
        if not self._cut.is_set():
            self._cut.set()
            if self.draining:
                log.info("second signal: cutting the drain short")

    async def _drain(self, grace: float) -> None:
        # grpc.aio servers hold their stop: stop(grace) refuses new streams at once,
        # and a later stop() with a smaller grace ends the first one sooner (gRPC
        # documents this). XdsServer.stop forgets its gRPC server as it begins, so
        # keep hold of them here to shorten the drain on a second signal.
        grpc_servers = [s._server for s in self.xds_servers if s._server is not None]
        stops: asyncio.Future[Any] = asyncio.gather(
            *(server.stop(grace) for server in self.xds_servers)
        )
        cut: asyncio.Future[Any] = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({stops, cut}, return_when=asyncio.FIRST_COMPLETED)
            if not stops.done():
                await asyncio.gather(*(g.stop(None) for g in grpc_servers))
            await stops
        finally:
            cut.cancel()
            await asyncio.gather(cut, return_exceptions=True)


async def wait_ready(bridge: Bridge, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until the first snapshot is published (or the bridge fails)."""
    async with asyncio.timeout(timeout):
        published = asyncio.ensure_future(bridge.pipeline.wait_published(0))
        failed = asyncio.ensure_future(bridge.failed.wait())
        try:
            await asyncio.wait({published, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            published.cancel()
            failed.cancel()
            await asyncio.gather(published, failed, return_exceptions=True)
    if bridge.failure is not None:
        raise bridge.failure


async def serve_until_signal(
    app: Bridge, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
) -> bool:
    """Start ``app``, run until one of ``signals`` or a failure, then drain and stop.

    Returns whether it stopped cleanly (a signal, not a failure).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            app.cut_drain()  # a second signal: don't wait out the drain
        stop.set()

    installed = []
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
        installed.append(sig)
    try:
        await app.start()
        log.info("serving xDS on %s", ", ".join(s.target for s in app.xds_servers))
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(app.failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
            await asyncio.gather(stopped, failed, return_exceptions=True)
            if stop.is_set():
                log.info("signal received: stopping (drain %.1fs)", app.drain)
            await app.stop()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if app.failure is not None:
        return False
    log.info("stopped")
    return True
