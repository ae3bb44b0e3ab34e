"""The Consul Connect identity provider, and the intention check.

:class:`ConnectIdentityProvider` gets the gateway's leaf certificate for the
configured identity service (default ``meshbridge``) from the local agent's
``/v1/agent/connect/ca/leaf/<service>`` and the trust bundle from
``/v1/agent/connect/ca/roots``, both as blocking queries, and keeps them in
the store as the ``identity/consul`` and ``trust/consul`` secrets (via
:class:`bridge.identity.provider.CaIdentityProvider`). The agent answers the
leaf query early when the leaf nears expiry or the roots rotate, so renewal is
"whenever the blocking query returns with a new certificate". The trust
bundle is every root Consul lists (the old root stays trusted during a
rotation) with its intermediates, and carries the trust domain that SNI and
SAN names are built from (:func:`connect_sni`, :func:`connect_spiffe`).

:class:`IntentionChecker` asks Consul whether the gateway's identity may
reach each Connect target and turns a deny into a diagnostic on that target
before any request fails; a blocking query on the intentions naming the
gateway as their source makes a change show within about a second.

Private keys stay in :class:`PrivateKey` values; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from adapters.consul.client import BlockingIndex, ConsulClient, ConsulHttpError, Reply, run_blocking
from bridge.errors import IdentityError, IdentityUnavailable, SourceError, SourceUnavailable
from bridge.identity.provider import CaIdentityProvider, IdentityMaterial
from bridge.identity.rotation import CONSUL_POLICY, Clock, RenewalPolicy
from bridge.model.consul import ConsulServiceKey
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh
from bridge.model.secrets import PrivateKey
from bridge.store import Store, consul_ref

log = logging.getLogger(__name__)

LEAF_PATH = "/v1/agent/connect/ca/leaf/{service}"
ROOTS_PATH = "/v1/agent/connect/ca/roots"


def connect_spiffe(
    trust_domain: str,
    service: str,
    datacenter: str,
    namespace: str = "default",
    partition: str = "",
) -> str:
    """The SPIFFE ID Consul gives ``service`` (``/ap/<partition>`` only when not default)."""
    ap = f"/ap/{partition}" if partition and partition != "default" else ""
    return f"spiffe://{trust_domain}{ap}/ns/{namespace}/dc/{datacenter}/svc/{service}"


def connect_sni(
    trust_domain: str,
    service: str,
    datacenter: str,
    namespace: str = "default",
    partition: str = "",
) -> str:
    """The SNI a Connect sidecar's public listener expects for ``service``."""
    if partition and partition != "default":
        return f"{service}.{namespace}.{partition}.{datacenter}.internal-v1.{trust_domain}"
    return f"{service}.{namespace}.{datacenter}.internal.{trust_domain}"


def trust_bundle(roots_body: Mapping[str, Any]) -> tuple[str, str]:
    """(PEM bundle of every listed root and its intermediates, trust domain)."""
    pems: list[str] = []
    roots = roots_body.get("Roots") or []
    # Active root first: readers that take "the" root take the right one.
    for root in sorted(roots, key=lambda r: (not r.get("Active"), str(r.get("ID", "")))):
        for pem in [root.get("RootCert") or "", *(root.get("IntermediateCerts") or [])]:
            text = str(pem).strip()
            if text and text + "\n" not in pems:
                pems.append(text + "\n")
    if not pems:
        raise IdentityError("Consul listed no Connect CA roots")
    return "".join(pems), str(roots_body.get("TrustDomain") or "")


def _scope(client: ConsulClient) -> list[tuple[str, str]]:
    # The agent endpoints are local: no ?dc=. ns/partition only when configured.
    return [(k, v) for k, v in client.scope_params() if k != "dc"]


