"""Consul catalog source objects, as the Consul adapter converts them."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.model.frozen import EMPTY, FrozenDict


@dataclass(frozen=True, slots=True, order=True)
class ConsulServiceKey:
    """One watched Consul service: ``connect`` selects the sidecar proxies."""

    datacenter: str
    service: str
    connect: bool = False
    namespace: str = ""
    partition: str = ""


@dataclass(frozen=True, slots=True, order=True)
class ConsulInstance:
    """One passing instance (``address`` is Service.Address, else Node.Address)."""

    id: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: FrozenDict[str, str] = EMPTY


@dataclass(frozen=True, slots=True)
class ConsulService:
    key: ConsulServiceKey
    instances: tuple[ConsulInstance, ...] = ()  # passing only, sorted
    total: int = 0  # instances known, passing or not (0 passing of n>0 ⇒ diagnostic)
