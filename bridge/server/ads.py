"""The Aggregated Discovery Service: state-of-the-world and delta xDS over gRPC.

:class:`AdsServer` serves ``StreamAggregatedResources`` (SotW) and
``DeltaAggregatedResources`` (delta) from a :class:`SnapshotCache`. One task
per stream owns that stream's state; a reader feeds it requests and the cache
wakes it when the stream's group gets a new snapshot (no polling).

Protocol rules it keeps (see the module's tests):

- a fresh nonce per response; a SotW request echoing an older nonce is
  ignored (its NACK, if any, is still recorded);
- NACK = ``error_detail`` set. The client keeps its last good resources; the
  rejected content is never resent on this stream — a type is held until its
  content changes. NACKs are counted, observed, logged once per node and
  message, and the last one per node is kept for ``/debug``;
- LDS and CDS replies carry the full set the client asked for; EDS, RDS and
  SDS go by name, including names the snapshot lacks (answered when they
  appear) and names newly requested even if unchanged;
- after a cluster (listener) is sent, its EDS (RDS) is sent again even if
  unchanged, so warming completes; types go in ``PUSH_ORDER``;
- delta: ``removed_resources`` for deleted and nonexistent names,
  wildcard and named subscriptions, ``initial_resource_versions`` honoured
  on reconnect, unsubscribe-only requests need no reply;
- secrets only to nodes the :class:`AccessPolicy` allows, over loopback TCP,
  a Unix socket or mTLS. Node ids outside the allow-list are refused;
- a node whose bootstrap names a listen port (``meshbridge.io/listen-port``
  metadata) that no served listener uses is warned about once and shown in
  its :class:`StreamStatus`.

Memory per stream stays small at 10k resources: equal requested name sets
are one shared frozenset (:meth:`AdsServer.shared_names`); what a client has
is kept as a view of the snapshot's entries while the two agree, copied into
the stream's own dict only when they part (a NACK, a delta stream); refused
versions are kept one per name, bounded.

It must not build resources (the pipeline and translation do) and must not
import metrics libraries: :class:`XdsObserver` is the hook for them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import ipaddress
import itertools
import logging
import operator
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import grpc
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from bridge.bootstrap import LISTEN_PORT_METADATA
from bridge.server.cache import Entry, Snapshot, SnapshotCache, kind
from bridge.server.wire import (
    encode_delta_response,
    encode_discovery_response,
    encode_discovery_response_body,
    encode_resource,
    encode_resources,
)
from bridge.xds.resources import CLUSTER, ENDPOINT, FULL_STATE_TYPES, LISTENER, PUSH_ORDER, ROUTE
from bridge.xds.resources import SECRET as SECRET_TYPE

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SOTW_METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"

# What a type's change forces to be re-sent so the client's warming finishes.
_WARMS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}
_WILDCARD = "*"
_MAX_INFLIGHT = 64
# Refused versions kept per stream and type, beyond the names the snapshot has.
_MAX_REJECTED = 50_000
# Distinct requested name sets shared between streams (see AdsServer.shared_names).
_MAX_SHARED_NAME_SETS = 64
_BY_NAME = operator.attrgetter("name")
_ANY_BYTES = operator.attrgetter("any_bytes")


class XdsObserver(Protocol):
    """Callbacks for metrics; every method must be cheap and must not raise."""

    def on_connect(self, node_id: str, group: str, mode: str) -> None: ...
    def on_disconnect(self, node_id: str, group: str, mode: str) -> None: ...
    def on_response(self, node_id: str, type_url: str, resources: int, size: int) -> None: ...
    def on_ack(self, node_id: str, type_url: str, version: str) -> None: ...
    def on_nack(self, node_id: str, type_url: str, message: str) -> None: ...


class NullObserver:
    """An observer that does nothing (the default)."""

    def on_connect(self, node_id: str, group: str, mode: str) -> None:
        pass

    def on_disconnect(self, node_id: str, group: str, mode: str) -> None:
        pass

    def on_response(self, node_id: str, type_url: str, resources: int, size: int) -> None:
        pass

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        pass

    def on_nack(self, node_id: str, type_url: str, message: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Nack:
    type_url: str
    message: str
    at: float  # the server's clock (injectable)


@dataclass(frozen=True, slots=True)
class TypeStatus:
    type_url: str
    acked_version: str  # "" until the first ACK
    nacks: int


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One connected stream, for ``/debug``."""

    node_id: str
    group: str
    mode: str  # "sotw" or "delta"
    peer: str
    connected_since: float
    secrets: bool  # whether this stream may receive secrets
    types: tuple[TypeStatus, ...]
    last_nack: Nack | None  # the node's last NACK, kept across reconnects
    responses: int
    bytes_sent: int
    # The port the node's bootstrap says its deployment sends traffic to
    # (``meshbridge bootstrap --listen-port``), and what is wrong with it, if
    # anything: "" once a served listener is on that port.
    listen_port: int | None = None
    listen_port_problem: str = ""


