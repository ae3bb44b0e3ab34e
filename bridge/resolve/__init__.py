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

Work in proportion to the change: ``Resolved.services``, ``Ir.upstreams``
and the route claims are :class:`ShardedMap` versions evolved from the
previous build's (one change copies one ~40-entry shard, and
``changed_since`` finds it again by identity); the secrets the upstreams
name and every diagnostic are counted, so a change adjusts the counts
instead of walking 10k Services; the sorted ``virtual_hosts`` and
``diagnostics`` tuples are patched by bisection. Iteration order of
``Resolved.services`` and ``Ir.upstreams`` is by hash shard, not sorted:
readers that show or compare an order sort.

``changed`` must name every ref that changed between ``previous``'s World and
``world`` (what :meth:`bridge.store.Store.take` returns); with different
settings, or no usable ``previous``, everything is resolved afresh (still
reusing equal objects).

Pure and deterministic: no I/O, no clocks, no environment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, TypeVar

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
from bridge.model.k8s import K8sService, Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.sharded import ShardedMap
from bridge.model.world import World
from bridge.resolve.annotations import PREFIX_KEY, ROUTES_KEY
from bridge.resolve.service import Lookups, resolve_present, resolve_service

__all__ = ["CONFLICT", "resolve", "resolve_service"]

CONFLICT = "route.conflict"

_Pair = tuple[str, str]  # (host, prefix)
_Claims = ShardedMap[str, Mapping[str, tuple[Route, ...]]]  # host → prefix → claimants
_ABSENT = object()
_K = TypeVar("_K")
_V = TypeVar("_V")
_EMPTY_MAP: ShardedMap[Any, Any] = ShardedMap.of(())
# Above this many added or removed entries a sorted tuple is sorted afresh
# rather than patched by bisection (each insertion moves the tail).
_PATCH_LIMIT = 64


@dataclass(frozen=True, slots=True)
class _Groups:
    """Refs whose final resolution a shared input affects (made on first need).

    A ConsulService change re-resolves every Service whose resolver is
    ``consul``, new mesh secrets every Service in a mesh: these indexes find
    them without walking every Service. Kept up to date by each build once
    made; a full build leaves them to the first change that needs them.
    """

    consul: ShardedMap[ObjectRef, None]
    meshed: ShardedMap[ObjectRef, None]


@dataclass(frozen=True, slots=True)
class _Basis:
    """What the next incremental run needs from this one.

    Every map is immutable once here; the next run evolves the sharded ones,
    sharing what it does not touch. ``services`` and ``upstreams`` are the
    very maps the Resolved and its IR expose.
    """

    world: World
    settings: ResolveSettings
    # Claimed resolutions of Services that lost a route (for the others the
    # final resolution *is* the claimed one).
    claimed: ShardedMap[ObjectRef, ServiceResolution]
    # host → prefix → claimants, lowest source first (the winner).
    claims: _Claims
    # host → its VirtualHost.
    hosts: ShardedMap[str, VirtualHost]
    # The final resolutions and the IR's upstreams.
    services: ShardedMap[ObjectRef, ServiceResolution]
    upstreams: ShardedMap[UpstreamKey, Upstream]
    # How many upstreams name each secret (only names in use are keys).
    secret_uses: Mapping[SecretName, int]
    # How many times each diagnostic occurs: once per Service resolution
    # that has it, once if the sources report it.
    diagnostic_counts: ShardedMap[Diagnostic, int]
    groups: _Groups | None = None
    # Per-Namespace parses of this build, reused while the Namespace is the same.
    lookups: Lookups | None = None


