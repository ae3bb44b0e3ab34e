"""Protocol buffers wire primitives shared by the encoders that skip upb.

Used by translation (ClusterLoadAssignments encoded directly) and by the ADS
server (responses assembled from pre-encoded resources).
"""

from __future__ import annotations

_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def varint(n: int) -> bytes:
    """``n`` (non-negative) as a base-128 varint."""
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the body's length, the body."""
    return tag + varint(len(body)) + body
