"""The snapshot cache: versioned, serialized xDS resources shared by node groups.

A :class:`Snapshot` is made from a :class:`bridge.xds.resources.Resources`.
Every resource is serialized once (deterministically) into ``Any`` bytes and
versioned by a hash of those bytes. A resource whose message object *is* the
one in the previous snapshot reuses the previous entry, so one endpoint change
costs work in proportion to the change: type versions are kept as an
order-independent mix (XOR) of the per-resource hashes and updated
incrementally, and so is the consistency check (the references each resource
makes are extracted once, when its entry is made, and counted).

:class:`SnapshotCache` holds one snapshot per node *group* — every node of the
group is served the same object, never a copy — and tells watchers when a
group's snapshot changes. It also holds the :class:`AccessPolicy` (which node
ids may connect, which may receive secrets).

This module knows nothing of gRPC or streams and does no I/O; the server
(:mod:`bridge.server.ads`) reads snapshots and registers watches.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from google.protobuf.message import Message

from bridge.errors import ConsistencyError
from bridge.server.wire import any_prefix, varint
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources

DEFAULT_GROUP = "default"

Ref = tuple[str, str]  # (type URL, resource name) that a resource needs

_KIND = {
    LISTENER: "listener",
    ROUTE: "route configuration",
    CLUSTER: "cluster",
    ENDPOINT: "cluster load assignment",
    SECRET: "secret",
}
_HCM_URL = "type.googleapis.com/" + hcm_v3.HttpConnectionManager.DESCRIPTOR.full_name
_UPSTREAM_TLS_URL = "type.googleapis.com/" + tls_v3.UpstreamTlsContext.DESCRIPTOR.full_name
_DOWNSTREAM_TLS_URL = "type.googleapis.com/" + tls_v3.DownstreamTlsContext.DESCRIPTOR.full_name


def kind(type_url: str) -> str:
    """A human name for a type URL, for messages."""
    return _KIND.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One serialized, versioned resource."""

    name: str
    version: str  # first 16 hex of SHA-256 of the deterministic serialization
    # repr=False: a Secret message's text form would print its private key.
    message: Message = field(repr=False)  # ``is``-identical ⇒ reuse this entry
    any_bytes: bytes = field(repr=False)  # google.protobuf.Any{type_url, value}, wire-encoded
    refs: tuple[Ref, ...]  # resources this one needs (consistency check, warming)
    mix: int  # contribution to the type version (hash of name and version)


def _mix(name: str, version: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}\0{version}".encode()).digest()[:8], "big")


# Only these types name other resources; the others skip the reference walk.
_REF_TYPES = frozenset({CLUSTER, LISTENER})


def make_entry(type_url: str, name: str, message: Message) -> Entry:
    value = message.SerializeToString(deterministic=True)
    version = hashlib.sha256(value).digest()[:8].hex()
    return Entry(
        name=name,
        version=version,
        message=message,
        any_bytes=any_prefix(type_url) + varint(len(value)) + value,
        refs=_refs(type_url, name, message) if type_url in _REF_TYPES else (),
        mix=_mix(name, version),
    )


def _tls_secret_refs(tls: tls_v3.CommonTlsContext) -> Iterable[Ref]:
    for sds in tls.tls_certificate_sds_secret_configs:
        yield (SECRET, sds.name)
    if tls.HasField("validation_context_sds_secret_config"):
        yield (SECRET, tls.validation_context_sds_secret_config.name)
    if tls.HasField("combined_validation_context"):
        cvc = tls.combined_validation_context
        if cvc.HasField("validation_context_sds_secret_config"):
            yield (SECRET, cvc.validation_context_sds_secret_config.name)


def _refs(type_url: str, name: str, message: Message) -> tuple[Ref, ...]:
    out: list[Ref] = []
    if type_url == CLUSTER and isinstance(message, cluster_v3.Cluster):
        if message.type == cluster_v3.Cluster.EDS:
            out.append((ENDPOINT, message.eds_cluster_config.service_name or name))
        sockets = [message.transport_socket] if message.HasField("transport_socket") else []
        sockets += [m.transport_socket for m in message.transport_socket_matches]
        for ts in sockets:
            if ts.typed_config.type_url == _UPSTREAM_TLS_URL:
                up = tls_v3.UpstreamTlsContext()
                ts.typed_config.Unpack(up)
                out.extend(_tls_secret_refs(up.common_tls_context))
    elif type_url == LISTENER and isinstance(message, listener_v3.Listener):
        hcms = []
        if message.HasField("api_listener"):
            hcms.append(message.api_listener.api_listener)
        chains = list(message.filter_chains)
        if message.HasField("default_filter_chain"):
            chains.append(message.default_filter_chain)
        for chain in chains:
            hcms.extend(f.typed_config for f in chain.filters if f.HasField("typed_config"))
            ts = chain.transport_socket
            if ts.typed_config.type_url == _DOWNSTREAM_TLS_URL:
                down = tls_v3.DownstreamTlsContext()
                ts.typed_config.Unpack(down)
                out.extend(_tls_secret_refs(down.common_tls_context))
        for any_ in hcms:
            if any_.type_url == _HCM_URL:
                hcm = hcm_v3.HttpConnectionManager()
                any_.Unpack(hcm)
                if hcm.HasField("rds"):
                    out.append((ROUTE, hcm.rds.route_config_name))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True, eq=False)