def _empty_basis(settings: ResolveSettings) -> _Basis:
    e = _EMPTY_MAP  # immutable: one empty map serves every field
    return _Basis(World(), settings, e, e, e, e, e, {}, e)


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
    reuse_claimed: Mapping[ObjectRef, ServiceResolution] = (
        basis.claimed if basis is not None else EMPTY
    )
    if basis is not None and previous is not None and basis.settings == settings:
        affected, groups = _affected(world, basis, reuse_final, changed)
        return _build(
            world, settings, previous, basis, reuse_final, reuse_claimed, affected, groups
        )
    # The order Services are resolved in does not matter: every output is a
    # map or is sorted on its own. Refs are unique keys already: a set is
    # needed only to merge two maps (ObjectRef hashes in Python).
    refs: Collection[ObjectRef] | Mapping[ObjectRef, K8sService] = (
        set(world.services).union(reuse_final) if reuse_final else world.services
    )
    return _build(
        world, settings, None, _empty_basis(settings), reuse_final, reuse_claimed, refs, None
    )


# -- which Services a change can affect ----------------------------------------


def _affected(
    world: World,
    basis: _Basis,
    old_final: Mapping[ObjectRef, ServiceResolution],
    changed: Iterable[ObjectRef],
) -> tuple[set[ObjectRef], _Groups | None]:
    old = basis.world
    out: set[ObjectRef] = set()
    everything = False
    namespaces: set[str] = set()
    consul = False
    groups = basis.groups
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
        return set(world.services).union(old_final), groups
    if namespaces:
        for m in (world.services, old_final):
            out.update(r for r in m if r.namespace in namespaces)
    secrets_changed = (
        world.mesh_secrets is not old.mesh_secrets and world.mesh_secrets != old.mesh_secrets
    )
    if consul or secrets_changed:
        if groups is None:
            groups = _groups_of(old_final)
        if consul:
            out.update(groups.consul)
        if secrets_changed:
            out.update(groups.meshed)
    return out, groups


def _is_consul(sr: ServiceResolution | None) -> bool:
    return sr is not None and sr.resolver is Resolver.CONSUL


def _is_meshed(sr: ServiceResolution | None) -> bool:
    return sr is not None and sr.mesh is not None and sr.mesh is not Mesh.NONE


def _groups_of(finals: Mapping[ObjectRef, ServiceResolution]) -> _Groups:
    return _Groups(
        ShardedMap.of((r, None) for r, sr in finals.items() if _is_consul(sr)),
        ShardedMap.of((r, None) for r, sr in finals.items() if _is_meshed(sr)),
    )


def _evolve_groups(
    groups: _Groups,
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]],
) -> _Groups:
    consul: dict[ObjectRef, None] = {}
    meshed: dict[ObjectRef, None] = {}
    not_consul: list[ObjectRef] = []
    not_meshed: list[ObjectRef] = []
    for before, after in finals_changed:
        ref = after.ref if after is not None else before.ref if before is not None else None
        if ref is None:
            continue
        c, m = _is_consul(after), _is_meshed(after)
        if c is not _is_consul(before):
            if c:
                consul[ref] = None
            else:
                not_consul.append(ref)
        if m is not _is_meshed(before):
            if m:
                meshed[ref] = None
            else:
                not_meshed.append(ref)
    new_consul = groups.consul.evolve(consul, not_consul)
    new_meshed = groups.meshed.evolve(meshed, not_meshed)
    if new_consul is groups.consul and new_meshed is groups.meshed:
        return groups
    return _Groups(new_consul, new_meshed)


# -- the build -------------------------------------------------------------------


