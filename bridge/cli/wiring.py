"""The mesh adapters, built from the config file for ``serve``, ``resolve`` and ``sync-catalog``.

This is where ``bridge`` meets ``adapters`` (with :mod:`bridge.cli`): the
config file's values become the adapters' explicit settings here — the
adapters read no environment (Consul's ``CONSUL_*`` variables are read once,
by :mod:`bridge.config`).

What a config turns on:

- ``istio.identity: ca`` — :class:`adapters.istio.ca.IstioCaProvider`: a CSR to
  istiod with the gateway's token (``istio.token_file``, else TokenRequest),
  roots from ``istio.roots_file`` or ConfigMap ``istio-ca-root-cert`` in
  ``gateway.namespace``;
- ``linkerd.mode: ca`` — :class:`adapters.linkerd.identity.LinkerdIdentityProvider`
  (``linkerd.token_file``; anchors from ``linkerd.roots_file`` or ConfigMap
  ``linkerd-identity-trust-roots`` in ``linkerd.namespace``); ``sidecar``
  needs no provider; ``files:DIR`` is :class:`bridge.identity.files.FilesProvider`;
- always — :class:`ConsulPart`: Consul discovery for Services with resolver
  ``consul`` (no request at all while none has it); with ``consul.connect``
  the Connect leaf (:class:`adapters.consul.connect.ConnectIdentityProvider`,
  its own source) and the intention check; with ``catalog_sync`` the syncers.

The syncers report their writes through :meth:`ConsulPart.report_writes`
(``serve`` passes :meth:`bridge.metrics.Metrics.record_catalog_writes`, so
``/metrics`` shows ``meshbridge_catalog_sync_writes_total``).

Start-up order, so that nothing is published half-known: a provider whose
roots come from a ConfigMap starts once the object sources (``dir:``,
``kubernetes:``) have synced; Consul discovery resolves the first complete
World once to learn which Consul services it references, watches those, and
counts as synced after each watch's first attempt, answer or error — an
unreachable Consul delays readiness by one failed request (at most the
client's 30 s read timeout), never forever, and leaves a diagnostic on each
Consul service. After that a pipeline observer (:meth:`ConsulPart.observe`)
feeds every published World to the watch set, the intention check and the
syncers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from adapters.consul.client import ConsulClient
from adapters.consul.connect import ConnectIdentityProvider, IntentionChecker
from adapters.consul.discovery import SOURCE as DISCOVERY_SOURCE
from adapters.consul.discovery import ConsulDiscovery
from adapters.consul.settings import ConsulClientSettings
from adapters.consul.sync import (
    OWNER_LABEL,
    OWNER_VALUE,
    CatalogSyncSettings,
    ExternalNameService,
    ForeignService,
    ServiceWriter,
    ToConsulSyncer,
    ToKubernetesSyncer,
    WriteRecorder,
)
from adapters.istio.ca import IstioCaProvider, IstioCaSettings, IstioRoots
from adapters.linkerd.identity import (
    LinkerdIdentityProvider,
    LinkerdIdentitySettings,
    LinkerdRoots,
)
from bridge.config import Config
from bridge.errors import ConfigError, MeshbridgeError, SourceError
from bridge.identity.provider import (
    CaIdentityProvider,
    IdentityMaterial,
    IdentityProvider,
    identity_fix,
)
from bridge.identity.tokens import (
    ISTIO_CA_AUDIENCE,
    LINKERD_AUDIENCE,
    FileTokenSource,
    TokenSource,
)
from bridge.leader import LeaderGate
from bridge.model.consul import ConsulServiceKey
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh, Resolved, Resolver
from bridge.model.k8s import K8sService, Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.pipeline import default_resolve
from bridge.resolve.annotations import parse_service
from bridge.resolve.service import consul_key
from bridge.store import Store

log = logging.getLogger("bridge.cli")

# Start-up only: how often to look whether the object sources have synced.
_SYNC_POLL_S = 0.02
OBJECT_SOURCE_PREFIXES = ("kubernetes", "dir:")


# -- settings from the config ------------------------------------------------------


def consul_client_settings(config: Config) -> ConsulClientSettings:
    """The Consul adapter's settings: the config's values (environment already applied)."""
    c = config.consul
    if c.tls.server_name:
        raise ConfigError(
            "not supported for Consul: the agent's certificate is verified against "
            "the address's host; leave it empty",
            "consul.tls.server_name",
        )
    if bool(c.tls.cert_file) != bool(c.tls.key_file):
        raise ConfigError(
            "a client certificate needs both cert_file and key_file "
            "(or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)",
            "consul.tls.cert_file" if not c.tls.cert_file else "consul.tls.key_file",
        )
    return ConsulClientSettings().with_overrides(
        address=c.address,
        scheme=c.scheme,
        token=c.token,
        ca_file=c.tls.ca_file or None,
        cert_file=c.tls.cert_file or None,
        key_file=c.tls.key_file or None,
        verify=c.tls_verify,
        datacenter=c.datacenter,
        namespace=c.namespace,
        partition=c.partition,
    )


def catalog_sync_settings(config: Config) -> CatalogSyncSettings:
    cs = config.catalog_sync
    tc, tk = cs.to_consul, cs.to_kubernetes
    return CatalogSyncSettings(
        to_consul=tc.enabled,
        to_kubernetes=tk.enabled,
        node_name=tc.node_name,
        tag=tc.tag,
        prefix=tc.prefix,
        namespace_suffix=tc.namespace_suffix,
        default_sync=tc.default_sync,
        allow_namespaces=tc.allow_namespaces,
        deny_namespaces=tc.deny_namespaces,
        sync_cluster_ip_services=tc.sync_cluster_ip_services,
        node_port_sync_type=tc.node_port_sync_type,
        k8s_namespace=tk.namespace,
        k8s_prefix=tk.prefix,
        consul_domain=tk.consul_domain,
        debounce_s=cs.debounce_ms / 1000,
    )


def token_source(
    path: str, audience: str, key: str, token_request: TokenSource | None
) -> TokenSource:
    """The gateway's service-account token for ``audience``: a projected file, else TokenRequest."""
    if path:
        return FileTokenSource(path, audience)
    if token_request is not None:
        return token_request
    raise ConfigError(
        f"set a projected service-account token file (audience {audience}): without "
        "--source kubernetes there is no API server to ask for a token (TokenRequest)",
        key,
    )


