"""Envoy resource names, made from IR keys — the only place they are made.

Every name a translated resource carries (or refers to) comes from a function
here, so the cache, the consistency check and ``/debug`` agree on them and can
map a name back to the IR object it came from.

The rules:

- cluster (and its EDS ``service_name``): ``<namespace>/<service>/<port>``,
  e.g. ``default/web/http`` or ``shop/cart/8080``;
- listener: the IR listener's name, e.g. ``http``;
- route configuration of a listener: ``<listener>/routes``;
- virtual host: the host itself (``*``, ``*.example.com``, ``api.example.com``);
  virtual host names only need to be unique inside one route configuration,
  and hosts are;
- route: the object that asked for it, e.g. ``Service default/web`` (route
  names need not be unique; they say where a route came from);
- secrets: the IR :data:`~bridge.model.ir.SecretName`, unchanged.

Each component of a cluster or listener name keeps ``[A-Za-z0-9_-]`` as is and
writes every other byte of its UTF-8 form as ``%XX``. Why: Envoy's stats
replace ``:`` with ``_`` (so ``web:http`` and ``web_http`` would share stats),
and ``.`` is the stats path separator (a dotted name splits the
``cluster.<name>.`` prefix that stats tag extraction relies on). Kubernetes
names never need escaping; an exotic Consul service name stays unique and
reversible. ``/`` separates components and is always escaped inside one, so
:func:`parse_cluster_name` inverts :func:`cluster_name` exactly.

This module must stay free of Envoy protos and I/O: it is string work only.
"""

from __future__ import annotations

import functools
import re

from bridge.model.ir import Listener, SecretName, UpstreamKey
from bridge.model.k8s import ObjectRef

_SAFE = re.compile(r"[A-Za-z0-9_-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPE = re.compile(r"%[0-9A-F]{2}(?:%[0-9A-F]{2})*")

ROUTES_SUFFIX = "/routes"


def _escape_char(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group(0).encode())


@functools.lru_cache(maxsize=1 << 16)  # names repeat across builds; bounded for churn
def escape(component: str) -> str:
    """One name component with every byte outside ``[A-Za-z0-9_-]`` as ``%XX``."""
    if _SAFE.fullmatch(component):
        return component  # the common case: a Kubernetes name
    return _UNSAFE.sub(_escape_char, component)


def unescape(component: str) -> str:
    """Inverse of :func:`escape`."""
    if "%" not in component:
        return component
    return _ESCAPE.sub(lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), component)


def cluster_name(key: UpstreamKey) -> str:
    """The Cluster (and ClusterLoadAssignment / EDS service) name of an upstream."""
    return f"{escape(key.namespace)}/{escape(key.service)}/{escape(key.port)}"


def eds_service_name(key: UpstreamKey) -> str:
    """The name a cluster asks EDS for: the same as its cluster name."""
    return cluster_name(key)


def parse_cluster_name(name: str) -> UpstreamKey | None:
    """The upstream key a cluster name was made from, or ``None`` if it is not one of ours."""
    parts = name.split("/")
    if len(parts) != 3 or any(not _ESCAPED_COMPONENT.fullmatch(p) for p in parts):
        return None
    try:
        namespace, service, port = (unescape(p) for p in parts)
    except (ValueError, UnicodeDecodeError):
        return None
    key = UpstreamKey(namespace, service, port)
    return key if cluster_name(key) == name else None


_ESCAPED_COMPONENT = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})*")


def listener_name(listener: Listener) -> str:
    """The Listener name (also its HTTP connection manager's stat prefix)."""
    return escape(listener.name)


def route_config_name(listener: Listener) -> str:
    """The RouteConfiguration a listener asks RDS for."""
    return listener_name(listener) + ROUTES_SUFFIX


def parse_route_config_name(name: str) -> str | None:
    """The IR listener name a route configuration name was made from, or ``None``."""
    if not name.endswith(ROUTES_SUFFIX):
        return None
    escaped = name[: -len(ROUTES_SUFFIX)]
    if not _ESCAPED_COMPONENT.fullmatch(escaped):
        return None
    try:
        return unescape(escaped)
    except (ValueError, UnicodeDecodeError):
        return None


def virtual_host_name(host: str) -> str:
    """The VirtualHost name for an IR host (unique within a route configuration)."""
    return host


def route_name(source: ObjectRef) -> str:
    """A route's name (access logs, ``/debug``): the object that asked for it."""
    return str(source)


def secret_name(name: SecretName) -> str:
    """The SDS Secret name for an IR secret name: the same string."""
    return str(name)