def _build(
    world: World,
    settings: ResolveSettings,
    previous: Resolved | None,
    base: _Basis,
    reuse_final: Mapping[ObjectRef, ServiceResolution],
    reuse_claimed: Mapping[ObjectRef, ServiceResolution],
    affected: Collection[ObjectRef] | Mapping[ObjectRef, K8sService],
    groups: _Groups | None,
) -> Resolved:
    """Re-resolve ``affected`` on top of ``base`` (empty for a full build).

    ``affected`` may be ``world.services`` itself (every Service, found
    without a lookup each: an ObjectRef hashes in Python).

    ``previous`` is None for a full build. ``reuse_*`` are earlier results,
    consulted only to hand back the very same object when a new one is equal.
    """
    full = previous is None
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
    todo: Iterable[tuple[ObjectRef, K8sService | None]] = (
        affected.items()
        if isinstance(affected, Mapping)
        else ((ref, service_of(ref)) for ref in affected)
    )
    for ref, svc in todo:
        base_old = base_claimed.get(ref) or base_final.get(ref) if have_base else None
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
    # host → its new prefix → claimants (copies of the changed hosts' maps).
    changed_hosts: dict[str, dict[str, tuple[Route, ...]]] = {}
    if changed_pairs:
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
            host, prefix = pair
            prefixes = changed_hosts.get(host)
            if prefixes is None:
                prior_host = base_claims.get(host) if not full else None
                prefixes = changed_hosts[host] = dict(prior_host) if prior_host else {}
            prior = prefixes.get(prefix, ())
            kept = [r for r in prior if r.source not in new_claimed]
            refinalize.update(r.source for r in kept)
            kept.extend(adds.get(pair, ()))
            if len(kept) > 1:
                kept.sort(key=_claim_order)
                prefixes[prefix] = tuple(kept)
            elif kept:
                prefixes[prefix] = (kept[0],)
            else:
                prefixes.pop(prefix, None)
        claims = _put(
            base_claims,
            {h: p for h, p in changed_hosts.items() if p},
            [h for h, p in changed_hosts.items() if not p],
            full,
        )

    # 3. Final resolutions: the affected Services and every claimant of a
    #    changed pair.
    finals: list[tuple[ObjectRef, ServiceResolution]] = []
    gone: list[ObjectRef] = []
    lost_claims: dict[ObjectRef, ServiceResolution] = {}
    unlost: list[ObjectRef] = []
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]] = []
    had_claimed = bool(base_claimed)
    # The claims of every host a full build has are still in ``changed_hosts``
    # (plain dicts, read in C).
    host_claims: Mapping[str, Mapping[str, tuple[Route, ...]]] = changed_hosts if full else claims
    settle: Iterable[tuple[ObjectRef, object]] = (
        [(ref, new_claimed.get(ref, _ABSENT)) for ref in refinalize.union(new_claimed)]
        if refinalize
        else new_claimed.items()
    )
    for ref, claim in settle:
        src = base_claimed.get(ref) or base_final.get(ref) if claim is _ABSENT else claim
        prev_final = base_final.get(ref) if have_base else None
        lost = False
        if src is None:
            gone.append(ref)
            final = None
        else:
            assert isinstance(src, ServiceResolution)
            final = _settle(world, src, host_claims)
            lost = final is not src
            if have_reuse:
                old = reuse_final.get(ref)
                if old is not None and old is not final and old == final:
                    final = old
            if final is not prev_final:
                finals.append((ref, final))
        if lost:
            assert isinstance(src, ServiceResolution)
            lost_claims[ref] = src
        elif had_claimed and ref in base_claimed:
            unlost.append(ref)
        if final is not prev_final:
            finals_changed.append((prev_final, final))
    services = ShardedMap.of(finals) if full else base_final.evolve(dict(finals), gone)
    claimed = _put(base_claimed, lost_claims, unlost, full)
    if groups is not None:
        groups = _evolve_groups(groups, finals_changed)

    # 4. The route table, for the hosts whose pairs changed.
    hosts = base_hosts
    vhosts_changed: dict[str, VirtualHost | None] = {}
    if changed_hosts:
        for host, prefixes in changed_hosts.items():
            old_vh = base_hosts.get(host) if not full else None
            vh = _virtual_host(host, [c[0] for c in prefixes.values()], old_vh)
            if vh is not old_vh:
                vhosts_changed[host] = vh
        if vhosts_changed:
            hosts = _put(
                base_hosts,
                {h: vh for h, vh in vhosts_changed.items() if vh is not None},
                [h for h, vh in vhosts_changed.items() if vh is None],
                full,
            )

    ir, upstreams, secret_uses = _ir(
        world,
        settings,
        old_ir,
        old_world,
        services,
        base,
        hosts,
        vhosts_changed,
        finals_changed,
    )
    diagnostics, counts = _diagnostics(world, previous, old_world, base, services, finals_changed)
    return Resolved(
        services=services,
        ir=ir,
        diagnostics=diagnostics,
        basis=_Basis(
            world,
            settings,
            claimed,
            claims,
            hosts,
            services,
            upstreams,
            secret_uses,
            counts,
            groups,
            lookups,
        ),
    )