def listen_port_of(node: Any) -> int | None:
    """The ``meshbridge.io/listen-port`` node metadata, if it is a port number."""
    field_ = node.metadata.fields.get(LISTEN_PORT_METADATA)
    if field_ is None or field_.WhichOneof("kind") not in ("number_value", "string_value"):
        return None
    raw = (
        field_.number_value if field_.WhichOneof("kind") == "number_value" else field_.string_value
    )
    try:
        port = int(raw)
    except ValueError:
        return None
    return port if 0 < port < 65536 and port == float(raw) else None


def _listener_ports(entries: Mapping[str, Entry]) -> frozenset[int]:
    ports = set()
    for e in entries.values():
        if isinstance(e.message, listener_v3.Listener) and e.message.HasField("address"):
            port = e.message.address.socket_address.port_value
            if port:
                ports.add(port)
    return frozenset(ports)


def private_transport(peer: str, mtls: bool) -> bool:
    """Whether a connection may carry secrets: mTLS, a Unix socket, or loopback TCP."""
    if mtls or peer.startswith("unix:"):
        return True
    peer = urllib.parse.unquote(peer)  # gRPC may write "ipv6:%5B::1%5D:port"
    host = peer.split(":", 1)[1] if ":" in peer else peer
    host = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True, eq=False)
class _Sent:
    """What one response carried, kept until its ACK or NACK."""

    type_url: str
    version: str
    items: dict[str, str | None]  # name -> version sent (None: removed)
    before: Mapping[str, str | None]  # name -> what the client had before (None: nothing)
    view: str  # full-state types: the signature of the whole reply


class _Versions(Mapping[str, str]):
    """name → version of a snapshot type's entries (optionally only ``names``): a view.

    What a stream's client has is, almost always, exactly what one snapshot
    holds for the names it asked for. Keeping that as a view of the (shared)
    snapshot entries and the (shared) name set costs a stream nothing per
    resource; a stream copies it into its own dict only when the two part
    (a NACK, a shrinking subscription, delta bookkeeping).
    """

    __slots__ = ("_entries", "_names", "_serial")

    def __init__(
        self,
        entries: Mapping[str, Entry],
        names: AbstractSet[str] | None,
        serial: int | None = None,
    ) -> None:
        self._entries = entries
        self._names = names
        self._serial = serial  # the snapshot ``entries`` belong to

    def whole_of(self, serial: int | None) -> bool:
        """Whether this is every entry of the snapshot numbered ``serial``."""
        return serial is not None and self._names is None and self._serial == serial

    def __getitem__(self, name: str) -> str:
        if self._names is not None and name not in self._names:
            raise KeyError(name)
        return self._entries[name].version

    def get(self, name: str, default: Any = None) -> Any:
        if self._names is not None and name not in self._names:
            return default
        e = self._entries.get(name)
        return default if e is None else e.version

    def __contains__(self, name: object) -> bool:
        return (self._names is None or name in self._names) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        if self._names is None:
            return iter(self._entries)
        return (n for n in self._entries if n in self._names)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(slots=True, eq=False)