def needs_token_request(config: Config) -> bool:
    """Whether a CA mode is on without a token file (so TokenRequest is needed)."""
    return (config.istio.identity == "ca" and not config.istio.token_file) or (
        config.linkerd.mode == "ca" and not config.linkerd.token_file
    )


def token_request(config: Config) -> TokenSource:
    """TokenRequest for ``gateway.namespace``/``gateway.service_account``."""
    from adapters.kubernetes.client import load_api_client
    from adapters.kubernetes.tokens import ServiceAccountTokens

    return ServiceAccountTokens(
        load_api_client(config.kubernetes.kubeconfig, config.kubernetes.context),
        config.gateway.namespace,
        config.gateway.service_account,
    )


# -- identity providers ----------------------------------------------------------------


def ca_identity_providers(
    store: Store,
    config: Config,
    consul: ConsulClient | None = None,
    *,
    tokens: TokenSource | None = None,
) -> list[IdentityProvider]:
    """The CA-backed providers the config turns on (Istio ``ca``, Linkerd ``ca``, Connect).

    ``tokens`` (TokenRequest) serves a mesh whose ``token_file`` is not set.
    """
    out: list[IdentityProvider] = []
    if config.istio.identity == "ca":
        ic = config.istio
        out.append(
            IstioCaProvider(
                store,
                token_source(ic.token_file, ISTIO_CA_AUDIENCE, "istio.token_file", tokens),
                IstioRoots.file(ic.roots_file)
                if ic.roots_file
                else IstioRoots.config_map(store, config.gateway.namespace),
                IstioCaSettings(
                    address=ic.ca_address,
                    server_name=ic.ca_server_name,
                    trust_domain=ic.trust_domain,
                    cluster_id=ic.cluster_id,
                    namespace=config.gateway.namespace,
                    service_account=config.gateway.service_account,
                ),
            )
        )
    if config.linkerd.mode == "ca":
        lc = config.linkerd
        out.append(
            LinkerdIdentityProvider(
                store,
                token_source(lc.token_file, LINKERD_AUDIENCE, "linkerd.token_file", tokens),
                LinkerdRoots.file(lc.roots_file)
                if lc.roots_file
                else LinkerdRoots.config_map(store, lc.namespace),
                LinkerdIdentitySettings(
                    address=lc.identity_address,
                    namespace=lc.namespace,
                    trust_domain=lc.trust_domain,
                    cluster_domain=config.cluster_domain,
                    gateway_namespace=config.gateway.namespace,
                    service_account=config.gateway.service_account,
                ),
            )
        )
    if config.consul.connect and consul is not None:
        out.append(ConnectIdentityProvider(consul, store, service=config.consul.identity_service))
    return out


