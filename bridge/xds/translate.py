"""Translate the IR into Envoy resources, incrementally: ``translate(ir, previous)``.

The one entry point of the xDS translation stage. Pure: no I/O, no clocks, no
environment reads; the same IR gives equal resources, sorted by name.

Incremental contract. Pass the previous :class:`Translation` back in and every
IR object that ``is`` the object seen last time (or equals it) yields the very
same protobuf message object as before — nothing is rebuilt for it — so the
cache can reuse serialized bytes and versions by identity. Concretely:

- an Upstream unchanged → same Cluster and ClusterLoadAssignment; only its
  endpoints changed → a new ClusterLoadAssignment, the same Cluster (so
  Envoy is not made to re-warm the cluster);
- a Secret unchanged → same Secret (rotation replaces the Secret alone; the
  clusters name secrets, they don't hold them);
- a Listener unchanged → same Listener;
- a VirtualHost unchanged → its VirtualHost message is reused; a changed one
  reuses the messages of its unchanged Routes; a RouteConfiguration is rebuilt
  only when its listener or one of its virtual hosts changed (one route
  configuration is one xDS resource: any change to it is a new message);
- when every message of a type is the same as before, the type's whole
  mapping is the previous mapping object.

A :class:`Translation` holds IR objects and messages; it never mutates, so an
older Translation stays valid. Its repr shows counts only, and the SDS mapping
(:class:`RedactedSecrets`) shows names only: Secret messages hold private keys
in their text form. Mappings are read-only views, sorted by name.

This module decides *when* to build; :mod:`bridge.xds.clusters`,
:mod:`bridge.xds.listeners` and :mod:`bridge.xds.secrets` decide *what*;
:mod:`bridge.xds.names` makes every name.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from types import MappingProxyType
from typing import TypeVar

from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    Discovery,
    Ir,
    Listener,
    Route,
    Secret,
    SecretName,
    Upstream,
    UpstreamKey,
    VirtualHost,
)
from bridge.xds import names
from bridge.xds.clusters import build_cluster, build_load_assignment
from bridge.xds.listeners import (
    build_listener,
    build_route,
    build_route_configuration,
    build_virtual_host,
)
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from bridge.xds.secrets import build_secret

__all__ = ["RedactedSecrets", "Translation", "translate"]

_M = TypeVar("_M", bound=Mapping[str, Message])

_EMPTY: MappingProxyType[str, Message] = MappingProxyType({})


class RedactedSecrets(Mapping[str, Message]):
    """The SDS mapping: a read-only name → Secret map whose repr names secrets only.

    A Secret message's own repr prints its private key; this keeps an
    accidental ``{resources!r}`` in a log line from doing the same.
    """

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Message]) -> None:
        self._data = data

    def __getitem__(self, name: str) -> Message:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"RedactedSecrets({sorted(self._data)!r}, contents=[redacted])"


@dataclass(frozen=True, slots=True)
class _UpstreamMemo:
    upstream: Upstream
    name: str
    cluster: Message
    load_assignment: Message | None  # EDS only


@dataclass(frozen=True, slots=True)
class _UpstreamTable:
    """Upstream memos in IR order, and the CDS/EDS mappings made from them.

    Kept as aligned tuples so an unchanged key order is found with C-speed
    identity comparisons, not a Python loop hashing 10k keys.
    """

    source: Mapping[UpstreamKey, Upstream]  # the IR mapping this was made from
    keys: tuple[UpstreamKey, ...]
    upstreams: tuple[Upstream, ...]
    memos: tuple[_UpstreamMemo, ...]
    # Read-only views handed out in Resources; the dicts behind them are never
    # changed after the table is made (a change copies them: dict.copy is C-fast).
    clusters: MappingProxyType[str, Message]
    assignments: MappingProxyType[str, Message]


@dataclass(frozen=True, slots=True)
class _VirtualHostMemo:
    vhost: VirtualHost
    message: Message
    routes: Mapping[Route, Message]


@dataclass(frozen=True, slots=True)
class _ListenerMemo:
    listener: Listener
    name: str
    message: Message


@dataclass(frozen=True, slots=True)
class _RouteConfigMemo:
    listener: Listener
    name: str
    vhost_messages: tuple[Message, ...]
    message: Message


@dataclass(frozen=True, slots=True)
class _SecretMemo:
    secret: Secret
    name: str
    message: Message


@dataclass(frozen=True, slots=True)
class _Memo:
    ir: Ir
    upstreams: _UpstreamTable
    vhosts: Mapping[str, _VirtualHostMemo]
    listeners: Mapping[str, _ListenerMemo]  # by IR listener name
    route_configs: Mapping[str, _RouteConfigMemo]  # by IR listener name
    secrets: Mapping[SecretName, _SecretMemo]


_EMPTY_MEMO = _Memo(Ir(), _UpstreamTable(FrozenDict(), (), (), (), _EMPTY, _EMPTY), {}, {}, {}, {})


@dataclass(frozen=True, slots=True)
class Translation:
    """Envoy resources for one IR, plus what the next ``translate`` call reuses."""

    resources: Resources
    _memo: _Memo = field(default=_EMPTY_MEMO, repr=False, compare=False)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{url.rsplit('.', 1)[-1]}={len(m)}" for url, m in self.resources.by_type.items()
        )
        return f"Translation({counts})"


def translate(ir: Ir, previous: Translation | None = None) -> Translation:
    """Envoy resources for ``ir``, reusing ``previous``'s messages for unchanged IR objects."""
    prev = previous._memo if previous is not None else _EMPTY_MEMO
    prev_resources = previous.resources if previous is not None else Resources()

    upstreams = _translate_upstreams(ir.upstreams, prev.upstreams)
    secrets = _translate_secrets(ir, prev)
    vhosts = _translate_vhosts(ir, prev)
    listeners, route_configs = _translate_listeners(ir, prev, vhosts)

    by_type: dict[str, Mapping[str, Message]] = {
        LISTENER: _mapping(
            ((m.name, m.message) for m in listeners.values()),
            prev_resources.of(LISTENER),
        ),
        ROUTE: _mapping(
            ((m.name, m.message) for m in route_configs.values()),
            prev_resources.of(ROUTE),
        ),
        CLUSTER: upstreams.clusters,
        ENDPOINT: upstreams.assignments,
        SECRET: _secret_mapping(
            ((m.name, m.message) for m in secrets.values()),
            prev_resources.of(SECRET),
        ),
    }
    memo = _Memo(ir, upstreams, vhosts, listeners, route_configs, secrets)
    return Translation(Resources(FrozenDict(by_type)), memo)


