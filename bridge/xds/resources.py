"""The output of translation: Envoy resources by type and name.

``translate`` (in :mod:`bridge.xds.translate`) makes a :class:`Resources`;
the snapshot cache (:mod:`bridge.server.cache`) serializes and versions it.
A resource whose IR did not change is the *same* message object as in the
previous Resources, so the cache can reuse its serialized bytes and version
by identity instead of re-serializing the world.

A producer that already holds a message's canonical bytes (its deterministic
serialization, e.g. because it encoded them and parsed the message from them)
hands them over in :attr:`Resources.encoded`, so the cache need not serialize
the message again. Each pair carries the message the bytes belong to: a
consumer uses the bytes only for that very object (``pair[0] is message``),
never for another one under the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from bridge.model.frozen import FrozenDict

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order in which a change is pushed over one ADS stream: secrets before the
# clusters that use them, CDS before EDS, LDS before RDS.
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Types whose state-of-the-world reply carries the full set (absence = deletion).
FULL_STATE_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})

# (a message, its deterministic serialization): see Resources.encoded.
Encoded = tuple[Message, bytes]


_NO_ENCODED: Mapping[str, Encoded] = FrozenDict()


@dataclass(frozen=True, slots=True)
class Resources:
    """Envoy resources by type URL, then by resource name.

    ``encoded`` (optional, type URL → name → :data:`Encoded`) holds the
    deterministic serialization of messages in ``by_type`` whose producer
    already has it. It may cover any subset of names, and a pair is valid
    only for the message object it carries: whoever uses the bytes checks
    ``pair[0] is by_type[type_url][name]`` first. It is a cache, not content:
    two Resources with equal ``by_type`` are equal whatever it holds.
    """

    by_type: Mapping[str, Mapping[str, Message]] = field(default_factory=FrozenDict)
    encoded: Mapping[str, Mapping[str, Encoded]] = field(default_factory=FrozenDict, compare=False)

    def of(self, type_url: str) -> Mapping[str, Message]:
        return self.by_type.get(type_url, FrozenDict())

    def encoded_of(self, type_url: str) -> Mapping[str, Encoded]:
        """The known (message, bytes) pairs of one type by name (often none)."""
        return self.encoded.get(type_url, _NO_ENCODED)

    def __repr__(self) -> str:
        # Counts only: a Secret message's text form would print its private key.
        counts = ", ".join(f"{t.rsplit('.', 1)[-1]}={len(r)}" for t, r in self.by_type.items())
        return f"Resources({counts})"
