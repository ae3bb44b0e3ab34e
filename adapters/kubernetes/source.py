"""The Kubernetes source: every reflector meshbridge needs, feeding the store.

:func:`run_kubernetes_source` is the entry point ``meshbridge serve --source
kubernetes`` calls; :class:`KubernetesSource` is the same with explicit
start/stop for tests and for callers that need its status.

What is watched (:meth:`KubernetesSourceSettings.specs`):

- Services, EndpointSlices and Pods in every namespace, or in each configured
  namespace (one reflector per namespace, so RBAC can be namespaced);
- Namespaces (all, or just the configured ones by name) for mesh markers and
  per-namespace defaults;
- the trust-root ConfigMaps by name, only those a configured mesh reads
  (:func:`trust_root_config_maps`): ``istio-ca-root-cert`` in the gateway's
  namespace for Istio's CA mode, ``linkerd-identity-trust-roots`` in Linkerd's
  namespace for Linkerd's CA mode;
- Secrets named in the configuration, each by name: never all Secrets;
- Nodes (all; cluster-scoped) only when catalog sync to Consul is on: a
  NodePort Service is registered at its nodes' addresses.

Each reflector is its own store source (``kubernetes:Service/ns``, ...), so
a relist swaps exactly that scope with :meth:`bridge.store.Store.replace`
and the store's "nothing published before every source synced" rule is the
initial-sync signal: every watched kind and scope must have listed once.

The store is touched only here, on the event loop; reflector threads hand
results over through :class:`_Handoff`, which blocks a thread when too many
batches wait for the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.kubernetes.client import load_api_client
from adapters.kubernetes.reflector import Backoff, Reflector, ReflectorStats, WatchSpec
from bridge.config import Config
from bridge.model.diagnostics import Diagnostic
from bridge.model.k8s import K8sObject, Kind, ObjectRef
from bridge.store import Store

log = logging.getLogger(__name__)

# The ConfigMaps adapters.istio.ca and adapters.linkerd.identity read their
# roots from (adapters don't import each other; tests keep the names equal).
ISTIO_ROOT_CERT = "istio-ca-root-cert"
LINKERD_TRUST_ROOTS = "linkerd-identity-trust-roots"


@dataclass(frozen=True, slots=True)
class KubernetesSourceSettings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    kubeconfig: str = ""
    context: str = ""
    watch_pods: bool = True
    watch_nodes: bool = False
    # (namespace, name) of ConfigMaps and Secrets to watch by name.
    config_maps: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()
    page_size: int = 500
    watch_timeout_s: int = 300
    backoff: Backoff = field(default_factory=Backoff)
    max_inflight_batches: int = 16

    @classmethod
    def from_config(
        cls, config: Config, secrets: tuple[tuple[str, str], ...] = ()
    ) -> KubernetesSourceSettings:
        """Settings from the config file.

        Secrets are ``kubernetes.secrets`` and any more a caller names in
        ``secrets``, each watched by name. Trust-root ConfigMaps are watched
        only for a mesh whose identity provider reads them
        (:func:`trust_root_config_maps`), so each deployment needs RBAC for
        exactly the ConfigMaps its mesh publishes.
        """
        return cls(
            namespaces=config.kubernetes.namespaces,
            kubeconfig=config.kubernetes.kubeconfig,
            context=config.kubernetes.context,
            config_maps=trust_root_config_maps(config),
            secrets=tuple(sorted({*config.kubernetes.secret_refs(), *secrets})),
            watch_nodes=config.catalog_sync.to_consul.enabled,
        )

    def specs(self) -> list[WatchSpec]:
        kinds = [Kind.SERVICE, Kind.ENDPOINT_SLICE] + ([Kind.POD] if self.watch_pods else [])
        out: list[WatchSpec] = []
        if self.namespaces:
            for ns in sorted(set(self.namespaces)):
                out.extend(WatchSpec(k, ns) for k in kinds)
                out.append(WatchSpec(Kind.NAMESPACE, None, ns))
        else:
            out.extend(WatchSpec(k) for k in kinds)
            out.append(WatchSpec(Kind.NAMESPACE))
        if self.watch_nodes:
            out.append(WatchSpec(Kind.NODE))
        out.extend(WatchSpec(Kind.CONFIG_MAP, ns, name) for ns, name in self.config_maps)
        out.extend(WatchSpec(Kind.SECRET, ns, name) for ns, name in self.secrets)
        return out


def trust_root_config_maps(config: Config) -> tuple[tuple[str, str], ...]:
    """(namespace, name) of the trust-root ConfigMaps the configured meshes read.

    - Istio in CA mode without ``istio.roots_file``: ``istio-ca-root-cert`` in
      ``gateway.namespace`` (istiod copies it into every namespace; the
      provider reads the gateway's own copy);
    - Linkerd in CA mode without ``linkerd.roots_file``:
      ``linkerd-identity-trust-roots`` in ``linkerd.namespace``;
    - nothing otherwise: files modes, Linkerd's sidecar mode and Consul read
      no ConfigMap, and a watch nobody reads would need RBAC nobody should grant.
    """
    out: set[tuple[str, str]] = set()
    if config.istio.identity == "ca" and not config.istio.roots_file:
        out.add((config.gateway.namespace, ISTIO_ROOT_CERT))
    if config.linkerd.mode == "ca" and not config.linkerd.roots_file:
        out.add((config.linkerd.namespace, LINKERD_TRUST_ROOTS))
    return tuple(sorted(out))


class _Handoff:
    """Runs callables from reflector threads on the loop, at most ``limit`` waiting at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, stop: threading.Event) -> None:
        self._loop = loop
        self._sem = threading.BoundedSemaphore(limit)
        self._stop = stop

    def post(self, fn: Callable[[], None]) -> bool:
        while not self._sem.acquire(timeout=0.1):
            if self._stop.is_set():
                return False

        def run() -> None:
            try:
                if not self._stop.is_set():
                    fn()
            finally:
                self._sem.release()

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._sem.release()
            return False
        return True