def _put(
    base: ShardedMap[_K, _V], updates: Mapping[_K, _V], removals: Iterable[_K], full: bool
) -> ShardedMap[_K, _V]:
    """``base`` evolved, or (a full build, ``base`` empty) a fresh map of ``updates``."""
    if full:
        return ShardedMap.of(updates.items()) if updates else base
    return base.evolve(updates, removals)


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
    world: World, sr: ServiceResolution, claims: Mapping[str, Mapping[str, tuple[Route, ...]]]
) -> ServiceResolution:
    """``sr`` minus the routes another Service won, with an ERROR per lost route."""
    lost: list[tuple[Route, ObjectRef]] = []
    ref = sr.ref
    for r in sr.routes:
        source = claims[r.host][r.prefix][0].source
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


def _patch_hosts(
    old: tuple[VirtualHost, ...], changed: Mapping[str, VirtualHost | None]
) -> tuple[VirtualHost, ...]:
    """``old`` (sorted by :func:`_host_order`) with the changed hosts replaced, added or removed."""
    out = list(old)
    for host, vh in changed.items():
        i = bisect_left(out, (host == "*", host), key=_host_order)
        present = i < len(out) and out[i].host == host
        if vh is None:
            if present:
                del out[i]
        elif present:
            out[i] = vh
        else:
            out.insert(i, vh)
    return tuple(out)


def _ir(
    world: World,
    settings: ResolveSettings,
    old_ir: Ir | None,
    old_world: World | None,
    services: ShardedMap[ObjectRef, ServiceResolution],
    base: _Basis,
    hosts: ShardedMap[str, VirtualHost],
    vhosts_changed: Mapping[str, VirtualHost | None],
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]],
) -> tuple[Ir, ShardedMap[UpstreamKey, Upstream], Mapping[SecretName, int]]:
    """The IR, its upstreams and how many upstreams name each secret."""
    if old_ir is None:
        virtual_hosts = tuple(sorted(hosts.values(), key=_host_order))
        ups = ShardedMap.of((u.key, u) for sr in services.values() for u in sr.upstreams)
        all_uses = Counter(chain.from_iterable(_secret_names(u) for u in ups.values() if u.tls))
        ir = Ir(settings.listeners, virtual_hosts, ups, _secrets(world, all_uses))
        return ir, ups, all_uses

    virtual_hosts = old_ir.virtual_hosts
    if len(vhosts_changed) > _PATCH_LIMIT:
        virtual_hosts = tuple(sorted(hosts.values(), key=_host_order))
    elif vhosts_changed:
        virtual_hosts = _patch_hosts(virtual_hosts, vhosts_changed)
    base_ups = base.upstreams
    get_up = base_ups.get
    updates: dict[UpstreamKey, Upstream] = {}
    removed: set[UpstreamKey] = set()
    uses_delta: Counter[SecretName] = Counter()
    for before, after in finals_changed:
        b = before.upstreams if before is not None else ()
        a = after.upstreams if after is not None else ()
        if a is b:
            continue
        kept = {u.key for u in a}
        removed.update(u.key for u in b if u.key not in kept)
        for u in a:
            if get_up(u.key) is not u:
                updates[u.key] = u
        # Secrets are counted per upstream: every upstream is some Service's.
        b_names = [n for u in b if u.tls for n in _secret_names(u)]
        a_names = [n for u in a if u.tls for n in _secret_names(u)]
        if a_names != b_names:
            uses_delta.subtract(b_names)
            uses_delta.update(a_names)
    # Set wins over dropped (keys name their Service, so both cannot normally happen).
    removed.difference_update(updates)
    upstreams = base_ups.evolve(updates, removed)
    uses = base.secret_uses
    names_changed = False
    if any(uses_delta.values()):
        new_uses = dict(uses)
        for name, d in uses_delta.items():
            if d:
                n = new_uses.get(name, 0) + d
                if n > 0:
                    names_changed = names_changed or name not in new_uses
                    new_uses[name] = n
                else:
                    del new_uses[name]
                    names_changed = True
        uses = new_uses
    secrets = old_ir.secrets
    if names_changed or (
        old_world is not None and world.mesh_secrets is not old_world.mesh_secrets
    ):
        secrets = _secrets(world, uses)
        if secrets == old_ir.secrets:
            secrets = old_ir.secrets
    if (
        virtual_hosts is old_ir.virtual_hosts
        and upstreams is old_ir.upstreams
        and secrets is old_ir.secrets
        and settings.listeners == old_ir.listeners
    ):
        return old_ir, upstreams, uses
    return Ir(settings.listeners, virtual_hosts, upstreams, secrets), upstreams, uses


