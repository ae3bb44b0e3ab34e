"""The output of translation: Envoy resources by type and name.

``translate`` (in :mod:`bridge.xds.translate`) makes a :class:`Resources`;
the snapshot cache (:mod:`bridge.server.cache`) serializes and versions it.
A resource whose IR did not change is the *same* message object as in the
previous Resources, so the cache can reuse its serialized bytes and version
by identity instead of re-serializing the world.
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


@dataclass(frozen=True, slots=True)
class Resources:
    """Envoy resources by type URL, then by resource name."""

    by_type: Mapping[str, Mapping[str, Message]] = field(default_factory=FrozenDict)

    def of(self, type_url: str) -> Mapping[str, Message]:
        return self.by_type.get(type_url, FrozenDict())

    def __repr__(self) -> str:
        # Counts only: a Secret message's text form would print its private key.
        counts = ", ".join(f"{t.rsplit('.', 1)[-1]}={len(r)}" for t, r in self.by_type.items())
        return f"Resources({counts})"