class _TypeState:
    type_url: str
    requested: bool = False
    wildcard: bool = False
    # SotW: a frozenset shared by every stream that asked for the same names.
    names: set[str] | frozenset[str] = frozenset()
    # What the client has (or is being sent): a dict of its own, or a view of
    # the snapshot's entries while the two agree (see _Versions).
    have: Mapping[str, str] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # newly subscribed: look at these
    forced: set[str] = field(default_factory=set)  # send even if unchanged (warming)
    # name -> the version the client refused. One per name (the latest), so the
    # record is bounded by the resources of the type; content that changes back
    # to an older refused version is offered once more.
    rejected: dict[str, str] = field(default_factory=dict)
    look_all: bool = False  # named SotW: next reply looks at every name, not the changes
    view: str = ""  # full-state: signature of the last reply sent
    rejected_view: str | None = None
    last_nonce: str = ""
    inflight: dict[str, _Sent] = field(default_factory=dict)
    acked_version: str = ""
    nacks: int = 0
    seen_serial: int | None = None


class _Stream:
    """The state of one ADS stream; touched only by its own task."""

    def __init__(
        self,
        server: AdsServer,
        *,
        node_id: str,
        group: str,
        delta: bool,
        peer: str,
        secrets: bool,
    ) -> None:
        self.server = server
        self.node_id = node_id
        self.group = group
        self.delta = delta
        self.peer = peer
        self.secrets = secrets
        self.connected_since = server.clock()
        self.types: dict[str, _TypeState] = {}
        self.requests: collections.deque[Any] = collections.deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.responses = 0
        self.bytes_sent = 0
        self._nonces = itertools.count(1)
        self._withheld_logged = False
        self.listen_port: int | None = None
        self.listen_port_problem = ""
        self._listeners_checked: object = None  # the listener entries last checked

    @staticmethod
    def _own_have(ts: _TypeState) -> dict[str, str]:
        """The stream's own copy of what its client has, made on the first write."""
        if type(ts.have) is not dict:
            ts.have = dict(ts.have.items())
        assert isinstance(ts.have, dict)
        return ts.have

    def state(self, type_url: str) -> _TypeState:
        ts = self.types.get(type_url)
        if ts is None:
            ts = self.types[type_url] = _TypeState(type_url)
        return ts

    def nonce(self) -> str:
        return str(next(self._nonces))

    def status(self) -> StreamStatus:
        return StreamStatus(
            node_id=self.node_id,
            group=self.group,
            mode="delta" if self.delta else "sotw",
            peer=self.peer,
            connected_since=self.connected_since,
            secrets=self.secrets,
            types=tuple(
                TypeStatus(t, ts.acked_version, ts.nacks) for t, ts in sorted(self.types.items())
            ),
            last_nack=self.server.last_nack(self.node_id),
            responses=self.responses,
            bytes_sent=self.bytes_sent,
            listen_port=self.listen_port,
            listen_port_problem=self.listen_port_problem,
        )

    def check_listen_port(self, snap: Snapshot) -> None:
        """Warn (once per change) when no served listener is on the node's listen port."""
        if self.listen_port is None or LISTENER not in self.types:
            return
        entries = snap.entries(LISTENER)
        if entries is self._listeners_checked:
            return
        self._listeners_checked = entries
        ports = _listener_ports(entries)
        if not ports or self.listen_port in ports:
            self.listen_port_problem = ""
            return
        problem = (
            f"the bootstrap of node {self.node_id!r} says its traffic arrives on port "
            f"{self.listen_port} (meshbridge.io/listen-port), but the gateway listeners "
            f"meshbridge serves are on {', '.join(map(str, sorted(ports)))}: set the "
            "listener ports in the config file (or the gateway's Service and "
            "--listen-port) so they agree"
        )
        if problem != self.listen_port_problem:
            self.listen_port_problem = problem
            log.warning("%s", problem)

    # -- requests ------------------------------------------------------------

    def _record_reply(self, ts: _TypeState, nonce: str, error: str | None) -> None:
        """Apply the client's ACK or NACK of the response carrying ``nonce``."""
        sent = ts.inflight.pop(nonce, None)
        if sent is None:
            return
        # Replies come in order: anything sent before this one was already answered
        # (or never will be, by a client that skipped it). Forget it.
        while ts.inflight:
            oldest = next(iter(ts.inflight))
            if int(oldest) > int(nonce):
                break
            del ts.inflight[oldest]
        if error is None:
            ts.acked_version = sent.version
            self.server.observer.on_ack(self.node_id, ts.type_url, sent.version)
            return
        ts.nacks += 1
        # The client keeps what it had: forget what we sent, remember it was refused.
        for name, version in sent.items.items():
            if version is not None:
                ts.rejected[name] = version
            ts.forced.discard(name)
        if sent.view:
            ts.rejected_view = sent.view
            # The whole reply was refused; nothing else holds its "before" (never None
            # for a full-state type: it was the client's whole state).
            ts.have = cast(Mapping[str, str], sent.before)
        else:
            have = self._own_have(ts)
            for name in sent.items:
                old = sent.before.get(name)
                if old is not None:
                    have[name] = old
                elif self.delta:
                    # The client may hold part of a refused response (Envoy keeps a refused
                    # listener's error state): "" = unknown version, so a later deletion
                    # is still announced and any new content is sent.
                    have[name] = ""
                else:
                    have.pop(name, None)
            ts.look_all = True
        if len(ts.rejected) > _MAX_REJECTED:
            self._prune_rejected(ts)
        self.server.record_nack(self.node_id, ts.type_url, error)

    def _prune_rejected(self, ts: _TypeState) -> None:
        """Forget refusals of names the snapshot no longer has; keep the newest if still many."""
        snap = self.server.cache.snapshot(self.group)
        entries = snap.entries(ts.type_url) if snap is not None else {}
        kept = {n: v for n, v in ts.rejected.items() if n in entries}
        if len(kept) > _MAX_REJECTED:
            kept = dict(list(kept.items())[-_MAX_REJECTED:])
        ts.rejected = kept

    def handle_sotw(self, req: discovery_v3.DiscoveryRequest) -> None:
        ts = self.state(req.type_url)
        nonce = req.response_nonce
        error = _error(req)
        if nonce:
            self._record_reply(ts, nonce, error)
            if nonce != ts.last_nonce:
                return  # stale: the client has not seen our latest response yet
        if error is None and req.version_info:
            ts.acked_version = req.version_info
        raw = req.resource_names
        if ts.requested and raw and len(raw) == len(ts.names) and ts.names.issuperset(raw):
            return  # the usual ACK: the same names again (Envoy repeats all 10k EDS names)
        names = frozenset(raw)
        full = req.type_url in FULL_STATE_TYPES
        # A full-state type asked for with no names (before any named request), or
        # with "*", is a wildcard subscription.
        wildcard = full and (
            _WILDCARD in names or (not names and (ts.wildcard or not ts.requested))
        )
        if _WILDCARD in names:
            names = names - {_WILDCARD}
        names = self.server.shared_names(names)
        first = not ts.requested
        ts.requested = True
        if wildcard != ts.wildcard:
            ts.wildcard = wildcard
            ts.view = ""  # the reply's scope changed: answer again
        added = names - ts.names
        removed = ts.names - names
        if removed:
            if type(ts.have) is dict:
                for name in removed:
                    ts.have.pop(name, None)
            # A view is re-made over the new names by the next reply, which looks
            # at every name; until then only names still asked for are read.
            ts.look_all = True
            ts.forced -= removed
        ts.names = names
        ts.dirty |= added
        if full and (added or first):
            ts.view = ""

    def handle_delta(self, req: discovery_v3.DeltaDiscoveryRequest) -> None:
        ts = self.state(req.type_url)
        if req.response_nonce:
            # Delta ACKs and NACKs name their response; subscription changes below
            # are honoured whatever the nonce.
            self._record_reply(ts, req.response_nonce, _error(req))
        first = not ts.requested
        ts.requested = True
        # Names a stream keeps are the snapshot's own string objects where it has
        # them: 100 delta streams subscribed to 10k names hold one copy of each.
        snap = self.server.cache.snapshot(self.group)
        entries = snap.entries(req.type_url) if snap is not None else {}

        def shared(name: str) -> str:
            e = entries.get(name)
            return e.name if e is not None else name

        if first:
            if req.initial_resource_versions:
                have = self._own_have(ts)
                for name, version in req.initial_resource_versions.items():
                    e = entries.get(name)
                    # The version too, when it is the snapshot's (the usual reconnect).
                    if e is not None and e.version == version:
                        have[e.name] = e.version
                    else:
                        have[shared(name)] = version
            # Legacy wildcard: the first request of a type names nothing.
            if not req.resource_names_subscribe and req.type_url in FULL_STATE_TYPES:
                ts.wildcard = True
        if type(ts.names) is not set:
            ts.names = set(ts.names)  # delta subscriptions change name by name
        names = ts.names
        assert isinstance(names, set)
        for name in req.resource_names_subscribe:
            if name == _WILDCARD:
                ts.wildcard = True
                ts.seen_serial = None  # look at everything once
            elif name not in names:
                kept = shared(name)
                names.add(kept)
                ts.dirty.add(kept)
        for name in req.resource_names_unsubscribe:
            if name == _WILDCARD:
                ts.wildcard = False
            else:
                names.discard(name)
                ts.dirty.discard(name)
                ts.forced.discard(name)
            if not ts.wildcard and name in ts.have:
                self._own_have(ts).pop(name, None)

    # -- responses -----------------------------------------------------------

    def _may_send(self, type_url: str) -> bool:
        if type_url != SECRET_TYPE or self.secrets:
            return True
        if not self._withheld_logged:
            self._withheld_logged = True
            why = (
                "not allowed to receive secrets"
                if not self.server.cache.policy.may_receive_secrets(self.node_id)
                else f"connection from {self.peer} is not loopback, a Unix socket or mTLS"
            )
            log.warning("withholding secrets from node %r: %s", self.node_id, why)
        return False

    def _order(self) -> list[str]:
        return [t for t in PUSH_ORDER if t in self.types] + sorted(
            t for t in self.types if t not in PUSH_ORDER
        )

    def respond(self, snap: Snapshot) -> Iterator[bytes]:
        self.check_listen_port(snap)
        for type_url in self._order():
            ts = self.types[type_url]
            if not ts.requested or not self._may_send(type_url):
                continue
            changed = (
                snap.changed.get(type_url, frozenset())
                if ts.seen_serial is not None and snap.base_serial == ts.seen_serial
                else None
            )
            if ts.seen_serial == snap.serial:
                changed = frozenset()
            ts.seen_serial = snap.serial
            if self.delta:
                out = self._delta(ts, snap, changed)
            elif type_url in FULL_STATE_TYPES:
                out = self._sotw_full(ts, snap, changed)
            else:
                out = self._sotw_named(ts, snap, changed)
            if out is not None:
                yield out

    def _warm(self, type_url: str, sent: Iterable[Entry]) -> None:
        target = _WARMS.get(type_url)
        if target is None:
            return
        tts = self.state(target)
        for entry in sent:
            for ref_type, ref_name in entry.refs:
                if ref_type == target:
                    tts.forced.add(ref_name)

    def _finish(self, ts: _TypeState, sent: _Sent, payload: bytes, count: int) -> bytes:
        ts.inflight[ts.last_nonce] = sent
        if len(ts.inflight) > _MAX_INFLIGHT:  # a client that never answers
            del ts.inflight[next(iter(ts.inflight))]
        self.responses += 1
        self.bytes_sent += len(payload)
        self.server.observer.on_response(self.node_id, ts.type_url, count, len(payload))
        return payload

    def _sotw_full(
        self, ts: _TypeState, snap: Snapshot, changed_names: frozenset[str] | None
    ) -> bytes | None:
        entries = snap.entries(ts.type_url)
        body: bytes | None = None
        if ts.wildcard:
            chosen: Sequence[Entry] = ()
            view = "*" + snap.version(ts.type_url)
        else:
            if (
                changed_names is not None
                and ts.view
                and not ts.dirty
                and not ts.look_all
                and changed_names.isdisjoint(ts.names)
            ):
                # None of the names asked for changed since the last reply's snapshot and
                # the names did not change: the reply would be the last one again.
                return None
            chosen = [entries[n] for n in sorted(ts.names) if n in entries]
            # A digest, not the text: a named full-state request may name thousands.
            signature = hashlib.sha256()
            for e in chosen:
                signature.update(f"{e.name}@{e.version}|".encode())
            signature.update(",".join(sorted(ts.names)).encode())
            view = signature.hexdigest()
        ts.look_all = False  # the view above looked at every name
        if view in (ts.view, ts.rejected_view):
            ts.dirty.clear()
            return None
        have = ts.have
        if ts.wildcard:
            # Every wildcard stream of the group sends the same resources: encode
            # them once per snapshot type, not once per stream.
            body, count = self.server.full_body(ts.type_url, entries)
            if (
                changed_names is not None
                and type(have) is _Versions
                and have.whole_of(snap.base_serial)
            ):
                # The client has the previous snapshot's set: only its changes differ.
                changed = [
                    entry
                    for n in changed_names
                    if (entry := entries.get(n)) is not None and have.get(n) != entry.version
                ]
            else:
                changed = [e for e in entries.values() if have.get(e.name) != e.version]
        else:
            count = len(chosen)
            changed = [e for e in chosen if have.get(e.name) != e.version]
        # The reply carries the full set: the client will have exactly the
        # snapshot's entries (of the names asked for). ``have`` is replaced, not
        # changed, so the old one can serve as "before" without a copy.
        before: Mapping[str, str | None] = have
        ts.have = _Versions(entries, None if ts.wildcard else ts.names, snap.serial)
        ts.view = view
        ts.dirty.clear()
        version = snap.version(ts.type_url)
        ts.last_nonce = self.nonce()
        self._warm(ts.type_url, changed)
        items: dict[str, str | None] = {e.name: e.version for e in changed}
        if body is None:
            body = encode_resources(e.any_bytes for e in chosen)
        payload = encode_discovery_response_body(version, ts.type_url, ts.last_nonce, body)
        return self._finish(ts, _Sent(ts.type_url, version, items, before, view), payload, count)

    def _sotw_named(
        self, ts: _TypeState, snap: Snapshot, changed: frozenset[str] | None
    ) -> bytes | None:
        entries = snap.entries(ts.type_url)
        look_all = changed is None or ts.look_all
        candidates = ts.names if changed is None or ts.look_all else (changed & ts.names)
        eager = ts.dirty | ts.forced
        out: list[Entry] = []
        held = False  # some name's current content was refused: the client lags on it
        have, rejected = ts.have, ts.rejected
        for name in sorted(candidates | (eager & ts.names)) if eager else sorted(candidates):
            e = entries.get(name)
            if e is None:
                continue
            if rejected and rejected.get(name) == e.version:
                held = True
                continue
            if name in eager or have.get(name) != e.version:
                out.append(e)
        ts.dirty.clear()
        ts.forced.clear()
        ts.look_all = False
        before: dict[str, str | None] = {e.name: have.get(e.name) for e in out}
        if not held and (look_all or type(have) is _Versions):
            # Every name asked for now has the snapshot's content (or will, once
            # this reply lands): what the client has is a view of the snapshot.
            # (A name the snapshot dropped leaves the view; SotW never deletes
            # EDS/RDS/SDS by omission, so at worst it is sent again if it returns.)
            ts.have = _Versions(entries, ts.names, snap.serial)
        else:
            own = self._own_have(ts)
            for e in out:
                own[e.name] = e.version
        if not out:
            return None
        version = snap.version(ts.type_url)
        ts.last_nonce = self.nonce()
        self._warm(ts.type_url, out)
        items: dict[str, str | None] = {e.name: e.version for e in out}
        payload = encode_discovery_response(
            version, ts.type_url, ts.last_nonce, (e.any_bytes for e in out)
        )
        return self._finish(ts, _Sent(ts.type_url, version, items, before, ""), payload, len(out))

    def _delta(
        self, ts: _TypeState, snap: Snapshot, changed: frozenset[str] | None
    ) -> bytes | None:
        entries = snap.entries(ts.type_url)
        if changed is None:
            candidates = set(ts.names) | set(ts.have)
            if ts.wildcard:
                candidates |= set(entries)
        else:
            candidates = {n for n in changed if ts.wildcard or n in ts.names or n in ts.have}
        new_names, forced = ts.dirty, ts.forced
        send: list[Entry] = []
        removed: list[str] = []
        for name in sorted(candidates | new_names | forced):
            if not (ts.wildcard or name in ts.names):
                continue
            e = entries.get(name)
            if e is not None:
                if ts.rejected.get(name) == e.version:
                    continue
                if name in forced or ts.have.get(name) != e.version:
                    send.append(e)
            elif name in ts.have or name in new_names:
                # Deleted, or asked for and nonexistent: say so once.
                removed.append(name)
        ts.dirty, ts.forced = set(), set()
        if not send and not removed:
            return None
        before: dict[str, str | None] = {n: ts.have.get(n) for n in removed}
        before.update((e.name, ts.have.get(e.name)) for e in send)
        have = self._own_have(ts)
        for e in send:
            have[e.name] = e.version
        for name in removed:
            have.pop(name, None)
        version = snap.version(ts.type_url)
        ts.last_nonce = self.nonce()
        self._warm(ts.type_url, send)
        items: dict[str, str | None] = {e.name: e.version for e in send}
        items.update(dict.fromkeys(removed))
        payload = encode_delta_response(
            version,
            ts.type_url,
            ts.last_nonce,
            (encode_resource(e.name, e.version, e.any_bytes) for e in send),
            removed,
        )
        return self._finish(ts, _Sent(ts.type_url, version, items, before, ""), payload, len(send))


