"""Discovery for resolver ``consul``: one blocking-query watch per ConsulServiceKey.

:meth:`ConsulDiscovery.watch_set` is given the set of keys the resolved world
references (however many Services share one key, there is one watch); it
starts watches for new keys and stops those no longer wanted. Each watch
blocks on ``/v1/health/service/<svc>`` (or ``/v1/health/connect/<svc>`` for
Connect: the sidecar proxies) and puts a :class:`ConsulService` into the
store: the passing instances (every check passing, as Consul's ``?passing``
filter decides) and the total, so ``resolve`` can tell "all unhealthy" (an
empty endpoint set plus a diagnostic) from "no such service". Reading the
unfiltered list and filtering here gives both from one request.

When Consul is unreachable the last known instances stay in the store (an
outage never empties an endpoint set); a source diagnostic says so until the
watch answers again. This module does no resolving and writes nothing to Consul.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from adapters.consul.client import ConsulClient, ConsulHttpError, Reply, entries, run_blocking
from bridge.errors import SourceError
from bridge.model.consul import ConsulInstance, ConsulService, ConsulServiceKey
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.frozen import freeze
from bridge.store import Store, consul_ref

log = logging.getLogger(__name__)

SOURCE = "consul"


def instances_from_health(
    body: Iterable[Mapping[str, Any]],
) -> tuple[tuple[ConsulInstance, ...], int]:
    """Passing instances (sorted) and the total from a ``/v1/health/...`` answer."""
    passing: list[ConsulInstance] = []
    total = 0
    for e in body:
        node = e.get("Node") or {}
        svc = e.get("Service") or {}
        if not svc:
            continue
        total += 1
        checks = e.get("Checks") or []
        if any((c or {}).get("Status") != "passing" for c in checks):
            continue
        address = str(svc.get("Address") or "") or str(node.get("Address") or "")
        port = int(svc.get("Port") or 0)
        if not address or port <= 0:
            continue
        passing.append(
            ConsulInstance(
                id=str(svc.get("ID") or svc.get("Service") or ""),
                node=str(node.get("Node") or ""),
                address=address,
                port=port,
                tags=tuple(sorted(str(t) for t in svc.get("Tags") or ())),
                meta=freeze(svc.get("Meta")),
            )
        )
    return tuple(sorted(passing)), total


class ConsulDiscovery:
    """Keeps ``store.consul_services`` in step with Consul for the watched keys."""

    def __init__(self, client: ConsulClient, store: Store, *, source: str = SOURCE) -> None:
        self._client = client
        self._store = store
        self._source = source
        self._tasks: dict[ConsulServiceKey, asyncio.Task[None]] = {}
        self._answered: set[ConsulServiceKey] = set()
        self._problems: dict[ConsulServiceKey, Diagnostic] = {}
        store.register_source(source)

    @property
    def keys(self) -> frozenset[ConsulServiceKey]:
        return frozenset(self._tasks)

    def watch_set(self, keys: Iterable[ConsulServiceKey]) -> None:
        """Watch exactly ``keys``: start new watches, stop (and forget) dropped ones."""
        wanted = set(keys)
        for key in sorted(set(self._tasks) - wanted):
            self._tasks.pop(key).cancel()
            self._answered.discard(key)
            self._problems.pop(key, None)
            self._store.remove_consul_service(key)
        for key in sorted(wanted - set(self._tasks)):
            self._tasks[key] = asyncio.create_task(self._watch(key), name=f"consul-watch {key}")
        self._publish_problems()
        self._check_synced()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ConsulDiscovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one watch -----------------------------------------------------------------

    async def _watch(self, key: ConsulServiceKey) -> None:
        kind = "connect" if key.connect else "service"
        path = f"/v1/health/{kind}/{key.service}"
        params = self._client.scope_params(
            datacenter=key.datacenter, namespace=key.namespace, partition=key.partition
        )

        def on_reply(reply: Reply) -> None:
            try:
                passing, total = instances_from_health(entries(reply))
            except (SourceError, ValueError, TypeError) as exc:
                on_error(exc)
                return
            self._store.put_consul_service(ConsulService(key, passing, total))
            self._answered.add(key)
            if self._problems.pop(key, None) is not None:
                log.info("Consul watch for %s answers again", _name(key))
                self._publish_problems()
            self._check_synced()

        def on_error(exc: Exception) -> None:
            # Keep the last known instances: an outage must not empty an endpoint set.
            diag = _diagnostic(key, exc)
            if self._problems.get(key) != diag:
                log.warning("%s", diag)
                self._problems[key] = diag
                self._publish_problems()
            self._answered.add(key)
            self._check_synced()

        await run_blocking(self._client, path, params, on_reply, on_error)

    def _publish_problems(self) -> None:
        self._store.set_source_diagnostics(self._source, self._problems.values())

    def _check_synced(self) -> None:
        # Synced once every watched key has had a first attempt (answer or error):
        # an unreachable Consul must not hold back everything else forever.
        if set(self._tasks) <= self._answered:
            self._store.mark_synced(self._source)


def _name(key: ConsulServiceKey) -> str:
    kind = " (Connect)" if key.connect else ""
    return f"{key.service}{kind} in {key.datacenter or 'the local datacenter'}"


def _diagnostic(key: ConsulServiceKey, exc: Exception) -> Diagnostic:
    ref = consul_ref(key)
    if isinstance(exc, ConsulHttpError) and exc.status == 403:
        return Diagnostic(
            ref,
            "consul.token",
            f"Consul refused to list {_name(key)}: permission denied",
            fix=f'give the Consul token service:read on "{key.service}" (and node:read)',
            code="consul.acl_denied",
        )
    if isinstance(exc, ConsulHttpError) and exc.status == 400:
        return Diagnostic(
            ref,
            "consul",
            f"Consul rejected the query for {_name(key)}: {exc.body.strip()}",
            fix="namespace and partition are Consul Enterprise features: "
            "leave consul.namespace/consul.partition empty for Consul CE",
            code="consul.bad_request",
        )
    return Diagnostic(
        ref,
        "consul",
        f"cannot reach Consul for {_name(key)}; keeping the last known instances: {exc}",
        fix="check consul.address / CONSUL_HTTP_ADDR and that the agent is up",
        severity=Severity.WARNING,
        code="consul.unavailable",
    )
