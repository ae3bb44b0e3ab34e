"""The ``meshbridge`` command: serve, bootstrap, resolve, sync-catalog, version, demo.

This is the one place where ``bridge`` and ``adapters`` meet: the CLI picks
the source (``dir:PATH`` here, ``kubernetes`` from ``adapters.kubernetes``),
adds the mesh identity providers and the Consul part the config turns on
(:mod:`bridge.cli.wiring`) and hands them to :class:`bridge.app.Bridge`.

Catalog sync writes only while this replica leads: with the directory source
there is one replica by definition (:class:`bridge.leader.AlwaysLeader`);
with the Kubernetes source, the Lease ``meshbridge-catalog-sync`` in
``gateway.namespace`` (:mod:`adapters.kubernetes.leader`). With the
Kubernetes source, diagnostics on Services are also written as Kubernetes
Events (:mod:`adapters.kubernetes.events`), by the leader only; with catalog
sync off the replicas elect that writer on the Lease ``meshbridge-events``.
CA identity modes take the gateway's token from ``*.token_file`` or, with the Kubernetes
source, from TokenRequest (:mod:`adapters.kubernetes.tokens`).

Exit codes: 0 success (``resolve`` exits 0 even when Services have
diagnostics — they are the output), 1 a runtime failure, 2 a usage or
config error (the message names the bad key or argument).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

import bridge
from adapters.consul.client import ConsulClient
from bridge.app import DEFAULT_DRAIN, Bridge, Source, SourceFactory, serve_until_signal
from bridge.cli.wiring import (
    ConsulPart,
    IdentitySource,
    LeaseSource,
    ca_identity_providers,
    consul_client_settings,
    kubernetes_writer,
    lease_elector,
    needs_token_request,
    roots_from_objects,
    token_request,
)
from bridge.config import Config, load_config
from bridge.errors import ConfigError, MeshbridgeError
from bridge.identity.files import FilesProvider, files_dir
from bridge.leader import AlwaysLeader, LeaderGate
from bridge.logs import configure as configure_logging
from bridge.model.diagnostics import Diagnostic
from bridge.model.ir import Mesh, Resolved
from bridge.model.world import World
from bridge.pipeline import BuildStats
from bridge.sources.dir import DirSource
from bridge.store import Store

log = logging.getLogger("bridge.cli")

# Called with every published build (World, resolution, build figures).
Observer = Callable[[World, Resolved, BuildStats], None]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(MeshbridgeError):
    """Bad command-line arguments (exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshbridge",
        description="xDS control plane for an edge Envoy beside a service mesh.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the control plane")
    _source_args(serve)
    serve.add_argument("--xds", metavar="ADDR", help="xDS address (HOST:PORT or unix:PATH)")
    serve.add_argument("--admin", metavar="ADDR", help="admin address (HOST:PORT)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.add_argument(
        "--drain",
        type=float,
        default=DEFAULT_DRAIN,
        metavar="SECONDS",
        help=f"on SIGTERM, serve open xDS streams this long (default {DEFAULT_DRAIN:g})",
    )

    boot = sub.add_parser("bootstrap", help="print an Envoy bootstrap that connects over ADS")
    boot.add_argument("--xds", metavar="ADDR", required=True, help="the bridge's xDS address")
    boot.add_argument("--node-id", required=True, help="Envoy's node id")
    boot.add_argument("--listen-port", type=int, default=8080, help="gateway listener port")
    boot.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port")
    boot.add_argument("--delta", action="store_true", help="use delta (incremental) ADS")

    res = sub.add_parser("resolve", help="show what each Service resolves to, once")
    _source_args(res)
    res.add_argument("--output", "-o", choices=["table", "json"], default="table")
    res.add_argument("services", nargs="*", metavar="NS/SVC", help="only these (or NS for all)")

    res.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for each mesh CA and for Consul (default 10)",
    )

    cat = sub.add_parser("sync-catalog", help="sync the Consul catalog once (see catalog_sync)")
    _source_args(cat)
    cat.add_argument(
        "--dry-run", action="store_true", help="print the plan, write nothing to Consul"
    )

    sub.add_parser("version", help="print the version")

    sub.add_parser("demo", help="run the embedded demo (needs envoy on PATH)")
    return p


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (YAML)")
    p.add_argument(
        "--source", metavar="SOURCE", help="kubernetes or dir:PATH (default: the config's)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bootstrap":
            return _bootstrap(args)
        if args.command == "resolve":
            return _resolve(args)
        if args.command == "sync-catalog":
            from bridge.cli.catalog import sync_catalog

            return sync_catalog(args)
        if args.command == "version":
            print(f"meshbridge {bridge.__version__}")
            return EXIT_OK
        if args.command == "demo":
            from bridge.demo import run_demo

            return run_demo()
    except (ConfigError, UsageError) as exc:
        print(f"meshbridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MeshbridgeError as exc:
        print(f"meshbridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


# -- sources -------------------------------------------------------------------


def _source_spec(args: argparse.Namespace, config: Config) -> str:
    spec: str = args.source or config.source
    if spec != "kubernetes" and not (spec.startswith("dir:") and len(spec) > 4):
        raise UsageError(f"--source {spec!r}: expected 'kubernetes' or 'dir:PATH'")
    return spec


class _KubernetesSource:
    """The Kubernetes adapter as a :class:`bridge.app.Source`."""

    name = "kubernetes"

    def __init__(self, store: Store, config: Config) -> None:
        try:
            from adapters.kubernetes.source import run_kubernetes_source
        except ImportError as exc:
            raise UsageError(
                "kubernetes source not available in this build; use --source dir:PATH"
            ) from exc
        self._run = run_kubernetes_source
        self.store = store
        self.config = config

    async def run(self) -> None:
        # Runs until cancelled; the adapter stops its watches on the way out.
        await self._run(self.store, self.config, asyncio.Event())


def identity_providers(store: Store, config: Config) -> list[FilesProvider]:
    """The providers of the gateway's mesh identities that this build can run.

    ``files:DIR`` modes (an istio-agent style ``OUTPUT_CERTS`` directory) for
    Istio, Linkerd and Consul (``consul.identity``). Meshes with no provider
    here get a diagnostic on each Service that needs them ("no identity for
    mesh ... yet"), never plaintext.
    """
    out = []
    for mesh, mode, trust_domain in (
        (Mesh.ISTIO, config.istio.identity, config.istio.trust_domain),
        (Mesh.LINKERD, config.linkerd.mode, config.linkerd.trust_domain),
        (Mesh.CONSUL, config.consul.identity, config.consul.trust_domain),
    ):
        directory = files_dir(mode)
        if directory is not None:
            out.append(FilesProvider(mesh, store, directory, trust_domain=trust_domain))
    return out


def leader_gate(spec: str, config: Config) -> tuple[LeaderGate, Source | None]:
    """Who may write (the catalog, Kubernetes Events), and the source that campaigns for it.

    The directory source means one replica: :class:`AlwaysLeader`. With the
    Kubernetes source, a Lease in ``gateway.namespace`` — always, since the
    Events need one writer among the replicas even with catalog sync off
    (:func:`adapters.kubernetes.leader.lease_settings_for` names it).
    """
    if spec != "kubernetes":
        return AlwaysLeader(), None
    elector = lease_elector(config)
    return elector, LeaseSource(elector)


def kubernetes_events(config: Config, leader: LeaderGate) -> tuple[Source, Observer]:
    """Diagnostics as Kubernetes Events: a source (takes over on leading, flushes on
    shutdown) and the pipeline observer that sees every build."""
    from adapters.kubernetes.events import diagnostic_events

    events = diagnostic_events(config, leader)
    return events, events.observe


def _source_factory(
    spec: str,
    config: Config,
    consul_parts: list[ConsulPart] | None = None,
    observers: list[Observer] | None = None,
) -> SourceFactory:
    def factory(store: Store) -> list[Source]:
        sources: list[Source] = [IdentitySource(p) for p in identity_providers(store, config)]
        client = ConsulClient(consul_client_settings(config))
        tokens = (
            token_request(config) if spec == "kubernetes" and needs_token_request(config) else None
        )
        for provider in ca_identity_providers(store, config, client, tokens=tokens):
            wait = store if roots_from_objects(provider) else None
            sources.append(IdentitySource(provider, store=wait))
        writer = (
            kubernetes_writer(config)
            if spec == "kubernetes" and config.catalog_sync.to_kubernetes.enabled
            else None
        )
        leader, campaign = leader_gate(spec, config)
        consul = ConsulPart(store, config, client, leader=leader, writer=writer)
        sources.append(consul)
        if campaign is not None:
            sources.append(campaign)
        if consul_parts is not None:
            consul_parts.append(consul)
        if spec == "kubernetes":
            events, observe = kubernetes_events(config, leader)
            if observers is not None:
                observers.append(observe)
            return [*sources, events, _KubernetesSource(store, config)]
        dir_source = DirSource(
            store,
            spec.removeprefix("dir:"),
            poll_interval=config.dir_source.poll_interval_ms / 1000,
        )
        return [*sources, dir_source]

    return factory


# -- serve -----------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    config = load_config(args.config)
    spec = _source_spec(args, config)
    consul_parts: list[ConsulPart] = []
    observers: list[Observer] = []
    app = Bridge(
        config,
        _source_factory(spec, config, consul_parts, observers),
        xds_address=args.xds,
        admin_address=args.admin,
        drain=args.drain,
    )
    app.pipeline.observers.extend(observers)
    for part in consul_parts:
        app.pipeline.observers.append(part.observe)
        part.report_writes(app.metrics.record_catalog_writes)
    return asyncio.run(_serve_until_signal(app))


async def _serve_until_signal(app: Bridge) -> int:
    log.info("meshbridge %s starting", bridge.__version__)
    return EXIT_OK if await serve_until_signal(app) else EXIT_FAILED


# -- bootstrap ---------------------------------------------------------------------


def _bootstrap(args: argparse.Namespace) -> int:
    from bridge.bootstrap import bootstrap_yaml

    sys.stdout.write(
        bootstrap_yaml(
            xds=args.xds,
            node_id=args.node_id,
            listen_port=args.listen_port,
            admin_port=args.admin_port,
            delta=args.delta,
        )
    )
    return EXIT_OK


# -- resolve -----------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> int:
    from bridge.cli.show import other_diagnostics, render_json, render_table, rows

    for sel in args.services:
        ns, _, name = sel.partition("/")
        if not ns or "/" in name:
            raise UsageError(f"{sel!r}: expected NS/SVC or NS")
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be greater than 0")
    config = load_config(args.config)
    spec = _source_spec(args, config)
    world, resolved, problems = asyncio.run(_resolve_once(spec, config, args.timeout))
    table = rows(resolved, args.services)
    extra = sorted({*other_diagnostics(resolved, world.source_diagnostics), *problems})
    if args.output == "json":
        sys.stdout.write(render_json(table, extra))
    else:
        sys.stdout.write(render_table(table, extra))
    if args.services and not table:
        print(f"meshbridge: no Service matches {' '.join(args.services)}", file=sys.stderr)
    return EXIT_OK


async def load_objects(store: Store, spec: str, config: Config) -> None:
    """Load the Kubernetes objects once: list the cluster, or read the directory."""
    if spec == "kubernetes":
        await _load_kubernetes_once(store, config)
    else:
        DirSource(store, spec.removeprefix("dir:")).load()


async def _resolve_once(
    spec: str, config: Config, limit_s: float
) -> tuple[World, Resolved, list[Diagnostic]]:
    """Objects, identities and Consul instances read once (each bounded), then resolved."""
    from bridge.cli.wiring import consul_once, issue_once
    from bridge.pipeline import default_resolve

    store = Store()
    await load_objects(store, spec, config)
    for files in identity_providers(store, config):
        files.poll()  # load the identity once, for its expiry and the SANs it implies
    settings = config.resolve_settings()
    resolve = default_resolve()
    tokens = token_request(config) if spec == "kubernetes" and needs_token_request(config) else None
    async with ConsulClient(consul_client_settings(config)) as client:
        providers = ca_identity_providers(store, config, client, tokens=tokens)
        problems = [
            d
            for found in await asyncio.gather(*(issue_once(p, limit_s) for p in providers))
            for d in found
        ]
        world, changed = store.take()
        resolved = resolve(world, settings, None, changed)
        if await consul_once(store, config, client, world, resolved, limit_s, problems):
            world, changed = store.take()
            resolved = resolve(world, settings, resolved, changed)
    return world, resolved, problems


async def _load_kubernetes_once(store: Store, config: Config, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """List the cluster once (every watched kind and scope), then stop watching."""
    try:
        from adapters.kubernetes.source import KubernetesSource, KubernetesSourceSettings
    except ImportError as exc:
        raise UsageError(
            "kubernetes source not available in this build; use --source dir:PATH"
        ) from exc
    source = KubernetesSource(store, KubernetesSourceSettings.from_config(config))
    await source.start()  # raises SourceError when no cluster config is found
    try:
        async with asyncio.timeout(timeout):
            await source.wait_synced()
    except TimeoutError as exc:
        problems = sorted(
            f"{name}: {st['last_error']}"
            for name, st in source.status().items()
            if not st["synced"] and st["last_error"]
        )
        detail = "; ".join(problems) or "no answer from the API server"
        raise MeshbridgeError(
            f"the cluster did not finish listing within {timeout:.0f}s ({detail})"
        ) from exc
    finally:
        await source.stop()