class _Payload:
    """One encoded response, handed to gRPC and emptied when gRPC takes the bytes.

    gRPC's driver of a streaming handler keeps the last message it sent
    referenced until the next one; an Envoy's full EDS reply is megabytes, so
    bare bytes would stay alive per idle stream. The serializer takes them out.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def take(self) -> bytes:
        data, self._data = self._data, b""
        return data


def _error(req: Any) -> str | None:
    """The NACK message of a request, or None for an ACK or a plain request."""
    if not req.HasField("error_detail"):
        return None
    return str(req.error_detail.message) or "(no message)"


class AdsServer:
    """ADS handlers over a :class:`SnapshotCache`; mount with :meth:`handler`.

    ``clock`` (seconds, wall time) stamps connections and NACKs; tests inject it.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        observer: XdsObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.observer: XdsObserver = observer or NullObserver()
        self.clock = clock
        self._streams: set[_Stream] = set()
        self._handlers = 0  # stream handlers running (_serve), streams or not yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_nack: dict[str, Nack] = {}
        self._logged_nacks: set[tuple[str, str, str]] = set()
        self.nack_counts: collections.Counter[str] = collections.Counter()
        self._name_sets: dict[frozenset[str], frozenset[str]] = {}
        # type URL -> (the entries, their encoded resources, count): the last full set
        # encoded, shared by every wildcard stream serving that snapshot.
        self._bodies: dict[str, tuple[Mapping[str, Entry], bytes, int]] = {}

    def full_body(self, type_url: str, entries: Mapping[str, Entry]) -> tuple[bytes, int]:
        """Every entry of ``entries`` as encoded ``resources`` fields, and how many.

        In name order: a snapshot's entries come in no set order (by hash shard),
        and the same set should make the same bytes in every process. Made once
        per entries object, shared by every stream serving them.
        """
        cached = self._bodies.get(type_url)
        if cached is None or cached[0] is not entries:
            ordered = sorted(entries.values(), key=_BY_NAME)
            cached = (entries, encode_resources(map(_ANY_BYTES, ordered)), len(ordered))
            self._bodies[type_url] = cached
        return cached[1], cached[2]

    def shared_names(self, names: frozenset[str]) -> frozenset[str]:
        """One object for equal requested name sets, so 100 Envoys asking for the same
        10k EDS names hold one set (and one copy of each name) between them."""
        if not names:
            return names
        shared = self._name_sets.get(names)
        if shared is None:
            if len(self._name_sets) >= _MAX_SHARED_NAME_SETS:
                del self._name_sets[next(iter(self._name_sets))]  # the oldest
            shared = self._name_sets[names] = names
        return shared

    # -- status --------------------------------------------------------------

    def status(self) -> list[StreamStatus]:
        """Every connected stream, sorted by node id."""
        return sorted((s.status() for s in self._streams), key=lambda s: (s.node_id, s.mode))

    def last_nack(self, node_id: str) -> Nack | None:
        return self._last_nack.get(node_id)

    def record_nack(self, node_id: str, type_url: str, message: str) -> None:
        self.nack_counts[type_url] += 1
        self._last_nack[node_id] = Nack(type_url, message, self.clock())
        self.observer.on_nack(node_id, type_url, message)
        key = (node_id, type_url, message)
        if key not in self._logged_nacks:
            self._logged_nacks.add(key)
            # Bound the memory of what was logged; a NACK storm is logged again later.
            if len(self._logged_nacks) > 10_000:
                self._logged_nacks.clear()
            log.warning(
                "node %r rejected %s: %s (keeping its last good config; "
                "resending only when the content changes)",
                node_id,
                kind(type_url),
                message,
            )

    async def wait_closed(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Wait until every stream handler has finished (after the server stopped).

        Returns whether they did within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- gRPC ----------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The gRPC handler for both ADS methods; responses are pre-encoded bytes."""
        take = _Payload.take
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                SOTW_METHOD: grpc.stream_stream_rpc_method_handler(
                    functools.partial(self._serve, delta=False),
                    request_deserializer=discovery_v3.DiscoveryRequest.FromString,
                    response_serializer=take,
                ),
                DELTA_METHOD: grpc.stream_stream_rpc_method_handler(
                    functools.partial(self._serve, delta=True),
                    request_deserializer=discovery_v3.DeltaDiscoveryRequest.FromString,
                    response_serializer=take,
                ),
            },
        )

    async def _serve(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, bytes],
        *,
        delta: bool,
    ) -> AsyncIterator[_Payload]:
        self._handlers += 1
        self._idle.clear()
        try:
            iterator = aiter(requests)
            try:
                first = await anext(iterator)
            except StopAsyncIteration:
                return
            node_id = first.node.id
            if not node_id:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the first request on an ADS stream must carry node.id",
                )
            policy = self.cache.policy
            if not policy.may_connect(node_id):
                log.warning("refused xDS stream from node %r (peer %s)", node_id, context.peer())
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node id {node_id!r} is not allowed: add it to the allowed node ids "
                    "of the xDS server configuration",
                )
            peer = context.peer()
            mtls = bool(context.peer_identities())
            stream = _Stream(
                self,
                node_id=node_id,
                group=self.cache.group_of(node_id),
                delta=delta,
                peer=peer,
                secrets=policy.may_receive_secrets(node_id) and private_transport(peer, mtls),
            )
            mode = "delta" if delta else "sotw"
            stream.listen_port = listen_port_of(first.node)
            stream.requests.append(first)
            del first
            stream.wake.set()
            self._streams.add(stream)
            unwatch = self.cache.watch(stream.group, lambda _group: stream.wake.set())
            reader = asyncio.create_task(self._read(iterator, stream))
            self.observer.on_connect(node_id, stream.group, mode)
            log.info(
                "xDS %s stream from node %r (group %r, peer %s)", mode, node_id, stream.group, peer
            )
            try:
                while True:
                    await stream.wake.wait()
                    stream.wake.clear()
                    # Requests are not kept past their handling: an Envoy's EDS request
                    # names every cluster (hundreds of KB parsed), per stream.
                    while stream.requests:
                        if delta:
                            stream.handle_delta(stream.requests.popleft())
                        else:
                            stream.handle_sotw(stream.requests.popleft())
                    if stream.closed:
                        return
                    snap = self.cache.snapshot(stream.group)
                    if snap is None:
                        continue  # nothing published yet: answer once the first snapshot is set
                    for payload in stream.respond(snap):
                        yield _Payload(payload)
                    payload = b""  # not held while this stream idles
            finally:
                unwatch()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                self._streams.discard(stream)
                self.observer.on_disconnect(node_id, stream.group, mode)
        finally:
            self._handlers -= 1
            if not self._handlers:
                self._idle.set()

    @staticmethod
    async def _read(iterator: AsyncIterator[Any], stream: _Stream) -> None:
        try:
            async for req in iterator:
                stream.requests.append(req)
                del req  # not held while waiting for the next one
                stream.wake.set()
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            stream.closed = True
            stream.wake.set()