class ConnectIdentityProvider(CaIdentityProvider):
    """The gateway's Connect leaf and Consul's roots, kept current in the store."""

    def __init__(
        self,
        client: ConsulClient,
        store: Store,
        *,
        service: str = "meshbridge",
        policy: RenewalPolicy = CONSUL_POLICY,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(Mesh.CONSUL, store, policy=policy, clock=clock)
        self.client = client
        self.service = service
        self._leaf_index = BlockingIndex()
        self._roots: tuple[str, str] | None = None

    async def run(self) -> None:
        roots = asyncio.create_task(self._watch_roots(), name="consul-connect-roots")
        try:
            await super().run()
        finally:
            roots.cancel()
            await asyncio.gather(roots, return_exceptions=True)

    async def fetch(self) -> IdentityMaterial:
        """Block until the agent hands out a leaf different from the current one."""
        path = LEAF_PATH.format(service=self.service)
        loop = asyncio.get_running_loop()
        last = -1e18
        while True:
            pause = last + self.client.settings.min_interval_s - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            last = loop.time()
            reply = await self._get(path, self._leaf_index.value)
            body = reply.body if isinstance(reply.body, Mapping) else {}
            cert = str(body.get("CertPEM") or "")
            key = str(body.get("PrivateKeyPEM") or "")
            if not cert or not key:
                raise IdentityError(f"Consul's leaf for {self.service!r} has no certificate or key")
            if self.current is not None and cert == self.current.cert_chain_pem:
                # An answer is not a change (wait expired, another leaf moved).
                self._leaf_index.update(reply.index)
                continue
            # A new leaf may come from a new root: read the roots now, not later.
            roots_reply = await self._get(ROOTS_PATH, 0)
            bundle, trust_domain = trust_bundle(_mapping(roots_reply.body))
            self._roots = (bundle, trust_domain)
            material = IdentityMaterial.checked(
                cert_chain_pem=cert,
                private_key=PrivateKey(key),
                trust_bundle_pem=bundle,
                trust_domain=trust_domain,
                now=self.clock.now(),
            )
            # Advance only once the leaf is usable: a failed check retries the same index.
            self._leaf_index.update(reply.index)
            return material

    async def _get(self, path: str, index: int) -> Reply:
        try:
            return await self.client.get(path, _scope(self.client), index=index)
        except ConsulHttpError as exc:
            if exc.status == 403:
                raise IdentityError(
                    f"Consul refused {path}: the token needs service:write on {self.service!r}"
                ) from exc
            raise IdentityError(str(exc)) from exc
        except SourceUnavailable as exc:
            raise IdentityUnavailable(str(exc)) from exc

    async def _watch_roots(self) -> None:
        """Publish a new trust bundle as soon as the roots change (before any new leaf)."""

        def on_reply(reply: Reply) -> None:
            try:
                roots = trust_bundle(_mapping(reply.body))
            except IdentityError as exc:
                log.warning("Consul Connect roots: %s", exc)
                return
            if roots != self._roots:
                self._roots = roots
                if self.current is not None:
                    self.publish_trust(*roots)

        def on_error(exc: Exception) -> None:
            log.debug("Consul Connect roots watch: %s", exc)

        await run_blocking(self.client, ROOTS_PATH, _scope(self.client), on_reply, on_error)


def _mapping(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise IdentityError(f"Consul sent {type(body).__name__} where an object was expected")
    return body


class _MatchUnsupported(Exception):
    """The agent refused the intentions match query: fall back to the timer alone."""


class IntentionChecker:
    """Diagnoses Connect targets the gateway's identity may not reach.

    :meth:`check_set` is given the Connect keys the resolved world targets.
    The verdict for each comes from ``/v1/connect/intentions/check`` (Consul
    evaluates precedence, wildcards and the default policy there). That
    endpoint does not support blocking queries, so changes are noticed with
    a blocking query on ``/v1/connect/intentions/match?by=source&name=<identity>``
    (Consul: blocking YES): it lists every intention whose source matches the
    gateway's identity, exact or ``*``, so any intention that could change a
    verdict changes its answer; each changed answer re-checks every target,
    and a new deny becomes a diagnostic within one round trip.

    The timer (``interval_s``, config ``consul.intention_check_interval_ms``)
    stays as the fallback: it catches what no intention records (a change of
    the ACL default policy) and is the only trigger when the agent refuses
    the match query (403: the token lacks ``intentions:read``; 404: an agent
    without the endpoint), after which the match query is not sent again.
    No request at all is made while no Connect target is checked.

    A deny is an ERROR diagnostic on the target's Consul ref; an unreachable
    Consul leaves the last verdict.
    """

    SOURCE = "consul/intentions"
    MATCH_PATH = "/v1/connect/intentions/match"

    def __init__(
        self,
        client: ConsulClient,
        store: Store,
        *,
        identity_service: str = "meshbridge",
        interval_s: float = 60.0,
    ) -> None:
        self._client = client
        self._store = store
        self._identity = identity_service
        self._interval = interval_s
        self._keys: frozenset[ConsulServiceKey] = frozenset()
        self._verdicts: dict[ConsulServiceKey, Diagnostic | None] = {}
        self._wake = asyncio.Event()
        self._match_body: object = None
        self._match_supported = True
        store.register_source(self.SOURCE)
        store.mark_synced(self.SOURCE)  # a verdict never holds back publication

    def check_set(self, keys: Iterable[ConsulServiceKey]) -> None:
        new = frozenset(k for k in keys if k.connect)
        if new != self._keys:
            self._keys = new
            for k in set(self._verdicts) - new:
                del self._verdicts[k]
            self._publish()
            self._wake.set()

    async def run(self) -> None:
        watch: asyncio.Task[None] | None = None
        try:
            while True:
                self._wake.clear()
                # The change watch runs only while there is something to check.
                if self._keys and watch is None and self._match_supported:
                    watch = asyncio.create_task(self._watch_match(), name="consul-intentions-match")
                elif not self._keys and watch is not None:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
                    watch = None
                await self.check_now()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    async def _watch_match(self) -> None:
        """Wake the checker whenever the intentions naming our identity as source change."""
        params = [
            ("by", "source"),
            ("name", self._identity),
            *[(k, v) for k, v in self._client.scope_params() if k != "dc"],
        ]

        def on_reply(reply: Reply) -> None:
            # An answer is not a change (wait expired, another source's intention moved).
            # The first answer counts as one: a change between the first check and
            # this watch's first read would otherwise wait for the timer.
            if reply.body != self._match_body:
                self._match_body = reply.body
                self._wake.set()

        def on_error(exc: Exception) -> None:
            if isinstance(exc, ConsulHttpError) and exc.status in (403, 404):
                raise _MatchUnsupported(str(exc)) from exc
            log.debug("intentions match watch: %s", exc)

        try:
            await run_blocking(self._client, self.MATCH_PATH, params, on_reply, on_error)
        except _MatchUnsupported as exc:
            self._match_supported = False
            log.info(
                "Consul refused the intentions match query (%s); intentions are re-checked "
                "every %gs (consul.intention_check_interval_ms)",
                exc,
                self._interval,
            )

    async def check_now(self) -> None:
        for key in sorted(self._keys):
            params = [
                ("source", self._identity),
                ("destination", key.service),
                *self._client.scope_params(namespace=key.namespace, partition=key.partition),
            ]
            try:
                reply = await self._client.get("/v1/connect/intentions/check", params)
            except SourceError as exc:
                log.debug("intention check for %s: %s", key.service, exc)
                continue
            allowed = bool(_mapping_or_empty(reply.body).get("Allowed"))
            self._verdicts[key] = None if allowed else self._denied(key)
        self._publish()

    def _denied(self, key: ConsulServiceKey) -> Diagnostic:
        return Diagnostic(
            consul_ref(key),
            "intentions",
            f"Consul intentions deny the gateway's identity {self._identity!r} "
            f"access to {key.service!r}: its sidecar will refuse every request",
            fix=f"consul intention create -allow {self._identity} {key.service}",
            severity=Severity.ERROR,
            code="consul.intention_denied",
        )

    def _publish(self) -> None:
        diags = [d for d in self._verdicts.values() if d is not None]
        self._store.set_source_diagnostics(self.SOURCE, diags)


def _mapping_or_empty(body: Any) -> Mapping[str, Any]:
    return body if isinstance(body, Mapping) else {}
