"""Resolve: the World → the mesh-neutral IR, incrementally.

Entry point: :func:`resolve`. Per-Service unit: :func:`resolve_service`
(:mod:`.service`); annotations in :mod:`.annotations`; mesh detection in
:mod:`.mesh`; per-mesh TLS in :mod:`.policy`/:mod:`.meshtls`.

How a build goes:

1. Each affected Service is resolved on its own into a *claimed*
   :class:`ServiceResolution` (the routes it asks for).
2. Claims are settled across Services: for each ``(host, prefix)`` the
   claimant with the lowest namespace/name wins; each loser keeps its other
   routes and gets an ERROR naming the winner. The *final* resolution (what
   ``Resolved.services`` holds) is the claimed one minus lost routes (and
   upstreams no remaining route uses).
3. The IR is assembled: virtual hosts grouped by host (``*`` last), routes
   longest prefix first; upstreams keyed by :class:`UpstreamKey`; the mesh
   secrets the upstreams reference.

Incremental runs (``previous`` and ``changed`` given, same settings) redo
step 1 only for Services the changed refs can affect:

- ``Service`` → itself; ``Namespace`` → every Service in it;
- ``EndpointSlice`` → the Service it belongs to *now* and the one it belonged
  to in the previous World (a deleted or relabelled slice is found there);
- ``Pod`` → the Services whose slices name it, now or before
  (``World.services_by_pod`` of both Worlds);
- ``ConfigMap``/``Secret`` → every Service;
- ``ConsulService`` → every Service whose resolver is ``consul``;
- ``World.mesh_secrets`` replaced (no ref) → every Service in a mesh.

The previous World and the route claims travel in ``Resolved.basis``
(opaque). Step 2 and the route table are redone only for the
``(host, prefix)`` pairs whose claims changed; when no route changed (an
endpoint moved) the previous ``virtual_hosts`` tuple is reused as is. Every
unchanged ServiceResolution, Route, Upstream and VirtualHost is the *same
object* as in ``previous``, so translation reuses by ``is``.

``changed`` must name every ref that changed between ``previous``'s World and
``world`` (what :meth:`bridge.store.Store.take` returns); with different
settings, or no usable ``previous``, everything is resolved afresh (still
reusing equal objects).

Pure and deterministic: sorted output, no I/O, no clocks, no environment.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from bridge.model.diagnostics import Diagnostic, Severity, annotation_field
from bridge.model.frozen import EMPTY, FrozenDict
from bridge.model.ir import (
    Ir,
    Mesh,
    Resolved,
    Resolver,
    Route,
    Secret,
    SecretName,
    ServiceResolution,
    Upstream,
    UpstreamKey,
    VirtualHost,
)
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve.annotations import PREFIX_KEY, ROUTES_KEY
from bridge.resolve.service import Lookups, resolve_present, resolve_service

__all__ = ["CONFLICT", "resolve", "resolve_service"]

CONFLICT = "route.conflict"

_Pair = tuple[str, str]  # (host, prefix)
_ABSENT = object()

# ObjectRef's own order (kind, namespace, name) compared in C: its generated
# ``__lt__`` runs in Python, and a full build sorts 10k refs twice.
_REF_ORDER = operator.attrgetter("kind", "namespace", "name")


@dataclass(frozen=True, slots=True)
class _Basis:
    """What the next incremental run needs from this one.

    The maps are plain dicts that are never mutated once here: the next run
    copies them with ``dict.copy`` (C speed, no re-hashing of keys).
    ``services`` and ``upstreams`` are the very dicts the Resolved and its IR
    expose through ``FrozenDict.adopt`` (one copy per run, not two).
    """

    world: World
    settings: ResolveSettings
    # Claimed resolutions of Services that lost a route (for the others the
    # final resolution *is* the claimed one).
    claimed: dict[ObjectRef, ServiceResolution]
    # (host, prefix) → claimants, lowest source first (the winner).
    claims: dict[_Pair, tuple[Route, ...]]
    # host → its VirtualHost.
    hosts: dict[str, VirtualHost]
    # The final resolutions and the IR's upstreams, as dicts.
    services: dict[ObjectRef, ServiceResolution]
    upstreams: dict[UpstreamKey, Upstream]
    # Per-Namespace parses of this build, reused while the Namespace is the same.
    lookups: Lookups | None = None


def resolve(
    world: World,
    settings: ResolveSettings,
    previous: Resolved | None = None,
    changed: Iterable[ObjectRef] = (),
) -> Resolved:
    """Resolve ``world`` into per-Service results, the IR and every diagnostic."""
    basis = previous.basis if previous is not None else None
    if not isinstance(basis, _Basis):
        basis = None
    # Earlier results, consulted to hand back the very same object when a new
    # one is equal (also on a full rebuild).
    reuse_final: Mapping[ObjectRef, ServiceResolution] = previous.services if previous else EMPTY
    reuse_claimed = basis.claimed if basis is not None else {}
    if basis is not None and previous is not None and basis.settings == settings:
        return _build(
            world,
            settings,
            previous,
            basis,
            reuse_final,
            reuse_claimed,
            sorted(_affected(world, basis, reuse_final, changed), key=_REF_ORDER),
        )
    empty = _Basis(World(), settings, {}, {}, {}, {}, {})
    # Refs are unique keys already: a set is needed only to merge two maps
    # (ObjectRef hashes in Python; a full build has 10k of them).
    refs = set(world.services).union(reuse_final) if reuse_final else world.services.keys()
    return _build(
        world,
        settings,
        None,
        empty,
        reuse_final,
        reuse_claimed,
        sorted(refs, key=_REF_ORDER),
    )


# -- which Services a change can affect ----------------------------------------


def _affected(
    world: World,
    basis: _Basis,
    old_final: Mapping[ObjectRef, ServiceResolution],
    changed: Iterable[ObjectRef],
) -> set[ObjectRef]:
    old = basis.world
    out: set[ObjectRef] = set()
    everything = False
    namespaces: set[str] = set()
    consul = False
    for ref in changed:
        kind = ref.kind
        if kind is Kind.SERVICE:
            out.add(ref)
        elif kind is Kind.ENDPOINT_SLICE:
            for w in (world, old):
                s = w.endpoint_slices.get(ref)
                if s is not None and s.service_name:
                    out.add(ObjectRef(Kind.SERVICE, s.namespace, s.service_name))
        elif kind is Kind.POD:
            for w in (world, old):
                for ns, name in w.services_by_pod.get(ref, ()):
                    out.add(ObjectRef(Kind.SERVICE, ns, name))
        elif kind is Kind.NAMESPACE:
            namespaces.add(ref.name)
        elif kind in (Kind.CONFIG_MAP, Kind.SECRET):
            everything = True
        elif kind is Kind.CONSUL_SERVICE:
            consul = True
    if everything:
        return set(world.services) | set(old_final)
    if namespaces:
        for m in (world.services, old_final):
            out.update(r for r in m if r.namespace in namespaces)
    if consul:
        out.update(r for r, sr in old_final.items() if sr.resolver is Resolver.CONSUL)
    if world.mesh_secrets is not old.mesh_secrets and world.mesh_secrets != old.mesh_secrets:
        out.update(
            r for r, sr in old_final.items() if sr.mesh is not None and sr.mesh is not Mesh.NONE
        )
    return out


# -- the build -------------------------------------------------------------------


def _build(
    world: World,
    settings: ResolveSettings,
    previous: Resolved | None,
    base: _Basis,
    reuse_final: Mapping[ObjectRef, ServiceResolution],
    reuse_claimed: Mapping[ObjectRef, ServiceResolution],
    affected: list[ObjectRef],
) -> Resolved:
    """Re-resolve ``affected`` on top of ``base`` (empty for a full build).

    ``previous`` is None for a full build. ``reuse_*`` are earlier results,
    consulted only to hand back the very same object when a new one is equal.
    """
    base_final = base.services
    base_claimed = base.claimed
    base_claims = base.claims
    base_hosts = base.hosts
    old_ir = previous.ir if previous is not None else None
    old_world = base.world if previous is not None else None

    # Membership tests on empty maps still hash the key, and an ObjectRef
    # hashes in Python: a full build skips them.
    have_base = bool(base_final) or bool(base_claimed)
    have_reuse = bool(reuse_final) or bool(reuse_claimed)

    def old_claimed_of(ref: ObjectRef) -> ServiceResolution | None:
        return reuse_claimed.get(ref) or reuse_final.get(ref) if have_reuse else None

    lookups = Lookups(world, base.lookups)

    # 1. Claimed resolutions of the affected Services.
    new_claimed: dict[ObjectRef, ServiceResolution | None] = {}
    changed_pairs: set[_Pair] = set()
    service_of = world.services.get
    for ref in affected:
        base_old = base_claimed.get(ref) or base_final.get(ref) if have_base else None
        svc = service_of(ref)
        if svc is None:
            new_claimed[ref] = None
            if base_old is not None:
                changed_pairs.update((r.host, r.prefix) for r in base_old.routes)
            continue
        sr = resolve_present(world, settings, ref, svc, lookups)
        if have_reuse:
            sr = _reuse_parts(sr, old_claimed_of(ref))
        new_claimed[ref] = sr
        old_routes = base_old.routes if base_old is not None else ()
        if sr.routes is not old_routes and sr.routes != old_routes:
            changed_pairs.update((r.host, r.prefix) for r in old_routes)
            changed_pairs.update((r.host, r.prefix) for r in sr.routes)

    # 2. Settle the claims of the (host, prefix) pairs that changed.
    claims = base_claims
    # Claimants of a changed pair that were not re-resolved (one may have
    # started or stopped losing).
    refinalize: set[ObjectRef] = set()
    if changed_pairs:
        claims_d = base_claims.copy()
        adds: dict[_Pair, list[Route]] = {}
        for csr in new_claimed.values():
            if csr is not None:
                for r in csr.routes:
                    pair = (r.host, r.prefix)
                    if pair in changed_pairs:
                        bucket = adds.get(pair)
                        if bucket is None:
                            adds[pair] = [r]
                        else:
                            bucket.append(r)
        for pair in changed_pairs:
            prior = claims_d.get(pair, ())
            kept = [r for r in prior if r.source not in new_claimed]
            refinalize.update(r.source for r in kept)
            kept.extend(adds.get(pair, ()))
            if len(kept) > 1:
                kept.sort(key=_claim_order)
                claims_d[pair] = tuple(kept)
            elif kept:
                claims_d[pair] = (kept[0],)
            else:
                claims_d.pop(pair, None)
        claims = claims_d

    # 3. Final resolutions: the affected Services and every claimant of a
    #    changed pair.
    services = base_final.copy()
    claimed = base_claimed
    claimed_d: dict[ObjectRef, ServiceResolution] | None = None
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]] = []
    order = sorted(refinalize.union(new_claimed), key=_REF_ORDER) if refinalize else affected
    for ref in order:
        src = new_claimed.get(ref, _ABSENT)
        if src is _ABSENT:
            src = claimed.get(ref) or services.get(ref)
        prev_final = base_final.get(ref) if have_base else None
        lost = False
        if src is None:
            services.pop(ref, None)
            final = None
        else:
            assert isinstance(src, ServiceResolution)
            final = _settle(world, src, claims)
            lost = final is not src
            if have_reuse:
                old = reuse_final.get(ref)
                if old is not None and old is not final and old == final:
                    final = old
            services[ref] = final
        had = bool(claimed) and ref in claimed
        if had or lost:
            if claimed_d is None:
                claimed_d = claimed.copy()
            if lost:
                assert isinstance(src, ServiceResolution)
                claimed_d[ref] = src
            else:
                claimed_d.pop(ref, None)
        if final is not prev_final:
            finals_changed.append((prev_final, final))
    if claimed_d is not None:
        claimed = claimed_d

    # 4. The route table, for the hosts whose pairs changed.
    hosts = base_hosts
    vhosts_changed = False
    if changed_pairs:
        hosts_d = base_hosts.copy()
        # The winners of every changed host, in one pass over the claims:
        # O(pairs), and only when a route changed, never for endpoint changes.
        winners: dict[str, list[Route]] = {pair[0]: [] for pair in changed_pairs}
        for (host, _), claimants in claims.items():
            bucket = winners.get(host)
            if bucket is not None:
                bucket.append(claimants[0])
        for host, routes in winners.items():
            old_vh = base_hosts.get(host)
            vh = _virtual_host(host, routes, old_vh)
            if vh is None:
                if old_vh is not None:
                    del hosts_d[host]
                    vhosts_changed = True
            elif vh is not old_vh:
                hosts_d[host] = vh
                vhosts_changed = True
        hosts = hosts_d if vhosts_changed else base_hosts

    ir, upstreams = _ir(
        world,
        settings,
        old_ir,
        old_world,
        services,
        base.upstreams,
        hosts,
        vhosts_changed,
        finals_changed,
    )
    diagnostics = _diagnostics(world, previous, old_world, services, finals_changed)
    return Resolved(
        services=FrozenDict.adopt(services),
        ir=ir,
        diagnostics=diagnostics,
        basis=_Basis(world, settings, claimed, claims, hosts, services, upstreams, lookups),
    )


def _claim_order(r: Route) -> tuple[str, str]:
    return (r.source.namespace, r.source.name)


def _reuse_parts(new: ServiceResolution, old: ServiceResolution | None) -> ServiceResolution:
    """``old`` itself if equal; else ``new`` holding ``old``'s equal Routes and Upstreams."""
    if old is None:
        return new
    if new == old:
        return old
    routes = new.routes
    if routes == old.routes:
        routes = old.routes
    elif old.routes:
        prev_routes = {r: r for r in old.routes}
        routes = tuple(prev_routes.get(r, r) for r in routes)
    upstreams = new.upstreams
    if upstreams == old.upstreams:
        upstreams = old.upstreams
    elif old.upstreams:
        prev_ups = {u.key: u for u in old.upstreams}
        upstreams = tuple(_same(prev_ups.get(u.key), u) for u in upstreams)
    if routes is new.routes and upstreams is new.upstreams:
        return new
    return replace(new, routes=routes, upstreams=upstreams)