def _translate_upstreams(
    source: Mapping[UpstreamKey, Upstream], prev: _UpstreamTable
) -> _UpstreamTable:
    if source is prev.source:
        return prev
    keys = tuple(source.keys())
    if keys != prev.keys:  # an upstream added, removed or reordered
        return _rebuild_upstreams(source, keys, prev)
    values = tuple(source.values())
    changed = list(compress(range(len(values)), map(operator.is_not, values, prev.upstreams)))
    if not changed:
        return _UpstreamTable(source, keys, values, prev.memos, prev.clusters, prev.assignments)
    memos = list(prev.memos)
    clusters: dict[str, Message] | None = None
    assignments: dict[str, Message] | None = None
    resort = False
    for i in changed:
        old = prev.memos[i]
        new = memos[i] = _translate_upstream(values[i], old)
        if new.cluster is not old.cluster:
            if clusters is None:
                clusters = prev.clusters.copy()
            clusters[new.name] = new.cluster
        if new.load_assignment is not old.load_assignment:
            if assignments is None:
                assignments = prev.assignments.copy()
            if new.load_assignment is None:
                del assignments[new.name]
            else:
                resort = resort or new.name not in assignments
                assignments[new.name] = new.load_assignment
    if assignments is not None and resort:
        assignments = dict(sorted(assignments.items(), key=itemgetter(0)))
    return _UpstreamTable(
        source,
        keys,
        values,
        tuple(memos),
        MappingProxyType(clusters) if clusters is not None else prev.clusters,
        MappingProxyType(assignments) if assignments is not None else prev.assignments,
    )


def _rebuild_upstreams(
    source: Mapping[UpstreamKey, Upstream], keys: tuple[UpstreamKey, ...], prev: _UpstreamTable
) -> _UpstreamTable:
    old_memos = dict(zip(prev.keys, prev.memos, strict=True))
    memos: list[_UpstreamMemo] = []
    for key, upstream in source.items():
        old = old_memos.get(key)
        if old is None or old.upstream is not upstream:
            old = _translate_upstream(upstream, old)
        memos.append(old)
    clusters = _mapping(((m.name, m.cluster) for m in memos), prev.clusters)
    assignments = _mapping(((m.name, m.load_assignment) for m in memos), prev.assignments)
    return _UpstreamTable(source, keys, tuple(source.values()), tuple(memos), clusters, assignments)