class TypeSnapshot:
    """The entries of one type, with the type's version."""

    type_url: str
    entries: Mapping[str, Entry] = field(repr=False)  # never mutated once the snapshot exists
    source: Mapping[str, Message] = field(repr=False)  # the Resources mapping it was made from
    mix: int
    # ``source``'s names and messages in its order: the next build finds the
    # changed messages with C-speed identity comparisons instead of a Python loop.
    names: tuple[str, ...] = field(default=(), repr=False)
    messages: tuple[Message, ...] = field(default=(), repr=False)

    @property
    def version(self) -> str:
        return f"{self.mix:016x}"


_EMPTY_TYPE: Mapping[str, Entry] = {}
_serials: Iterator[int] = itertools.count(1)


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Every resource a node group is served, serialized and versioned.

    Build with :meth:`from_resources`; pass the previous snapshot so unchanged
    resources (the same message objects) are reused rather than re-serialized.
    """

    types: Mapping[str, TypeSnapshot]
    ref_counts: Mapping[Ref, int] = field(repr=False)
    dangling: frozenset[Ref] = frozenset()  # referenced but missing
    # ``serial`` numbers snapshots; ``changed`` lists, per type, the names added,
    # changed or removed since the snapshot numbered ``base_serial``, so a stream
    # that saw that one looks only at these names instead of every name it watches.
    serial: int = field(default_factory=lambda: next(_serials))
    base_serial: int | None = None
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_resources(cls, resources: Resources, previous: Snapshot | None = None) -> Snapshot:
        with gc_paused():
            return cls._build(resources, previous)

    @classmethod
    def _build(cls, resources: Resources, previous: Snapshot | None) -> Snapshot:
        prev_types: Mapping[str, TypeSnapshot] = previous.types if previous else {}
        refs = _RefCounts(previous.ref_counts if previous else {})
        types: dict[str, TypeSnapshot] = {}
        changed: dict[str, frozenset[str]] = {}
        for type_url in sorted(set(resources.by_type) | set(prev_types)):
            source = resources.of(type_url)
            prev = prev_types.get(type_url)
            if prev is not None and prev.source is source:
                types[type_url] = prev
                continue
            prev_entries = prev.entries if prev is not None else _EMPTY_TYPE
            mix = prev.mix if prev is not None else 0
            names_now = tuple(source.keys())
            messages_now = tuple(source.values())
            dirty = _dirty(prev, prev_entries, names_now, messages_now, source)
            entries = dict(prev_entries) if prev_entries else {}
            names: list[str] = []
            added = 0
            for name, message, old in dirty:
                new = make_entry(type_url, name, message)
                if old is not None and old.version == new.version:
                    entries[name] = new  # same content, new object: remember the new object
                    continue
                names.append(name)
                if old is not None:
                    mix ^= old.mix
                    refs.add(old.refs, -1)
                else:
                    added += 1
                    refs.candidates.add((type_url, name))
                mix ^= new.mix
                refs.add(new.refs, +1)
                entries[name] = new
            if len(prev_entries) + added > len(source):  # some names were removed: find them
                for name, old in prev_entries.items():
                    if name not in source:
                        names.append(name)
                        del entries[name]
                        mix ^= old.mix
                        refs.add(old.refs, -1)
                        refs.candidates.add((type_url, name))
            if names:
                changed[type_url] = frozenset(names)
            if entries or type_url in resources.by_type:
                types[type_url] = TypeSnapshot(
                    type_url, entries, source, mix, names_now, messages_now
                )
        dangling = set(previous.dangling) if previous else set()
        for ref in refs.candidates:
            t, n = ref
            if refs.counts.get(ref, 0) > 0 and n not in types.get(t, _NO_TYPE).entries:
                dangling.add(ref)
            else:
                dangling.discard(ref)
        return cls(
            types=types,
            ref_counts=refs.counts,
            dangling=frozenset(dangling),
            base_serial=previous.serial if previous is not None else None,
            changed=changed,
        )

    def entries(self, type_url: str) -> Mapping[str, Entry]:
        ts = self.types.get(type_url)
        return ts.entries if ts is not None else _EMPTY_TYPE

    def version(self, type_url: str) -> str:
        ts = self.types.get(type_url)
        return ts.version if ts is not None else _NO_TYPE.version

    def check_consistency(self) -> None:
        """Raise :class:`ConsistencyError` naming every missing reference and who needs it."""
        if not self.dangling:
            return
        problems: list[str] = []
        for t, n in sorted(self.dangling):
            users = sorted(
                f"{kind(ut)} {un!r}"
                for ut, ts in self.types.items()
                for un, e in ts.entries.items()
                if (t, n) in e.refs
            )
            problems.append(f"{', '.join(users)} needs {kind(t)} {n!r}, which the snapshot lacks")
        raise ConsistencyError("inconsistent snapshot: " + "; ".join(problems))


_NO_TYPE = TypeSnapshot("", _EMPTY_TYPE, {}, 0)


class _RefCounts:
    """How many resources reference each name; copied on the first write only."""

    __slots__ = ("_own", "candidates", "counts")

    def __init__(self, counts: Mapping[Ref, int]) -> None:
        self.counts: Mapping[Ref, int] = counts
        self._own = False
        self.candidates: set[Ref] = set()  # refs whose dangling status may have changed

    def add(self, refs: tuple[Ref, ...], delta: int) -> None:
        if not refs:
            return
        if not self._own:
            self.counts = dict(self.counts)
            self._own = True
        counts = self.counts
        assert isinstance(counts, dict)
        for ref in refs:
            n = counts.get(ref, 0) + delta
            if n:
                counts[ref] = n
            else:
                counts.pop(ref, None)
            self.candidates.add(ref)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector from running inside the block.

    A full build allocates tens of thousands of acyclic objects (bytes, entries,
    dicts); each allocation burst would otherwise trigger collections that walk
    the whole heap — the World, the IR, the previous snapshot: millions of
    objects — only to find nothing to free. Whatever the block leaves behind is
    collected by the next collection after it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _dirty(
    prev: TypeSnapshot | None,
    prev_entries: Mapping[str, Entry],
    names: tuple[str, ...],
    messages: tuple[Message, ...],
    source: Mapping[str, Message],
) -> list[tuple[str, Message, Entry | None]]:
    """(name, message, previous entry) for every message that is not the previous one.

    The hot loop of a small change. With the same names in the same order (an
    endpoint moved) the comparison runs in C over aligned tuples; otherwise
    each name is looked up in the previous entries.
    """
    if prev is not None and names == prev.names:
        changed = compress(range(len(messages)), map(operator.is_not, messages, prev.messages))
        return [(names[i], messages[i], prev_entries[names[i]]) for i in changed]
    get = prev_entries.get
    return [
        (n, m, e)
        for n, m in zip(names, messages, strict=True)
        if (e := get(n)) is None or e.message is not m
    ]


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may connect, and who may receive secrets.

    ``allowed_node_ids``: ``None`` lets any node id connect; otherwise others
    are refused at stream start. ``secret_node_ids``: the node ids that may
    receive secrets (SDS); ``None`` means "the allowed node ids" (and, with no
    allow-list either, any node). Secrets also need a private transport —
    loopback TCP, a Unix socket, or mTLS — whatever the node id.
    """

    allowed_node_ids: frozenset[str] | None = None
    secret_node_ids: frozenset[str] | None = None

    def may_connect(self, node_id: str) -> bool:
        return self.allowed_node_ids is None or node_id in self.allowed_node_ids

    def may_receive_secrets(self, node_id: str) -> bool:
        allowed = (
            self.secret_node_ids if self.secret_node_ids is not None else self.allowed_node_ids
        )
        return allowed is None or node_id in allowed


