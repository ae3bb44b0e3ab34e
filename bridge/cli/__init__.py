"""The ``meshbridge`` command: serve, bootstrap, resolve, version, demo.

This is the one place where ``bridge`` and ``adapters`` meet: the CLI picks
the source (``dir:PATH`` here, ``kubernetes`` from ``adapters.kubernetes``)
and hands it to :class:`bridge.app.Bridge`.

Exit codes: 0 success (``resolve`` exits 0 even when Services have
diagnostics — they are the output), 1 a runtime failure, 2 a usage or
config error (the message names the bad key or argument).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import bridge
from bridge.app import DEFAULT_DRAIN, Bridge, Source, SourceFactory, serve_until_signal
from bridge.config import Config, load_config
from bridge.errors import ConfigError, MeshbridgeError
from bridge.identity.files import FilesProvider, files_dir
from bridge.logs import configure as configure_logging
from bridge.model.ir import Mesh
from bridge.sources.dir import DirSource
from bridge.store import Store

log = logging.getLogger("bridge.cli")

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


class _IdentitySource:
    """An identity provider as a :class:`bridge.app.Source`."""

    def __init__(self, provider: FilesProvider) -> None:
        self.provider = provider
        self.name = provider.source

    async def run(self) -> None:
        await self.provider.run()


def identity_providers(store: Store, config: Config) -> list[FilesProvider]:
    """The providers of the gateway's mesh identities that this build can run.

    ``files:DIR`` modes (an istio-agent style ``OUTPUT_CERTS`` directory) for
    Istio and Linkerd. Meshes with no provider here get a diagnostic on each
    Service that needs them ("no identity for mesh ... yet"), never plaintext.
    """
    out = []
    for mesh, mode, trust_domain in (
        (Mesh.ISTIO, config.istio.identity, config.istio.trust_domain),
        (Mesh.LINKERD, config.linkerd.mode, config.linkerd.trust_domain),
    ):
        directory = files_dir(mode)
        if directory is not None:
            out.append(FilesProvider(mesh, store, directory, trust_domain=trust_domain))
    return out


def _source_factory(spec: str, config: Config) -> SourceFactory:
    def factory(store: Store) -> list[Source]:
        sources: list[Source] = [_IdentitySource(p) for p in identity_providers(store, config)]
        if spec == "kubernetes":
            return [*sources, _KubernetesSource(store, config)]
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
    app = Bridge(
        config,
        _source_factory(spec, config),
        xds_address=args.xds,
        admin_address=args.admin,
        drain=args.drain,
    )
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
    from bridge.pipeline import default_resolve

    for sel in args.services:
        ns, _, name = sel.partition("/")
        if not ns or "/" in name:
            raise UsageError(f"{sel!r}: expected NS/SVC or NS")
    config = load_config(args.config)
    spec = _source_spec(args, config)
    store = Store()
    if spec == "kubernetes":
        asyncio.run(_load_kubernetes_once(store, config))
    else:
        path = spec.removeprefix("dir:")
        DirSource(store, path).load()
    for provider in identity_providers(store, config):
        provider.poll()  # load the identity once, for its expiry and the SANs it implies
    world, changed = store.take()
    resolved = default_resolve()(world, config.resolve_settings(), None, changed)
    table = rows(resolved, args.services)
    extra = other_diagnostics(resolved, world.source_diagnostics)
    if args.output == "json":
        sys.stdout.write(render_json(table, extra))
    else:
        sys.stdout.write(render_table(table, extra))
    if args.services and not table:
        print(f"meshbridge: no Service matches {' '.join(args.services)}", file=sys.stderr)
    return EXIT_OK


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