def _same(old: Upstream | None, new: Upstream) -> Upstream:
    return old if old is not None and old == new else new


def _settle(
    world: World, sr: ServiceResolution, claims: Mapping[_Pair, tuple[Route, ...]]
) -> ServiceResolution:
    """``sr`` minus the routes another Service won, with an ERROR per lost route."""
    lost: list[tuple[Route, ObjectRef]] = []
    ref = sr.ref
    for r in sr.routes:
        source = claims[(r.host, r.prefix)][0].source
        if source is not ref and source != ref:
            lost.append((r, source))
    if not lost:
        return sr
    svc = world.services.get(sr.ref)
    key = ROUTES_KEY if svc is not None and ROUTES_KEY in svc.annotations else PREFIX_KEY
    diags = [
        Diagnostic(
            sr.ref,
            annotation_field(key),
            f"host {r.host} prefix {r.prefix} is already claimed by {winner}; "
            "this route is left out",
            "use another host or prefix, or remove the route from one of the Services",
            Severity.ERROR,
            CONFLICT,
        )
        for r, winner in lost
    ]
    lost_routes = {id(r) for r, _ in lost}
    routes = tuple(r for r in sr.routes if id(r) not in lost_routes)
    used = {r.upstream for r in routes}
    return replace(
        sr,
        routes=routes,
        upstreams=tuple(u for u in sr.upstreams if u.key in used),
        diagnostics=tuple(sorted(set(sr.diagnostics).union(diags))),
    )