Watcher = Callable[[str], None]


class SnapshotCache:
    """One snapshot per node group, watched by the server.

    ``groups`` maps node ids to group names; every other node id is in
    ``default_group``. ``set_snapshot`` checks consistency first: an
    inconsistent snapshot raises and the previous one stays live.
    """

    def __init__(
        self,
        *,
        groups: Mapping[str, str] | None = None,
        default_group: str = DEFAULT_GROUP,
        policy: AccessPolicy | None = None,
    ) -> None:
        self._groups = dict(groups or {})
        self._default_group = default_group
        self.policy = policy or AccessPolicy()
        self._snapshots: dict[str, Snapshot] = {}
        self._generation: dict[str, int] = {}
        self._watchers: dict[str, set[Watcher]] = {}

    def group_of(self, node_id: str) -> str:
        return self._groups.get(node_id, self._default_group)

    def assign(self, node_id: str, group: str) -> None:
        """Put ``node_id`` in ``group``; streams opened from then on are served that group."""
        self._groups[node_id] = group

    def set_snapshot(self, group: str, snapshot: Snapshot) -> None:
        snapshot.check_consistency()
        if self._snapshots.get(group) is snapshot:
            return
        self._snapshots[group] = snapshot
        self._generation[group] = self._generation.get(group, 0) + 1
        for watcher in list(self._watchers.get(group, ())):
            watcher(group)

    def snapshot(self, group: str) -> Snapshot | None:
        return self._snapshots.get(group)

    def generation(self, group: str) -> int:
        """How many snapshots have been set for ``group`` (tests wait on this)."""
        return self._generation.get(group, 0)

    def groups(self) -> list[str]:
        return sorted(self._snapshots)

    def watch(self, group: str, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(group)`` on every new snapshot of ``group``; returns an unwatch."""
        self._watchers.setdefault(group, set()).add(watcher)

        def unwatch() -> None:
            self._watchers.get(group, set()).discard(watcher)

        return unwatch