def roots_from_objects(provider: IdentityProvider) -> bool:
    """Whether the provider reads its roots from a ConfigMap (so waits for the object sources)."""
    roots = getattr(provider, "roots", None)
    return isinstance(roots, IstioRoots | LinkerdRoots) and not roots.path


async def objects_synced(store: Store) -> None:
    """Return once every object source (``dir:``, ``kubernetes:``) has finished its first list."""
    while True:
        state = store.sync_state()
        objects = [ok for name, ok in state.items() if name.startswith(OBJECT_SOURCE_PREFIXES)]
        # The Kubernetes source registers its reflectors once it runs: none yet is not done.
        if objects and all(objects):
            return
        await asyncio.sleep(_SYNC_POLL_S)


async def synced(store: Store, source: str) -> None:
    """Return once ``source`` has finished its first sync."""
    while True:
        if store.sync_state().get(source, False):
            return
        await asyncio.sleep(_SYNC_POLL_S)


class IdentitySource:
    """An identity provider as a :class:`bridge.app.Source`."""

    def __init__(self, provider: IdentityProvider, *, store: Store | None = None) -> None:
        self.provider = provider
        self.name = provider.source
        # Set: start once the object sources synced (the roots are a ConfigMap there).
        self._store = store

    async def run(self) -> None:
        if self._store is not None:
            await objects_synced(self._store)
        await self.provider.run()


# -- Consul ------------------------------------------------------------------------------


_KeyHit = tuple[K8sService, Resolver | None, Mesh, ConsulServiceKey]


class ConsulKeys:
    """The Consul services a resolved World references, recomputed per changed Service only."""

    def __init__(self, settings: ResolveSettings) -> None:
        self.settings = settings
        self._cache: dict[ObjectRef, _KeyHit] = {}

    def of(
        self, world: World, resolved: Resolved
    ) -> tuple[frozenset[ConsulServiceKey], frozenset[ConsulServiceKey]]:
        """(keys to watch: resolver ``consul``; Connect keys to check: mesh ``consul``)."""
        watch: set[ConsulServiceKey] = set()
        connect: set[ConsulServiceKey] = set()
        seen: set[ObjectRef] = set()
        for ref, res in resolved.services.items():
            if res.mesh is None or not (res.resolver is Resolver.CONSUL or res.mesh is Mesh.CONSUL):
                continue
            svc = world.services.get(ref)
            if svc is None:
                continue
            seen.add(ref)
            hit = self._cache.get(ref)
            if hit is not None and hit[0] is svc and hit[1] is res.resolver and hit[2] is res.mesh:
                key = hit[3]
            else:
                spec, _ = parse_service(svc)
                key = consul_key(
                    svc, self.settings, spec.consul_service, spec.consul_datacenter, res.mesh
                )
                self._cache[ref] = (svc, res.resolver, res.mesh, key)
            if res.resolver is Resolver.CONSUL:
                watch.add(key)
            if key.connect:
                connect.add(key)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return frozenset(watch), frozenset(connect)


