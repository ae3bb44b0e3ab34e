"""Translate the IR into Envoy resources, incrementally: ``translate(ir, previous)``.

The one entry point of the xDS translation stage. Pure: no I/O, no clocks, no
environment reads; the same IR gives equal resources.

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

Work in proportion to the change. The CDS and EDS mappings (and the
per-upstream memos behind them) are :class:`~bridge.model.sharded.ShardedMap`
versions evolved from the previous translation's: one changed upstream
copies one shard of each, nothing else.

Bytes handed over. A ClusterLoadAssignment is parsed from the wire bytes
:mod:`bridge.xds.clusters` encodes, which are its deterministic
serialization; ``Resources.encoded[ENDPOINT]`` carries each (message, bytes)
pair, a ShardedMap with the EDS mapping's keys evolved in lockstep with it,
so the cache does not serialize the message a second time. When ``ir.upstreams`` and the
previous IR's are both ShardedMaps (resolve evolves one from the other), the
changed upstreams are found with ``changed_since``, skipping every shared
shard; any other mapping is compared key by key (one C-speed pass), with the
same result.

No order. Resource mappings are keyed by name; their iteration order is
unspecified (a ShardedMap's is by hash shard). Whoever needs an order
(goldens, ``/debug``, replies) sorts.

A :class:`Translation` holds IR objects and messages; it never mutates, so an
older Translation stays valid. Its repr shows counts only, and the SDS mapping
(:class:`RedactedSecrets`) shows names only: Secret messages hold private keys
in their text form. Mappings are read-only.

This module decides *when* to build; :mod:`bridge.xds.clusters`,
:mod:`bridge.xds.listeners` and :mod:`bridge.xds.secrets` decide *what*;
:mod:`bridge.xds.names` makes every name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not, itemgetter
from types import MappingProxyType
from typing import NamedTuple, TypeVar

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
from bridge.model.sharded import ShardedMap
from bridge.xds import names
from bridge.xds.clusters import build_cluster, encoded_load_assignment
from bridge.xds.listeners import (
    build_listener,
    build_route_configuration,
    build_virtual_host,
    fill_route,
)
from bridge.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Encoded,
    Resources,
)
from bridge.xds.secrets import build_secret

__all__ = ["RedactedSecrets", "Translation", "translate"]

_M = TypeVar("_M", bound=Mapping[str, Message])


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


class _UpstreamMemo(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a cold build makes 10k of these and
    # a tuple is made in half the time (no per-field object.__setattr__).
    upstream: Upstream
    name: str
    cluster: Message
    load_assignment: Encoded | None  # EDS only: the message and its canonical bytes


@dataclass(frozen=True, slots=True)
class _UpstreamTable:
    """Upstream memos by key, and the CDS/EDS mappings made from them.

    ``encoded`` holds the EDS messages with their bytes, under the same keys
    as ``assignments`` (the two evolve in lockstep). All four maps are
    :class:`ShardedMap` versions evolved from the previous table's, so a
    change costs in proportion to itself: the untouched shards are shared,
    nothing is copied whole or re-sorted.
    """

    source: Mapping[UpstreamKey, Upstream]  # the IR mapping this was made from
    memos: ShardedMap[UpstreamKey, _UpstreamMemo]
    clusters: ShardedMap[str, Message]
    assignments: ShardedMap[str, Message]  # EDS upstreams only
    encoded: ShardedMap[str, Encoded]  # assignments' messages with their bytes
    # A plain (not sharded) source's keys and values in its order: the next
    # plain source with the same keys is diffed by C-speed identity compares
    # instead of a lookup per key.
    keys: tuple[UpstreamKey, ...] | None = None
    values: tuple[Upstream, ...] | None = None


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


_EMPTY_MEMO = _Memo(
    Ir(),
    _UpstreamTable(
        FrozenDict(), ShardedMap.of(()), ShardedMap.of(()), ShardedMap.of(()), ShardedMap.of(())
    ),
    {},
    {},
    {},
    {},
)


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
    encoded = FrozenDict({ENDPOINT: upstreams.encoded})
    return Translation(Resources(FrozenDict(by_type), encoded), memo)


def _translate_upstreams(
    source: Mapping[UpstreamKey, Upstream], prev: _UpstreamTable
) -> _UpstreamTable:
    if source is prev.source:
        return prev
    keys: tuple[UpstreamKey, ...] | None = None
    values: tuple[Upstream, ...] | None = None
    if not isinstance(source, ShardedMap):
        keys, values = tuple(source.keys()), tuple(source.values())
    if not prev.memos:
        return _build_upstreams(source, keys, values)
    changed: Iterable[UpstreamKey]
    if isinstance(source, ShardedMap) and isinstance(prev.source, ShardedMap):
        # Both versions of resolve's persistent map: the diff skips every
        # shard they share, so it costs in proportion to the change.
        changed = source.changed_since(prev.source)
    elif keys is not None and values is not None and prev.values is not None and keys == prev.keys:
        # The same keys in the same order (a plain mapping rebuilt by a change).
        changed = [keys[i] for i in compress(range(len(keys)), map(is_not, values, prev.values))]
    else:
        changed = _changed_keys(source, prev.memos)
    return _update_upstreams(source, prev, changed, keys, values)


def _build_upstreams(
    source: Mapping[UpstreamKey, Upstream],
    keys: tuple[UpstreamKey, ...] | None,
    values: tuple[Upstream, ...] | None,
) -> _UpstreamTable:
    """Every upstream from scratch (the first build): no lookups of a previous table."""
    memos = [_new_upstream_memo(upstream) for upstream in source.values()]
    encoded = [(m.name, m.load_assignment) for m in memos if m.load_assignment is not None]
    return _UpstreamTable(
        source,
        ShardedMap.of(zip(source.keys(), memos, strict=True)),
        ShardedMap.of([(m.name, m.cluster) for m in memos]),
        ShardedMap.of([(name, pair[0]) for name, pair in encoded]),
        ShardedMap.of(encoded),
        keys,
        values,
    )


def _changed_keys(
    source: Mapping[UpstreamKey, Upstream], memos: ShardedMap[UpstreamKey, _UpstreamMemo]
) -> list[UpstreamKey]:
    """Keys added, removed or whose Upstream is not the memo's: one pass over ``source``."""
    keys = list(source.keys())
    olds = memos.get_many(keys)
    changed = [
        key
        for key, upstream, old in zip(keys, source.values(), olds, strict=True)
        if old is None or old.upstream is not upstream
    ]
    if len(keys) - olds.count(None) < len(memos):  # some were removed: find them
        changed.extend(key for key in memos if key not in source)
    return changed