def _virtual_host(host: str, winners: list[Route], old: VirtualHost | None) -> VirtualHost | None:
    if not winners:
        return None
    winners.sort(key=_route_order)
    routes = tuple(winners)
    if old is not None and old.routes == routes:
        return old
    return VirtualHost(host=host, routes=routes)


def _route_order(r: Route) -> tuple[int, str]:
    return (-len(r.prefix), r.prefix)


def _host_order(vh: VirtualHost) -> tuple[bool, str]:
    return (vh.host == "*", vh.host)


def _ir(
    world: World,
    settings: ResolveSettings,
    old_ir: Ir | None,
    old_world: World | None,
    services: Mapping[ObjectRef, ServiceResolution],
    base_upstreams: dict[UpstreamKey, Upstream],
    hosts: Mapping[str, VirtualHost],
    vhosts_changed: bool,
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]],
) -> tuple[Ir, dict[UpstreamKey, Upstream]]:
    """The IR, and its upstreams as a plain dict for the next run."""
    if old_ir is None:
        virtual_hosts = tuple(sorted(hosts.values(), key=_host_order))
        ups = {u.key: u for sr in services.values() for u in sr.upstreams}
        frozen = FrozenDict.adopt(ups)
        ir = Ir(settings.listeners, virtual_hosts, frozen, _secrets(world, frozen))
        return ir, ups

    virtual_hosts = (
        tuple(sorted(hosts.values(), key=_host_order)) if vhosts_changed else old_ir.virtual_hosts
    )
    upstreams: Mapping[UpstreamKey, Upstream] = old_ir.upstreams
    tls_changed = False
    ups_d: dict[UpstreamKey, Upstream] | None = None
    for before, after in finals_changed:
        b = before.upstreams if before is not None else ()
        a = after.upstreams if after is not None else ()
        if a is b:
            continue
        if ups_d is None:
            ups_d = base_upstreams.copy()
        # Replace in place: an upstream that is still there keeps its position,
        # so translation sees the same key order and patches one entry instead
        # of walking all of them again.
        kept = {u.key for u in a}
        for u in b:
            if u.key not in kept:
                ups_d.pop(u.key, None)
        for u in a:
            ups_d[u.key] = u
        if {u.tls for u in b if u.tls} != {u.tls for u in a if u.tls}:
            tls_changed = True
    if ups_d is not None:
        upstreams = FrozenDict.adopt(ups_d)
    else:
        ups_d = base_upstreams
    secrets = old_ir.secrets
    if tls_changed or (old_world is not None and world.mesh_secrets is not old_world.mesh_secrets):
        secrets = _secrets(world, upstreams)
        if secrets == old_ir.secrets:
            secrets = old_ir.secrets
    if (
        virtual_hosts is old_ir.virtual_hosts
        and upstreams is old_ir.upstreams
        and secrets is old_ir.secrets
        and settings.listeners == old_ir.listeners
    ):
        return old_ir, ups_d
    return Ir(settings.listeners, virtual_hosts, upstreams, secrets), ups_d


def _secrets(
    world: World, upstreams: Mapping[UpstreamKey, Upstream]
) -> Mapping[SecretName, Secret]:
    names: set[SecretName] = set()
    for u in upstreams.values():
        if u.tls is not None:
            if u.tls.client_identity is not None:
                names.add(u.tls.client_identity)
            if u.tls.trust_bundle is not None:
                names.add(u.tls.trust_bundle)
    if not names:
        return EMPTY
    have = world.mesh_secrets
    return FrozenDict({n: have[n] for n in sorted(names) if n in have})


def _diagnostics(
    world: World,
    previous: Resolved | None,
    old_world: World | None,
    services: Mapping[ObjectRef, ServiceResolution],
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]],
) -> tuple[Diagnostic, ...]:
    if previous is not None and old_world is not None:
        same = world.source_diagnostics is old_world.source_diagnostics and all(
            (b.diagnostics if b else ()) == (a.diagnostics if a else ()) for b, a in finals_changed
        )
        if same:
            return previous.diagnostics
    # Namespace problems repeat on every Service relying on them: one copy.
    found: set[Diagnostic] = set(world.source_diagnostics)
    for sr in services.values():
        found.update(sr.diagnostics)
    return tuple(sorted(found))