class ConsulPart:
    """Consul discovery, intention check and catalog sync, as one :class:`bridge.app.Source`.

    The Connect identity provider shares :attr:`client` but is a source of its
    own (``identity/consul``). :meth:`run` closes the client on the way out.
    """

    name = "consul"

    def __init__(
        self,
        store: Store,
        config: Config,
        client: ConsulClient,
        *,
        leader: LeaderGate,
        writer: ServiceWriter | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.client = client
        self.settings = config.resolve_settings()
        self.keys = ConsulKeys(self.settings)
        self.discovery = ConsulDiscovery(client, store)
        self.intentions = (
            IntentionChecker(
                client,
                store,
                identity_service=config.consul.identity_service,
                interval_s=config.consul.intention_check_interval_ms / 1000,
            )
            if config.consul.connect
            else None
        )
        sync = catalog_sync_settings(config)
        self.to_consul = ToConsulSyncer(client, sync, leader=leader) if sync.to_consul else None
        if sync.to_kubernetes and writer is None:
            raise ConfigError(
                "writing ExternalName Services needs a cluster: use --source kubernetes",
                "catalog_sync.to_kubernetes.enabled",
            )
        self.to_kubernetes = (
            ToKubernetesSyncer(client, writer, sync, leader=leader)
            if sync.to_kubernetes and writer is not None
            else None
        )

    def report_writes(self, record: WriteRecorder) -> None:
        """Send the syncers' writes to ``record(target, operation, count)`` (the metrics)."""
        if self.to_consul is not None:
            self.to_consul.record = record
        if self.to_kubernetes is not None:
            self.to_kubernetes.record = record

    async def run(self) -> None:
        try:
            await self.first_watch_set()
            async with asyncio.TaskGroup() as tg:
                if self.intentions is not None:
                    tg.create_task(self.intentions.run(), name="consul-intentions")
                if self.to_consul is not None:
                    tg.create_task(self.to_consul.run(), name="catalog-sync-to-consul")
                if self.to_kubernetes is not None:
                    tg.create_task(self.to_kubernetes.run(), name="catalog-sync-to-kubernetes")
                # Keep the source alive while discovery's own watch tasks run.
                tg.create_task(asyncio.Event().wait(), name="consul-part")
        finally:
            await self.discovery.close()
            await self.client.close()

    async def first_watch_set(self) -> None:
        """Learn which Consul services the first complete World references, and watch them.

        Runs before the first snapshot (the ``consul`` source is not synced
        until each watch made its first attempt), so the first snapshot
        already holds the Consul endpoints.
        """
        await objects_synced(self.store)
        # The pipeline has not built yet (this source holds it back): taking the
        # World here leaves it a full first build, which needs no change set.
        world, _ = self.store.take()
        resolved = default_resolve()(world, self.settings, None, frozenset())
        watch, connect = self.keys.of(world, resolved)
        if watch:
            log.info("watching %d Consul service(s)", len(watch))
        self.discovery.watch_set(watch)
        if self.intentions is not None:
            self.intentions.check_set(connect)

    def observe(self, world: World, resolved: Resolved, _stats: object) -> None:
        """After each publish: the World goes to the watches, intention check and syncers."""
        watch, connect = self.keys.of(world, resolved)
        self.discovery.watch_set(watch)
        if self.intentions is not None:
            self.intentions.check_set(connect)
        # Published means every source synced: the Kubernetes list is complete.
        if self.to_consul is not None:
            self.to_consul.update(world, kubernetes_synced=True)
        if self.to_kubernetes is not None:
            self.to_kubernetes.update(world, kubernetes_synced=True)


# -- leader election ------------------------------------------------------------------------


class LeaseSource:
    """The Kubernetes adapter's Lease elector as a :class:`bridge.app.Source`.

    Campaigns until cancelled; on the way out the elector releases the Lease
    so another replica takes over at once. Not a store source: it never
    holds back publication.
    """

    name = "leader"

    def __init__(self, elector: Any) -> None:
        self.elector = elector

    async def run(self) -> None:
        await self.elector.run(asyncio.Event())


def lease_elector(config: Config) -> Any:
    """A :class:`adapters.kubernetes.leader.LeaseElector` in ``gateway.namespace``: Lease
    ``meshbridge-catalog-sync`` with catalog sync on, else ``meshbridge-events``."""
    from adapters.kubernetes.client import load_api_client
    from adapters.kubernetes.leader import LeaseElector, lease_settings_for

    return LeaseElector(
        load_api_client(config.kubernetes.kubeconfig, config.kubernetes.context),
        lease_settings_for(config),
    )


def live_lease_holder(config: Config) -> str:
    """Who holds the catalog-sync Lease now ("" when nobody, or the holder stopped renewing).

    For the one-shot ``sync-catalog``: reads the Lease once and compares its
    last renewal plus its duration with this machine's clock.
    """
    import datetime as dt

    from kubernetes import client as k8s_client

    from adapters.kubernetes.client import NotFound, call, load_api_client, read_json
    from adapters.kubernetes.leader import LeaseSettings

    settings = LeaseSettings(namespace=config.gateway.namespace)
    api = k8s_client.CoordinationV1Api(
        load_api_client(config.kubernetes.kubeconfig, config.kubernetes.context)
    )
    what = f"get lease {settings.namespace}/{settings.name}"
    try:
        resp = call(
            what,
            api.read_namespaced_lease,
            settings.name,
            settings.namespace,
            _preload_content=False,
            _request_timeout=(10, 10),
        )
    except NotFound:
        return ""
    spec = read_json(what, resp).get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    renewed = str(spec.get("renewTime") or spec.get("acquireTime") or "")
    if not holder or not renewed:
        return ""
    try:
        at = dt.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    except ValueError:
        return holder  # unreadable: assume it is live
    duration = float(spec.get("leaseDurationSeconds") or settings.lease_duration_s)
    live = dt.datetime.now(dt.UTC) < at + dt.timedelta(seconds=duration)
    return holder if live else ""


# -- Kubernetes writes for Consul → Kubernetes ---------------------------------------------

# (connect, read) seconds for each Service write.
_K8S_TIMEOUT = (5.0, 15.0)


def _service_body(svc: ExternalNameService) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "labels": dict(svc.labels),
            "annotations": dict(svc.annotations),
        },
        "spec": {"type": "ExternalName", "externalName": svc.external_name},
    }


