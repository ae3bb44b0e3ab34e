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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from bridge.admin import AdminServer, Response, health_handlers
from bridge.config import Config, parse_address
from bridge.errors import ConfigError
from bridge.model.secrets import PrivateKey
from bridge.pipeline import Pipeline, ResolveFn, SnapshotPublisher
from bridge.server.ads import AdsServer
from bridge.server.cache import AccessPolicy, SnapshotCache
from bridge.server.listen import ServerTls, XdsServer
from bridge.store import Store

log = logging.getLogger(__name__)


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
    ) -> None:
        self.config = config
        self.store = Store()
        self.sources = list(sources(self.store))
        allowed = frozenset(config.xds.allowed_node_ids) or None
        self.cache = SnapshotCache(policy=AccessPolicy(allowed_node_ids=allowed))
        self.ads = AdsServer(self.cache)
        self.publisher = SnapshotPublisher(self.cache)
        self.pipeline = Pipeline(
            self.store,
            config.resolve_settings(),
            self.publisher,
            hold_off=config.debounce.hold_off_ms / 1000,
            max_delay=config.debounce.max_delay_ms / 1000,
            resolve_fn=resolve,
        )
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
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def xds_target(self) -> str:
        """What Envoy dials for the first xDS server (bound port filled in)."""
        return self.xds_servers[0].target

    def readiness(self) -> tuple[bool, str]:
        waiting = sorted(name for name, ok in self.store.sync_state().items() if not ok)
        if waiting:
            return False, f"waiting for the initial sync of: {', '.join(waiting)}"
        if not self.pipeline.ready:
            if self.pipeline.last_error is not None:
                return False, f"first snapshot failed to build: {self.pipeline.last_error.message}"
            return False, "waiting for the first snapshot"
        return True, f"ready: {self.pipeline.published} snapshot(s) published"

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

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for server in self.xds_servers:
            await server.stop(grace)
        if self.admin is not None:
            await self.admin.stop()


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
