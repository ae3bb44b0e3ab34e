"""The leader gate: the one thing a leader-only controller needs from leader election.

Catalog sync writes to Consul and Kubernetes only while this replica leads.
The Kubernetes adapter implements the gate with a ``coordination.k8s.io/v1``
Lease; the Consul adapter only consumes it, so neither adapter imports the
other (the CLI wires them). :class:`AlwaysLeader` is the gate for a single
replica or a one-shot command. No I/O here.
"""

from __future__ import annotations

from typing import Protocol


class LeaderGate(Protocol):
    """``is_leader`` is true while this replica holds the lease."""

    @property
    def is_leader(self) -> bool: ...

    async def wait_leader(self) -> None:
        """Return once this replica leads (at once if it already does)."""


class AlwaysLeader:
    """A gate that is always open: one replica, ``sync-catalog`` one-shot, tests."""

    @property
    def is_leader(self) -> bool:
        return True

    async def wait_leader(self) -> None:
        return None