class KubernetesServiceWriter:
    """:class:`adapters.consul.sync.ServiceWriter` with the ``kubernetes`` client.

    Ownership is checked on the server at write time, not only in the plan
    (whose World may lag): every update and delete reads the Service first
    and leaves it alone (:class:`adapters.consul.sync.ForeignService`) unless
    it carries the label ``meshbridge.io/catalog-sync=consul``. An update
    replaces the Service with the resourceVersion it read and a delete sends
    that resourceVersion and uid as preconditions, so a Service someone
    replaced in between is never overwritten (the API server answers 409,
    and the syncer retries from a fresh read). A create that finds the name
    taken (409) becomes that update. Blocking client calls run in worker
    threads; errors come out as :mod:`bridge.errors` types.
    """

    def __init__(self, api_client: Any) -> None:
        import kubernetes.client

        self.core = kubernetes.client.CoreV1Api(api_client)

    async def create_service(self, svc: ExternalNameService) -> None:
        await self._create(svc, fall_back=True)

    async def update_service(self, svc: ExternalNameService) -> None:
        await self._update(svc, fall_back=True)

    async def _create(self, svc: ExternalNameService, *, fall_back: bool) -> None:
        from adapters.kubernetes.client import Conflict, call

        what = f"create service {svc.namespace}/{svc.name}"
        try:
            await asyncio.to_thread(
                call,
                what,
                self.core.create_namespaced_service,
                svc.namespace,
                _service_body(svc),
                _request_timeout=_K8S_TIMEOUT,
            )
        except Conflict:
            if not fall_back:
                raise
            await self._update(svc, fall_back=False)  # already there: ours to update, or not

    async def _update(self, svc: ExternalNameService, *, fall_back: bool) -> None:
        from adapters.kubernetes.client import NotFound, call

        have = await self._read_owned(svc.namespace, svc.name)
        if have is None:
            if not fall_back:
                raise SourceError(f"Service {svc.namespace}/{svc.name} vanished while written")
            await self._create(svc, fall_back=False)
            return
        spec = have.get("spec") or {}
        md = have.get("metadata") or {}
        labels, annotations = md.get("labels") or {}, md.get("annotations") or {}
        if (
            spec.get("type") == "ExternalName"
            and spec.get("externalName") == svc.external_name
            and all(labels.get(k) == v for k, v in svc.labels.items())
            and all(annotations.get(k) == v for k, v in svc.annotations.items())
        ):
            return  # already as wanted
        body = _service_body(svc)
        # Keep what others added; ours wins on our own keys.
        body["metadata"]["labels"] = {**labels, **svc.labels}
        body["metadata"]["annotations"] = {**annotations, **svc.annotations}
        body["metadata"]["resourceVersion"] = md.get("resourceVersion")
        what = f"replace service {svc.namespace}/{svc.name}"
        try:
            await asyncio.to_thread(
                call,
                what,
                self.core.replace_namespaced_service,
                svc.name,
                svc.namespace,
                body,
                _request_timeout=_K8S_TIMEOUT,
            )
        except NotFound:
            if not fall_back:
                raise
            await self._create(svc, fall_back=False)  # deleted between our read and write

    async def delete_service(self, namespace: str, name: str) -> None:
        import kubernetes.client

        from adapters.kubernetes.client import NotFound, call

        have = await self._read_owned(namespace, name)
        if have is None:
            return
        md = have.get("metadata") or {}
        options = kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(
                uid=md.get("uid"), resource_version=md.get("resourceVersion")
            )
        )
        with contextlib.suppress(NotFound):  # gone already: done
            await asyncio.to_thread(
                call,
                f"delete service {namespace}/{name}",
                self.core.delete_namespaced_service,
                name,
                namespace,
                body=options,
                _request_timeout=_K8S_TIMEOUT,
            )

    async def _read_owned(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Service as the server has it now (None if absent); ForeignService if not ours."""
        from adapters.kubernetes.client import NotFound, call, read_json

        what = f"get service {namespace}/{name}"

        def read() -> Any:
            resp = call(
                what,
                self.core.read_namespaced_service,
                name,
                namespace,
                _preload_content=False,
                _request_timeout=_K8S_TIMEOUT,
            )
            return read_json(what, resp)

        try:
            have = await asyncio.to_thread(read)
        except NotFound:
            return None
        labels = (have.get("metadata") or {}).get("labels") or {}
        if labels.get(OWNER_LABEL) != OWNER_VALUE:
            raise ForeignService(
                f"Service {namespace}/{name} exists and is not managed by meshbridge "
                f"(no label {OWNER_LABEL}={OWNER_VALUE}); left alone"
            )
        return dict(have)


def kubernetes_writer(config: Config) -> KubernetesServiceWriter:
    from adapters.kubernetes.client import load_api_client

    return KubernetesServiceWriter(
        load_api_client(config.kubernetes.kubeconfig, config.kubernetes.context)
    )


# -- one-shot reads for ``meshbridge resolve`` -------------------------------------------


async def issue_once(provider: IdentityProvider, limit_s: float) -> list[Diagnostic]:
    """Obtain ``provider``'s identity once (bounded); a diagnostic on failure."""
    if not isinstance(provider, CaIdentityProvider):
        return []
    mesh = provider.mesh
    try:
        async with asyncio.timeout(limit_s):
            fetched = await provider.fetch()
        material = IdentityMaterial.checked(
            cert_chain_pem=fetched.cert_chain_pem,
            private_key=fetched.private_key,
            trust_bundle_pem=fetched.trust_bundle_pem,
            trust_domain=fetched.trust_domain,
            now=provider.clock.now(),
        )
    except TimeoutError:
        why = f"no answer within {limit_s:g}s"
    except MeshbridgeError as exc:
        why = str(exc)
    else:
        provider.publish(material)
        return []
    return [
        Diagnostic(
            provider.ref,
            "identity",
            f"could not obtain the gateway's {mesh.value} identity: {why}",
            fix=identity_fix(mesh),
            severity=Severity.ERROR,
            code="identity.unavailable",
        )
    ]


async def consul_once(
    store: Store,
    config: Config,
    client: ConsulClient,
    world: World,
    resolved: Resolved,
    limit_s: float,
    problems: list[Diagnostic],
) -> bool:
    """Read the referenced Consul services (and intentions) once; whether anything was read."""
    settings = config.resolve_settings()
    watch, connect = ConsulKeys(settings).of(world, resolved)
    connect = connect if config.consul.connect else frozenset()
    if not watch and not connect:
        return False
    if watch:
        discovery = ConsulDiscovery(client, store)
        discovery.watch_set(watch)
        try:
            async with asyncio.timeout(limit_s):
                await synced(store, DISCOVERY_SOURCE)
        except TimeoutError:
            problems.append(
                Diagnostic(
                    ObjectRef(Kind.CONSUL_SERVICE, "", "*"),
                    "consul",
                    f"Consul at {client.settings.base_url} did not answer within {limit_s:g}s",
                    fix="check consul.address / CONSUL_HTTP_ADDR and that the agent is up",
                    severity=Severity.WARNING,
                    code="consul.unavailable",
                )
            )
        finally:
            await discovery.close()
    if connect:
        checker = IntentionChecker(client, store, identity_service=config.consul.identity_service)
        checker.check_set(connect)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await checker.check_now()
    return True
