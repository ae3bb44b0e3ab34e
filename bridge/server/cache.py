"""The snapshot cache: versioned, serialized xDS resources shared by node groups.

A :class:`Snapshot` is made from a :class:`bridge.xds.resources.Resources`.
Every resource is serialized once (deterministically) into ``Any`` bytes and
versioned by a hash of those bytes. Where the Resources hand over a message's
bytes (``Resources.encoded``, a pair whose message *is* the one entered) those
bytes are used instead of serializing it again; a pair for any other object
is ignored. A resource whose message object *is* the
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

import collections
import contextlib
import functools
import gc
import hashlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import NamedTuple, TypeVar

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from google.protobuf.message import Message

from bridge.errors import ConsistencyError
from bridge.model.sharded import ShardedMap
from bridge.server.wire import any_prefix
from bridge.xds.protowire import varint
from bridge.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Encoded,
    Resources,
)

DEFAULT_GROUP = "default"

Ref = tuple[str, str]  # (type URL, resource name) that a resource needs
_V = TypeVar("_V")

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


class Entry(NamedTuple):
    """One serialized, versioned resource.

    A named tuple rather than a frozen dataclass: a cold build makes 20k of
    them, and a frozen dataclass's ``__init__`` (one ``object.__setattr__``
    per field) costs five times a tuple's construction. It compares and
    hashes by identity, like the dataclass it replaces, and its text form
    leaves out the message (a Secret's would print its private key).
    """

    name: str
    version: str  # first 16 hex of SHA-256 of the deterministic serialization
    message: Message  # ``is``-identical ⇒ reuse this entry
    any_bytes: bytes  # google.protobuf.Any{type_url, value}, wire-encoded
    refs: tuple[Ref, ...]  # resources this one needs (consistency check, warming)
    mix: int  # contribution to the type version (see _entries)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"Entry(name={self.name!r}, version={self.version!r})"


# The field of each known type that holds the resource's own name (see _entries).
_NAME_OF: dict[str, Callable[[Message], str]] = {
    LISTENER: operator.attrgetter("name"),
    ROUTE: operator.attrgetter("name"),
    CLUSTER: operator.attrgetter("name"),
    ENDPOINT: operator.attrgetter("cluster_name"),
    SECRET: operator.attrgetter("name"),
}
_NO_NAME: Callable[[Message], str] = operator.attrgetter("__class__")  # never a str
_new_entry = tuple.__new__
_NO_ENCODED: Mapping[str, Encoded] = {}
# type URL -> value length -> the Any's bytes before its value (type URL field,
# value tag and length): one dict lookup per resource instead of a varint call.
_ANY_HEADS: dict[str, dict[int, bytes]] = {}
_MAX_HEAD_LEN = 1 << 14


def _entries(
    type_url: str,
    items: Iterable[tuple[str, Message]],
    encoded: Mapping[str, Encoded] = _NO_ENCODED,
) -> list[Entry]:
    """An entry per (name, message): serialized once, hashed once.

    A message whose pair in ``encoded`` carries that very object is not
    serialized: the pair's bytes are its deterministic serialization (the
    producer's promise, see ``Resources.encoded``). A pair carrying any other
    object is ignored: bytes are never taken for a message they were not
    made with.

    The version is the first 8 bytes of the SHA-256 of the deterministic
    serialization, and ``mix`` (the entry's share of the type version, an XOR
    of every entry's mix) is those same 8 bytes as a number. XOR cancels two
    equal mixes — a set holding both would look like a set holding neither —
    so two names of one type must never share a serialization. They cannot
    when each resource's own name field (``_NAME_OF``) holds its key: the key
    is then in the bytes (a non-empty string field is always written, and at
    most one key is empty). A resource whose name field is not its key, or of
    a type not in ``_NAME_OF``, mixes its key into a second hash instead. A
    change keeps the type version only if two different serializations share
    64 hash bits, as with any 64-bit version.
    """
    prefix = any_prefix(type_url)
    heads = _ANY_HEADS.setdefault(type_url, {})
    name_of = _NAME_OF.get(type_url, _NO_NAME)
    walk = _REF_WALKS.get(type_url)
    sha256 = hashlib.sha256
    from_bytes = int.from_bytes
    out: list[Entry] = []
    append = out.append
    if encoded:
        items = list(items)
        pairs: Iterable[Encoded | None] = _lookup(encoded, map(_NAME, items))
    else:
        pairs = itertools.repeat(None)
    for (name, message), pair in zip(items, pairs, strict=False):  # pairs may be endless
        if pair is not None and pair[0] is message:
            value = pair[1]
        else:
            value = message.SerializeToString(deterministic=True)
        digest = sha256(value).digest()[:8]
        size = len(value)
        head = heads.get(size)
        if head is None:
            head = prefix + varint(size)
            if size < _MAX_HEAD_LEN:
                heads[size] = head
        if name_of(message) == name:
            mix = from_bytes(digest, "big")
        else:
            key = name.encode("utf-8", "surrogatepass") + b"\0" + digest
            mix = from_bytes(sha256(key).digest()[:8], "big")
        append(
            _new_entry(
                Entry,
                (
                    name,
                    digest.hex(),
                    message,
                    head + value,
                    walk(name, message, value) if walk is not None else (),
                    mix,
                ),
            )
        )
    return out


def make_entry(type_url: str, name: str, message: Message) -> Entry:
    """One resource's entry (see :func:`_entries`)."""
    return _entries(type_url, ((name, message),))[0]


def _tls_secret_refs(tls: tls_v3.CommonTlsContext) -> Iterable[Ref]:
    for sds in tls.tls_certificate_sds_secret_configs:
        yield (SECRET, sds.name)
    if tls.HasField("validation_context_sds_secret_config"):
        yield (SECRET, tls.validation_context_sds_secret_config.name)
    if tls.HasField("combined_validation_context"):
        cvc = tls.combined_validation_context
        if cvc.HasField("validation_context_sds_secret_config"):
            yield (SECRET, cvc.validation_context_sds_secret_config.name)


_EDS = cluster_v3.Cluster.EDS
# Tags of Cluster.transport_socket (field 24) and transport_socket_matches (43):
# a set field's tag is in the bytes, so a cluster whose bytes hold neither has
# no transport socket (the walk below is skipped; a stray match only costs it).
_TRANSPORT_SOCKET_TAGS = (b"\xc2\x01", b"\xda\x02")


def _cluster_refs(name: str, message: Message, value: bytes) -> tuple[Ref, ...]:
    """What a cluster needs: its load assignment (EDS) and SDS secrets (TLS)."""
    if not isinstance(message, cluster_v3.Cluster):
        return ()
    eds: tuple[Ref, ...] = (
        ((ENDPOINT, message.eds_cluster_config.service_name or name),)
        if message.type == _EDS
        else ()
    )
    # Searching the bytes costs less than asking the message (HasField, the
    # repeated field's wrapper) for the many clusters without TLS.
    socket, matches = _TRANSPORT_SOCKET_TAGS
    if socket not in value and matches not in value:
        return eds
    out: list[Ref] = list(eds)
    sockets = [message.transport_socket] if message.HasField("transport_socket") else []
    sockets += [m.transport_socket for m in message.transport_socket_matches]
    for ts in sockets:
        if ts.typed_config.type_url == _UPSTREAM_TLS_URL:
            up = tls_v3.UpstreamTlsContext()
            ts.typed_config.Unpack(up)
            out.extend(_tls_secret_refs(up.common_tls_context))
    return tuple(dict.fromkeys(out))


def _listener_refs(name: str, message: Message, value: bytes) -> tuple[Ref, ...]:
    if not isinstance(message, listener_v3.Listener):
        return ()
    out: list[Ref] = []
    hcms = []
    if message.HasField("api_listener"):
        hcms.append(message.api_listener.api_listener)
    chains = list(message.filter_chains)
    if message.HasField("default_filter_chain"):
        chains.append(message.default_filter_chain)
    for fc in chains:
        hcms.extend(f.typed_config for f in fc.filters if f.HasField("typed_config"))
        ts = fc.transport_socket
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


# Only these types name other resources; the others skip the reference walk.
_REF_WALKS: dict[str, Callable[[str, Message, bytes], tuple[Ref, ...]]] = {
    CLUSTER: _cluster_refs,
    LISTENER: _listener_refs,
}


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
        fresh: list[str] = []  # types that had no entries: refs to them may resolve now
        for type_url in sorted(set(resources.by_type) | set(prev_types)):
            source = resources.of(type_url)
            encoded = resources.encoded_of(type_url)
            prev = prev_types.get(type_url)
            if prev is not None and prev.source is source:
                types[type_url] = prev
                continue
            if prev is None or not prev.entries:
                ts, names = _fresh_type(type_url, source, encoded, refs)
                fresh.append(type_url)
            elif (
                isinstance(source, ShardedMap)
                and isinstance(prev.source, ShardedMap)
                and isinstance(prev.entries, ShardedMap)
            ):
                ts, names = _evolved_type(type_url, source, encoded, prev, refs)
            else:
                ts, names = _rebuilt_type(type_url, source, encoded, prev, refs)
            if names:
                changed[type_url] = frozenset(names)
            if ts.entries or type_url in resources.by_type:
                types[type_url] = ts
        dangling = set(previous.dangling) if previous else set()
        candidates = refs.candidates
        if fresh and dangling:
            candidates.update(ref for ref in dangling if ref[0] in fresh)
        if candidates:
            dangling -= candidates
            dangling.update(_missing(candidates, refs.counts, types))
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
_NAME = operator.itemgetter(0)  # Entry.name, for C-level maps over entries
_MESSAGE = operator.itemgetter(2)  # Entry.message
_REFS = operator.itemgetter(4)  # Entry.refs
_MIX = operator.itemgetter(5)  # Entry.mix
_SECOND = operator.itemgetter(1)  # a Ref's name


def _fresh_type(
    type_url: str,
    source: Mapping[str, Message],
    encoded: Mapping[str, Encoded],
    refs: _RefCounts,
) -> tuple[TypeSnapshot, list[str]]:
    """A type with no previous entries: every resource is new."""
    made = _entries(type_url, source.items(), encoded)
    names = list(map(_NAME, made))
    refs.add_new(list(chain.from_iterable(map(_REFS, made))))
    mix = functools.reduce(operator.xor, map(_MIX, made), 0)
    if isinstance(source, ShardedMap):
        entries: Mapping[str, Entry] = ShardedMap.of(zip(names, made, strict=True))
        return TypeSnapshot(type_url, entries, source, mix), names
    entries = dict(zip(names, made, strict=True))
    messages = tuple(map(_MESSAGE, made))
    return TypeSnapshot(type_url, entries, source, mix, tuple(names), messages), names


def _evolved_type(
    type_url: str,
    source: ShardedMap[str, Message],
    encoded: Mapping[str, Encoded],
    prev: TypeSnapshot,
    refs: _RefCounts,
) -> tuple[TypeSnapshot, list[str]]:
    """A sharded source evolved from the previous one: work in proportion to the change.

    ``changed_since`` skips every shard the two sources share; the entries
    evolve from the previous ones the same way, sharing every untouched shard.
    """
    prev_entries = prev.entries
    assert isinstance(prev.source, ShardedMap) and isinstance(prev_entries, ShardedMap)
    dirty = source.changed_since(prev.source)
    messages = source.get_many(dirty)
    made = _entries(
        type_url,
        [(n, m) for n, m in zip(dirty, messages, strict=True) if m is not None],
        encoded,
    )
    removed = [n for n, m in zip(dirty, messages, strict=True) if m is None and n in prev_entries]
    mix, names = _account(type_url, made, prev_entries, removed, prev.mix, refs)
    entries = prev_entries.evolve({e.name: e for e in made}, removed)
    return TypeSnapshot(type_url, entries, source, mix), names


def _rebuilt_type(
    type_url: str,
    source: Mapping[str, Message],
    encoded: Mapping[str, Encoded],
    prev: TypeSnapshot,
    refs: _RefCounts,
) -> tuple[TypeSnapshot, list[str]]:
    """Any other source: find the messages that are not the previous ones by identity."""
    prev_entries = prev.entries
    names_now = tuple(source.keys())
    messages_now = tuple(source.values())
    dirty = _dirty(prev, prev_entries, names_now, messages_now)
    made = _entries(type_url, dirty, encoded)
    # Names are only ever added by ``made``: any shortfall is a removal.
    added = sum(1 for e in made if e.name not in prev_entries)
    removed = (
        [n for n in prev_entries if n not in source]
        if len(prev_entries) + added > len(source)
        else []
    )
    mix, names = _account(type_url, made, prev_entries, removed, prev.mix, refs)
    # A dict copies fastest from a dict; a ShardedMap through its C-level items walk.
    own = dict(prev_entries) if type(prev_entries) is dict else dict(prev_entries.items())
    own.update(zip(map(_NAME, made), made, strict=True))
    for name in removed:
        del own[name]
    if isinstance(source, ShardedMap):
        return TypeSnapshot(type_url, ShardedMap.of(own.items()), source, mix), names
    return TypeSnapshot(type_url, own, source, mix, names_now, messages_now), names


def _account(
    type_url: str,
    made: list[Entry],
    prev_entries: Mapping[str, Entry],
    removed: list[str],
    mix: int,
    refs: _RefCounts,
) -> tuple[int, list[str]]:
    """Fold new and removed entries into the type's mix and the reference counts.

    Returns the new mix and the names whose content changed (a new object
    with the same content changes nothing a client sees).
    """
    names: list[str] = []
    get = prev_entries.get
    for new in made:
        name = new.name
        old = get(name)
        if old is not None:
            if old.version == new.version:
                continue
            mix ^= old.mix
            refs.add(old.refs, -1)
        else:
            refs.candidates.add((type_url, name))
        names.append(name)
        mix ^= new.mix
        refs.add(new.refs, +1)
    for name in removed:
        old = prev_entries[name]
        names.append(name)
        mix ^= old.mix
        refs.add(old.refs, -1)
        refs.candidates.add((type_url, name))
    return mix, names


class _RefCounts:
    """How many resources reference each name; copied on the first write only."""

    __slots__ = ("_own", "candidates", "counts")

    def __init__(self, counts: Mapping[Ref, int]) -> None:
        self.counts: Mapping[Ref, int] = counts
        self._own = False
        self.candidates: set[Ref] = set()  # refs whose dangling status may have changed

    def _writable(self) -> collections.Counter[Ref]:
        if not self._own:
            self.counts = collections.Counter(self.counts)
            self._own = True
        counts = self.counts
        assert isinstance(counts, collections.Counter)
        return counts

    def add_new(self, refs: list[Ref]) -> None:
        """Count one more of each ref (in C: a cold build counts 10k of them)."""
        if refs:
            self._writable().update(refs)
            self.candidates.update(refs)

    def add(self, refs: tuple[Ref, ...], delta: int) -> None:
        if not refs:
            return
        counts = self._writable()
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


def _lookup(entries: Mapping[str, _V], names: Iterable[str]) -> list[_V | None]:
    """``[entries.get(n) for n in names]``, without a Python call per name."""
    if isinstance(entries, ShardedMap):
        return entries.get_many(names)
    return list(map(entries.get, names))


def _missing(
    candidates: set[Ref], counts: Mapping[Ref, int], types: Mapping[str, TypeSnapshot]
) -> list[Ref]:
    """The candidates still referenced (counts hold no zeros) that name no entry."""
    live = list(filter(counts.__contains__, candidates))
    out: list[Ref] = []
    for t in {ref[0] for ref in live}:
        wanted = [ref for ref in live if ref[0] == t]
        found = _lookup(types.get(t, _NO_TYPE).entries, map(_SECOND, wanted))
        out.extend(ref for ref, entry in zip(wanted, found, strict=True) if entry is None)
    return out


def _dirty(
    prev: TypeSnapshot,
    prev_entries: Mapping[str, Entry],
    names: tuple[str, ...],
    messages: tuple[Message, ...],
) -> list[tuple[str, Message]]:
    """(name, message) for every message that is not the previous one.

    With the same names in the same order as the previous plain source (an
    endpoint moved) the comparison runs in C over aligned tuples; otherwise
    each name is looked up in the previous entries.
    """
    if prev.names and names == prev.names:
        changed = compress(range(len(messages)), map(operator.is_not, messages, prev.messages))
        return [(names[i], messages[i]) for i in changed]
    olds = _lookup(prev_entries, names)
    return [
        (n, m)
        for n, m, e in zip(names, messages, olds, strict=True)
        if e is None or e.message is not m
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