def _secret_names(u: Upstream) -> tuple[SecretName, ...]:
    tls = u.tls
    if tls is None:
        return ()
    if tls.client_identity is None:
        return () if tls.trust_bundle is None else (tls.trust_bundle,)
    if tls.trust_bundle is None:
        return (tls.client_identity,)
    return (tls.client_identity, tls.trust_bundle)


def _secrets(world: World, names: Collection[SecretName]) -> Mapping[SecretName, Secret]:
    if not names:
        return EMPTY
    have = world.mesh_secrets
    return FrozenDict({n: have[n] for n in sorted(names) if n in have})


def _diagnostics(
    world: World,
    previous: Resolved | None,
    old_world: World | None,
    base: _Basis,
    services: Mapping[ObjectRef, ServiceResolution],
    finals_changed: list[tuple[ServiceResolution | None, ServiceResolution | None]],
) -> tuple[tuple[Diagnostic, ...], ShardedMap[Diagnostic, int]]:
    """Every distinct diagnostic, sorted, and how often each occurs."""
    if previous is None or old_world is None:
        # Namespace problems repeat on every Service relying on them: one copy.
        found = Counter(chain.from_iterable(sr.diagnostics for sr in services.values()))
        found.update(set(world.source_diagnostics))
        return tuple(sorted(found)), ShardedMap.of(found.items())
    delta: Counter[Diagnostic] = Counter()
    for b, a in finals_changed:
        bd = b.diagnostics if b is not None else ()
        ad = a.diagnostics if a is not None else ()
        if ad is not bd and ad != bd:
            delta.subtract(bd)
            delta.update(ad)
    if world.source_diagnostics is not old_world.source_diagnostics:
        delta.subtract(set(old_world.source_diagnostics))
        delta.update(set(world.source_diagnostics))
    old_counts = base.diagnostic_counts
    updates: dict[Diagnostic, int] = {}
    added: list[Diagnostic] = []
    removed: list[Diagnostic] = []
    for d, change in delta.items():
        if change:
            before = old_counts.get(d) or 0
            after = before + change
            if after > 0:
                updates[d] = after
                if not before:
                    added.append(d)
            else:
                removed.append(d)
    counts = old_counts.evolve(updates, removed)
    if not added and not removed:
        return previous.diagnostics, counts
    if len(added) + len(removed) > _PATCH_LIMIT:
        return tuple(sorted(counts)), counts
    out = list(previous.diagnostics)
    for d in removed:
        i = bisect_left(out, d)
        if i < len(out) and out[i] == d:
            del out[i]
    for d in added:
        out.insert(bisect_left(out, d), d)
    return tuple(out), counts