def _update_upstreams(
    source: Mapping[UpstreamKey, Upstream],
    prev: _UpstreamTable,
    changed: Iterable[UpstreamKey],
    keys: tuple[UpstreamKey, ...] | None,
    values: tuple[Upstream, ...] | None,
) -> _UpstreamTable:
    memos: dict[UpstreamKey, _UpstreamMemo] = {}
    clusters: dict[str, Message] = {}
    assignments: dict[str, Message] = {}
    encoded: dict[str, Encoded] = {}
    removed: list[UpstreamKey] = []
    removed_clusters: list[str] = []
    removed_assignments: list[str] = []
    for key in changed:
        upstream = source.get(key)
        old = prev.memos.get(key)
        if upstream is None:
            if old is not None:
                removed.append(key)
                removed_clusters.append(old.name)
                removed_assignments.append(old.name)  # absent ones are ignored
            continue
        if old is not None and old.upstream is upstream:
            continue
        new = memos[key] = _translate_upstream(upstream, old)
        if old is None or new.cluster is not old.cluster:
            clusters[new.name] = new.cluster
        if new.load_assignment is None:
            removed_assignments.append(new.name)
        elif old is None or new.load_assignment is not old.load_assignment:
            assignments[new.name] = new.load_assignment[0]
            encoded[new.name] = new.load_assignment
    return _UpstreamTable(
        source,
        prev.memos.evolve(memos, removed),
        prev.clusters.evolve(clusters, removed_clusters),
        prev.assignments.evolve(assignments, removed_assignments),
        prev.encoded.evolve(encoded, removed_assignments),
        keys,
        values,
    )


def _new_upstream_memo(upstream: Upstream) -> _UpstreamMemo:
    name = names.cluster_name(upstream.key)
    return _UpstreamMemo(
        upstream,
        name,
        build_cluster(upstream, name),
        encoded_load_assignment(upstream, name) if upstream.discovery is Discovery.EDS else None,
    )


def _translate_upstream(upstream: Upstream, old: _UpstreamMemo | None) -> _UpstreamMemo:
    if old is None or old.upstream.key != upstream.key:
        return _new_upstream_memo(upstream)
    before = old.upstream
    cluster = old.cluster if _cluster_fields(before) == _cluster_fields(upstream) else None
    if upstream.discovery is not Discovery.EDS:
        load_assignment = None
    elif old.load_assignment is not None and before.endpoints == upstream.endpoints:
        load_assignment = old.load_assignment
    else:
        load_assignment = encoded_load_assignment(upstream, old.name)
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
            old_routes = old.routes if old is not None else None
            message = build_virtual_host(vhost, [])
            # New routes are built inside the virtual host (no copy into it);
            # the memo keeps those sub-messages for the next build to reuse.
            add, append = message.routes.add, message.routes.append
            routes: dict[Route, Message] = {}
            for route in vhost.routes:
                reused = old_routes.get(route) if old_routes else None
                if reused is not None:
                    append(reused)  # a copy: upb messages have one parent
                    routes[route] = reused
                else:
                    fill_route(built := add(), route)
                    routes[route] = built
            out[vhost.host] = _VirtualHostMemo(vhost, message, routes)
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