class KubernetesSource:
    """All reflectors of one cluster feeding one store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: KubernetesSourceSettings,
        *,
        api_client: Any = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._api_client = api_client
        self._own_client = api_client is None
        self._reflectors: list[Reflector] = []
        self._stop = threading.Event()
        self._errors: dict[str, str | None] = {}
        self._pending_sync: set[str] = set()
        self._synced = asyncio.Event()
        self.batches_applied = 0

    @property
    def sources(self) -> list[str]:
        return [r.spec.source for r in self._reflectors]

    async def start(self) -> None:
        if self._api_client is None:
            specs = self.settings.specs()
            self._api_client = await asyncio.to_thread(
                load_api_client,
                self.settings.kubeconfig,
                self.settings.context,
                len(specs) + 8,
            )
        handoff = _Handoff(
            asyncio.get_running_loop(), self.settings.max_inflight_batches, self._stop
        )
        for spec in self.settings.specs():
            self.store.register_source(spec.source)
            self._pending_sync.add(spec.source)
            self._reflectors.append(
                Reflector(
                    spec,
                    self._api_client,
                    self,
                    handoff.post,
                    page_size=self.settings.page_size,
                    watch_timeout_s=self.settings.watch_timeout_s,
                    backoff=self.settings.backoff,
                )
            )
        for r in self._reflectors:
            r.start()
        log.info("kubernetes source: %d watches started", len(self._reflectors))

    async def stop(self) -> None:
        """Stop every reflector and wait for its thread; safe to call twice."""
        self._stop.set()
        for r in self._reflectors:
            r.stop()

        def join_all() -> None:
            for r in self._reflectors:
                if not r.join(timeout=10):
                    log.warning("%s: thread did not stop within 10s", r.spec.source)
            if self._own_client and self._api_client is not None:
                self._api_client.close()

        await asyncio.to_thread(join_all)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per watch: state, resourceVersion, counters, last error (for /debug)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self._reflectors:
            s: ReflectorStats = r.stats
            out[r.spec.source] = {
                "state": s.state,
                "resource_version": s.resource_version,
                "lists": s.lists,
                "watches": s.watches,
                "events": s.events,
                "bookmarks": s.bookmarks,
                "expired": s.expired,
                "errors": s.errors,
                "last_error": s.last_error,
                "synced": r.spec.source not in self._pending_sync,
            }
        return out

    def stats(self, source: str) -> ReflectorStats:
        for r in self._reflectors:
            if r.spec.source == source:
                return r.stats
        raise KeyError(source)

    # -- Sink: called on the loop ----------------------------------------------

    def relisted(
        self, spec: WatchSpec, objects: list[K8sObject], diags: tuple[Diagnostic, ...]
    ) -> None:
        changed = self.store.replace(spec.source, objects)
        self.store.set_source_diagnostics(spec.source, diags)
        self.store.mark_synced(spec.source)
        self.batches_applied += 1
        if spec.source in self._pending_sync:
            self._pending_sync.discard(spec.source)
            log.info("%s: listed %d objects", spec.source, len(objects))
            if not self._pending_sync:
                log.info("kubernetes source: initial sync complete")
                self._synced.set()
        else:
            log.info("%s: relisted %d objects (%d changed)", spec.source, len(objects), changed)

    def changed(
        self,
        spec: WatchSpec,
        items: list[K8sObject | ObjectRef],
        diags: tuple[Diagnostic, ...] | None,
    ) -> None:
        store, source = self.store, spec.source
        for item in items:
            if isinstance(item, ObjectRef):
                store.delete(source, item)
            else:
                store.upsert(source, item)
        if diags is not None:
            store.set_source_diagnostics(source, diags)
        self.batches_applied += 1

    def health(self, spec: WatchSpec, error: str | None) -> None:
        before = self._errors.get(spec.source)
        self._errors[spec.source] = error
        if before and error is None:
            log.info("%s: watching again", spec.source)


async def run_kubernetes_source(
    store: Store,
    config: Config | KubernetesSourceSettings,
    stop_event: asyncio.Event,
    *,
    api_client: Any = None,
) -> None:
    """Feed ``store`` from the cluster until ``stop_event`` is set, then stop cleanly.

    Every source it registers is marked synced once its first list is in the
    store; the pipeline publishes nothing before that.
    """
    settings = (
        config
        if isinstance(config, KubernetesSourceSettings)
        else KubernetesSourceSettings.from_config(config)
    )
    source = KubernetesSource(store, settings, api_client=api_client)
    await source.start()
    try:
        await stop_event.wait()
    finally:
        await source.stop()