def _translate_upstream(upstream: Upstream, old: _UpstreamMemo | None) -> _UpstreamMemo:
    if old is None or old.upstream.key != upstream.key:
        name = names.cluster_name(upstream.key)
        return _UpstreamMemo(
            upstream,
            name,
            build_cluster(upstream, name),
            build_load_assignment(upstream, name) if upstream.discovery is Discovery.EDS else None,
        )
    before = old.upstream
    cluster = old.cluster if _cluster_fields(before) == _cluster_fields(upstream) else None
    if upstream.discovery is not Discovery.EDS:
        load_assignment = None
    elif old.load_assignment is not None and before.endpoints == upstream.endpoints:
        load_assignment = old.load_assignment
    else:
        load_assignment = build_load_assignment(upstream, old.name)
    return _UpstreamMemo(
        upstream,
        old.name,
        cluster if cluster is not None else build_cluster(upstream, old.name),
        load_assignment,
    )


def _cluster_fields(u: Upstream) -> Upstream:
    """The upstream without its EDS endpoints: all a Cluster message is made from.

    The whole value minus one field (not a hand-picked list), so a field added
    to Upstream later can only cause a rebuild, never a stale cluster.
    """
    return dataclasses.replace(u, endpoints=()) if u.endpoints else u


def _translate_secrets(ir: Ir, prev: _Memo) -> Mapping[SecretName, _SecretMemo]:
    if ir.secrets is prev.ir.secrets:
        return prev.secrets
    out: dict[SecretName, _SecretMemo] = {}
    for name, secret in ir.secrets.items():
        old = prev.secrets.get(name)
        if old is not None and (old.secret is secret or old.secret == secret):
            out[name] = old if old.secret is secret else _SecretMemo(secret, old.name, old.message)
        else:
            out[name] = _SecretMemo(secret, names.secret_name(secret.name), build_secret(secret))
    return out


def _translate_vhosts(ir: Ir, prev: _Memo) -> Mapping[str, _VirtualHostMemo]:
    if ir.virtual_hosts is prev.ir.virtual_hosts:
        return prev.vhosts
    out: dict[str, _VirtualHostMemo] = {}
    for vhost in ir.virtual_hosts:
        old = prev.vhosts.get(vhost.host)
        if old is not None and old.vhost is vhost:
            out[vhost.host] = old
        elif old is not None and old.vhost == vhost:
            out[vhost.host] = _VirtualHostMemo(vhost, old.message, old.routes)
        else:
            old_routes = old.routes if old is not None else {}
            routes: dict[Route, Message] = {}
            for route in vhost.routes:
                message = old_routes.get(route)
                routes[route] = message if message is not None else build_route(route)
            out[vhost.host] = _VirtualHostMemo(
                vhost, build_virtual_host(vhost, [routes[r] for r in vhost.routes]), routes
            )
    return out


def _translate_listeners(
    ir: Ir, prev: _Memo, vhosts: Mapping[str, _VirtualHostMemo]
) -> tuple[Mapping[str, _ListenerMemo], Mapping[str, _RouteConfigMemo]]:
    vhost_messages = tuple(vhosts[v.host].message for v in ir.virtual_hosts)
    listeners: dict[str, _ListenerMemo] = {}
    route_configs: dict[str, _RouteConfigMemo] = {}
    for listener in ir.listeners:
        old = prev.listeners.get(listener.name)
        if old is not None and (old.listener is listener or old.listener == listener):
            listeners[listener.name] = old
        else:
            listeners[listener.name] = _ListenerMemo(
                listener, names.listener_name(listener), build_listener(listener)
            )
        old_rc = prev.route_configs.get(listener.name)
        if (
            old_rc is not None
            and old_rc.listener == listener
            and _same_objects(old_rc.vhost_messages, vhost_messages)
        ):
            route_configs[listener.name] = old_rc
        else:
            route_configs[listener.name] = _RouteConfigMemo(
                listener,
                names.route_config_name(listener),
                vhost_messages,
                build_route_configuration(listener, list(vhost_messages)),
            )
    return listeners, route_configs


def _same_objects(a: tuple[Message, ...], b: tuple[Message, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _secret_mapping(
    items: Iterable[tuple[str, Message]], previous: Mapping[str, Message]
) -> Mapping[str, Message]:
    mapping = _mapping(items, previous)
    return mapping if isinstance(mapping, RedactedSecrets) else RedactedSecrets(dict(mapping))


def _mapping(
    items: Iterable[tuple[str, Message | None]], previous: _M
) -> _M | MappingProxyType[str, Message]:
    """The name → message mapping of one type, sorted by name.

    Returns ``previous`` itself when it holds exactly these messages, so an
    unchanged type costs the cache one identity check.
    """
    pairs = [(name, message) for name, message in items if message is not None]
    if len(pairs) == len(previous) and all(previous.get(n) is m for n, m in pairs):
        return previous
    pairs.sort(key=itemgetter(0))
    return MappingProxyType(dict(pairs))
