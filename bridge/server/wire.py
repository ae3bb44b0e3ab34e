"""Hand-written protobuf wire encoding for the few xDS envelopes the server sends.

Each resource is serialized exactly once, when a snapshot is made
(:mod:`bridge.server.cache`); a response is then the concatenation of those
bytes inside a ``DiscoveryResponse`` / ``DeltaDiscoveryResponse`` envelope.
Encoding the envelope by hand avoids copying every ``Any`` back into a message
object per stream just to serialize it again. The field numbers are checked
against the real descriptors in the tests.

This module must not know about snapshots, streams or gRPC.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from bridge.xds.protowire import length_delimited, varint

# Wire type 2 (length-delimited) tags: (field_number << 3) | 2.
_ANY_TYPE_URL = b"\x0a"  # Any.type_url = 1
_ANY_VALUE = b"\x12"  # Any.value = 2
_DR_VERSION = b"\x0a"  # DiscoveryResponse.version_info = 1
_DR_RESOURCES = b"\x12"  # DiscoveryResponse.resources = 2
_DR_TYPE_URL = b"\x22"  # DiscoveryResponse.type_url = 4
_DR_NONCE = b"\x2a"  # DiscoveryResponse.nonce = 5
_DDR_SYSTEM_VERSION = b"\x0a"  # DeltaDiscoveryResponse.system_version_info = 1
_DDR_RESOURCES = b"\x12"  # DeltaDiscoveryResponse.resources = 2
_DDR_TYPE_URL = b"\x22"  # DeltaDiscoveryResponse.type_url = 4
_DDR_NONCE = b"\x2a"  # DeltaDiscoveryResponse.nonce = 5
_DDR_REMOVED = b"\x32"  # DeltaDiscoveryResponse.removed_resources = 6
_RES_VERSION = b"\x0a"  # Resource.version = 1
_RES_RESOURCE = b"\x12"  # Resource.resource = 2
_RES_NAME = b"\x1a"  # Resource.name = 3


def encode_any(type_url: str, value: bytes) -> bytes:
    """``google.protobuf.Any{type_url, value}`` on the wire."""
    return any_prefix(type_url) + varint(len(value)) + value


@functools.lru_cache(maxsize=64)
def any_prefix(type_url: str) -> bytes:
    """An ``Any``'s bytes up to its value's length: the type URL field and the value tag.

    ``any_prefix(t) + varint(len(v)) + v`` is ``encode_any(t, v)``; a snapshot
    builds 20k of them, so the type URL part is made once per type.
    """
    return length_delimited(_ANY_TYPE_URL, type_url.encode()) + _ANY_VALUE


def encode_discovery_response(
    version_info: str, type_url: str, nonce: str, anys: Iterable[bytes]
) -> bytes:
    """A state-of-the-world ``DiscoveryResponse`` around pre-encoded ``Any`` bytes."""
    return encode_discovery_response_body(version_info, type_url, nonce, encode_resources(anys))


def encode_resources(anys: Iterable[bytes]) -> bytes:
    """``DiscoveryResponse.resources`` fields for pre-encoded ``Any`` bytes.

    Fields may come in any order on the wire, so a server can encode a full
    set once and reuse it in every stream's response (each with its own nonce).
    """
    return b"".join(_DR_RESOURCES + varint(len(a)) + a for a in anys)


def encode_discovery_response_body(
    version_info: str, type_url: str, nonce: str, resources: bytes
) -> bytes:
    """A ``DiscoveryResponse`` around already encoded ``resources`` fields."""
    return b"".join(
        (
            length_delimited(_DR_VERSION, version_info.encode()),
            resources,
            length_delimited(_DR_TYPE_URL, type_url.encode()),
            length_delimited(_DR_NONCE, nonce.encode()),
        )
    )


def encode_resource(name: str, version: str, any_bytes: bytes) -> bytes:
    """An ``envoy.service.discovery.v3.Resource`` (delta) around pre-encoded ``Any`` bytes."""
    return (
        length_delimited(_RES_VERSION, version.encode())
        + length_delimited(_RES_RESOURCE, any_bytes)
        + length_delimited(_RES_NAME, name.encode())
    )


def encode_delta_response(
    system_version_info: str,
    type_url: str,
    nonce: str,
    resources: Iterable[bytes],
    removed: Iterable[str],
) -> bytes:
    """A ``DeltaDiscoveryResponse``; ``resources`` are pre-encoded ``Resource`` bytes."""
    parts = [length_delimited(_DDR_SYSTEM_VERSION, system_version_info.encode())]
    parts.extend(_DDR_RESOURCES + varint(len(r)) + r for r in resources)
    parts.append(length_delimited(_DDR_TYPE_URL, type_url.encode()))
    parts.append(length_delimited(_DDR_NONCE, nonce.encode()))
    parts.extend(length_delimited(_DDR_REMOVED, name.encode()) for name in removed)
    return b"".join(parts)
