"""``meshbridge sync-catalog [--dry-run]``: one catalog-sync pass, printed, then applied.

Loads the Kubernetes objects once (the source's complete list: a plan made
from a partial list would deregister live services), asks Consul what our
synthetic node holds (:func:`adapters.consul.sync.plan_sync`), prints the
plan — registrations (``+``), deregistrations (``-``), ExternalName Services
to create/update/delete, and what was left alone and why — and, without
``--dry-run``, writes it: Consul through ``/v1/txn`` batches, Kubernetes
through :class:`bridge.cli.wiring.KubernetesServiceWriter`.

The directions are the config's (``catalog_sync.to_consul.enabled``,
``catalog_sync.to_kubernetes.enabled``); with neither enabled there is
nothing to do (exit 2, naming the keys).

One-shot and leader election: ``serve`` writes only while it holds the
Lease ``meshbridge-catalog-sync`` in ``gateway.namespace``. This command
does not campaign for it (a one-shot that took the Lease would only delay
the running replica) but refuses to write while a live holder has it (with
``--source kubernetes``: exit 1 naming the holder); with the directory
source there is no other replica. A ``--dry-run`` never looks at the Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable

from adapters.consul.client import ConsulClient
from adapters.consul.sync import ForeignService, SyncPlan, apply_plan, plan_sync
from bridge.config import Config, load_config
from bridge.errors import ConfigError, MeshbridgeError, SourceError
from bridge.store import Store


async def _plan_and_apply(spec: str, config: Config, dry_run: bool) -> SyncPlan:
    from bridge.cli import load_objects
    from bridge.cli.wiring import catalog_sync_settings, consul_client_settings, kubernetes_writer

    settings = catalog_sync_settings(config)
    writer = (
        kubernetes_writer(config)
        if settings.to_kubernetes and not dry_run and spec == "kubernetes"
        else None
    )
    if settings.to_kubernetes and spec != "kubernetes" and not dry_run:
        raise ConfigError(
            "writing ExternalName Services needs a cluster: use --source kubernetes "
            "(or --dry-run to see the plan)",
            "catalog_sync.to_kubernetes.enabled",
        )
    store = Store()
    await load_objects(store, spec, config)
    world, _ = store.take()
    async with ConsulClient(consul_client_settings(config)) as client:
        try:
            plan = await plan_sync(client, world, settings)
        except SourceError as exc:
            raise MeshbridgeError(f"cannot read the catalog: {exc}") from exc
        sys.stdout.write(str(plan) + "\n")
        sys.stdout.flush()
        if dry_run or plan.empty:
            return plan
        try:
            await apply_plan(client, plan)
        except SourceError as exc:
            raise MeshbridgeError(f"catalog sync failed: {exc}") from exc
    if writer is not None:
        writes: list[Callable[[], Awaitable[None]]] = [
            *(functools.partial(writer.create_service, svc) for svc in plan.k8s_create),
            *(functools.partial(writer.update_service, svc) for svc in plan.k8s_update),
            *(functools.partial(writer.delete_service, ns, name) for ns, name in plan.k8s_delete),
        ]
        for write in writes:
            try:
                await write()
            except ForeignService as exc:  # taken since the plan was read: left alone
                print(f"  ! {exc}")
    print(
        f"applied: {len(plan.register)} registered, {len(plan.deregister)} deregistered"
        + (
            f", {len(plan.k8s_create) + len(plan.k8s_update) + len(plan.k8s_delete)} "
            "Kubernetes Service write(s)"
            if writer is not None
            else ""
        )
    )
    return plan


def sync_catalog(args: argparse.Namespace) -> int:
    from bridge.cli import EXIT_OK, _source_spec

    config = load_config(args.config)
    spec = _source_spec(args, config)
    sync = config.catalog_sync
    if not (sync.to_consul.enabled or sync.to_kubernetes.enabled):
        raise ConfigError(
            "nothing to sync: enable catalog_sync.to_consul.enabled and/or "
            "catalog_sync.to_kubernetes.enabled",
            "catalog_sync",
        )
    if spec == "kubernetes" and not args.dry_run:
        from bridge.cli.wiring import live_lease_holder

        holder = live_lease_holder(config)
        if holder:
            raise MeshbridgeError(
                f"{holder} holds Lease {config.gateway.namespace}/meshbridge-catalog-sync "
                "and syncs the catalog: not writing (use --dry-run to see the plan, or stop "
                "that replica's catalog sync)"
            )
    asyncio.run(_plan_and_apply(spec, config, args.dry_run))
    return EXIT_OK
