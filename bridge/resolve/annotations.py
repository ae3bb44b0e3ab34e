"""The ``meshbridge.io/*`` annotation contract (DESIGN.md §3), parsed and checked.

:func:`parse_service` turns a Service's annotations into a :class:`ServiceSpec`
(the routes it asks for, resolved against its own ports, and its resolver,
mesh and Consul overrides); :func:`parse_namespace` reads a Namespace's
``resolver``/``mesh`` defaults. Problems come back as
:class:`~bridge.model.diagnostics.Diagnostic` values naming the annotation, the
bad value and the fix; nothing here raises for bad content.

Decisions the contract leaves open, made here:

- Durations are Go/Envoy style: one or more ``<number><unit>`` with units
  ``h``, ``m``, ``s``, ``ms``, ``us``/``µs``, ``ns`` (``1m30s``, ``1.5s``,
  ``250ms``). ``0`` or ``0s`` means *no timeout* (Envoy's meaning of a zero
  route timeout, needed for streaming). Negative values, a missing unit, a
  value with a fraction of a millisecond (Envoy counts whole milliseconds)
  and anything else are errors.
- Hosts are lower-cased. Allowed: an exact DNS name, ``*.<dns name>``, or
  ``*``. No ports, no underscores, no other wildcards.
- ``prefix`` and ``rewrite`` start with ``/`` and hold no whitespace, ``?``
  or ``#``.
- Every ERROR diagnostic leaves the whole Service out (the contract's "that
  Service alone is left out"); WARNINGs do not.
- Unknown ``meshbridge.io/*`` keys are WARNINGs with the closest valid key.
  Unknown keys *inside* a ``routes`` entry are ERRORs: the entry is a
  structured document read strictly, so a typo (``rewite``) must not silently
  drop behaviour.
- Single-route keys next to ``routes`` are ignored with a WARNING;
  ``host``/``port``/``rewrite``/``timeout`` without ``prefix`` likewise.
  An empty ``routes`` list exposes nothing (WARNING).
- A Service without ports passes with ``port=None``; whether that is an error
  depends on the resolver, which the caller knows.

Pure: no I/O, no clocks, no environment.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import yaml

from bridge.model.diagnostics import Diagnostic, Severity, annotation_field
from bridge.model.frozen import frozen_maker
from bridge.model.ir import Mesh, Resolver
from bridge.model.k8s import K8sNamespace, K8sService, ServicePort

PREFIX = "meshbridge.io/"
PREFIX_KEY = PREFIX + "prefix"
HOST_KEY = PREFIX + "host"
PORT_KEY = PREFIX + "port"
REWRITE_KEY = PREFIX + "rewrite"
TIMEOUT_KEY = PREFIX + "timeout"
RESOLVER_KEY = PREFIX + "resolver"
MESH_KEY = PREFIX + "mesh"
CONSUL_SERVICE_KEY = PREFIX + "consul-service"
CONSUL_DATACENTER_KEY = PREFIX + "consul-datacenter"
ROUTES_KEY = PREFIX + "routes"

SERVICE_KEYS: tuple[str, ...] = (
    PREFIX_KEY,
    HOST_KEY,
    PORT_KEY,
    REWRITE_KEY,
    TIMEOUT_KEY,
    RESOLVER_KEY,
    MESH_KEY,
    CONSUL_SERVICE_KEY,
    CONSUL_DATACENTER_KEY,
    ROUTES_KEY,
)
NAMESPACE_KEYS: tuple[str, ...] = (RESOLVER_KEY, MESH_KEY)
_SERVICE_KEY_SET = frozenset(SERVICE_KEYS)
_SINGLE_ROUTE_KEYS = (HOST_KEY, PORT_KEY, REWRITE_KEY, TIMEOUT_KEY)
ROUTE_ENTRY_KEYS: tuple[str, ...] = ("prefix", "host", "port", "rewrite", "timeout")

DEFAULT_HOST = "*"
DEFAULT_TIMEOUT_MS = 15_000

# Diagnostic codes (stable, machine-readable).
INVALID = "annotation.invalid"
UNKNOWN = "annotation.unknown"
IGNORED = "annotation.ignored"
PORT_UNKNOWN = "port.unknown"
PORT_AMBIGUOUS = "port.ambiguous"
ROUTE_DUPLICATE = "route.duplicate"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route a Service asks for, checked and resolved to one of its ports."""

    prefix: str
    host: str = DEFAULT_HOST
    port: ServicePort | None = None  # None only when the Service has no ports
    rewrite: str | None = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # 0 = no timeout


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a Service's annotations ask for.

    ``exposed`` says the Service asks to be exposed (``prefix`` or a non-empty
    ``routes``), even when its routes were refused (then there are ERRORs).
    """

    routes: tuple[RouteSpec, ...] = ()
    resolver: Resolver | None = None  # None ⇒ namespace's, else config's
    mesh: Mesh | None = None  # None ⇒ namespace's, else config's
    consul_service: str | None = None
    consul_datacenter: str | None = None
    exposed: bool = False


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    resolver: Resolver | None = None
    mesh: Mesh | None = None


NOT_EXPOSED = ServiceSpec()
NO_DEFAULTS = NamespaceSpec()

# Positional makers (fields in declaration order): one of each per exposed
# Service in a full build, made without the frozen ``__init__``.
_route_spec_of = frozen_maker(RouteSpec)
_service_spec_of = frozen_maker(ServiceSpec)


# -- durations -----------------------------------------------------------------

_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """A duration could not be parsed; the message says why."""


def parse_duration_ms(text: str) -> int:
    """A Go/Envoy-style duration in whole milliseconds (``0`` = no timeout)."""
    s = text.strip()
    if not s:
        raise DurationError("is empty")
    if s[0] == "-":
        raise DurationError("is negative")
    if s[0] == "+":
        s = s[1:]
    if s == "0":
        return 0
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            if re.fullmatch(r"\d+(\.\d*)?", s[pos:]):
                raise DurationError("has no unit (write e.g. 15s, 1m30s or 250ms)")
            raise DurationError("is not a duration (write e.g. 15s, 1m30s or 250ms)")
        total += Fraction(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    ms = total / 1_000_000
    if ms.denominator != 1:
        raise DurationError("is not a whole number of milliseconds")
    return int(ms)


def format_duration_ms(ms: int) -> str:
    """The shortest Go-style text for ``ms`` (``90000`` → ``1m30s``)."""
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


# -- small validators ----------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATH_BAD = re.compile(r"[\s?#]")


@functools.lru_cache(maxsize=4096)
def check_host(value: str) -> tuple[str | None, str]:
    """``(normalised host, "")`` or ``(None, what is wrong)``.

    Memoised (a pure function of a string): many Services name the same
    host, and a full build checks every one.
    """
    host = value.strip().lower()
    if host == "*":
        return host, ""
    name = host[2:] if host.startswith("*.") else host
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        return None, "is not a DNS name, *.<domain> or *"
    return host, ""


def check_path(value: str) -> str:
    """``""`` if ``value`` is a usable path prefix, else what is wrong."""
    if not value.startswith("/"):
        return "does not start with /"
    if _PATH_BAD.search(value):
        return "contains whitespace, ? or #"
    return ""


def _closest(key: str, valid: tuple[str, ...]) -> str | None:
    # Compare what follows "meshbridge.io/": the shared prefix would make
    # every key look close to every other.
    short = {v.removeprefix(PREFIX): v for v in valid}
    found = difflib.get_close_matches(key.lower().removeprefix(PREFIX), short, n=1, cutoff=0.6)
    return short[found[0]] if found else None


def _choices(values: type[Resolver] | type[Mesh]) -> str:
    return ", ".join(v.value for v in values)


# -- the parser ----------------------------------------------------------------


class _Diags:
    """Collects diagnostics for one object (its ref is made only for the first one)."""

    __slots__ = ("items", "of")

    def __init__(self, of: K8sService | K8sNamespace) -> None:
        self.of = of
        self.items: list[Diagnostic] = []

    def add(
        self,
        field: str,
        message: str,
        fix: str,
        severity: Severity = Severity.ERROR,
        code: str = INVALID,
    ) -> None:
        self.items.append(Diagnostic(self.of.ref, field, message, fix, severity, code))

    def enum(self, key: str, value: str, kind: type[Resolver] | type[Mesh]) -> Any:
        try:
            return kind(value)
        except ValueError:
            near = _closest(value, tuple(v.value for v in kind))
            hint = f"did you mean {near}? " if near else ""
            self.add(
                annotation_field(key),
                f"{value!r} is not a valid {key.removeprefix(PREFIX)}",
                f"{hint}use one of {_choices(kind)}",
            )
            return None

    def unknown_keys(self, annotations: Mapping[str, str], valid: tuple[str, ...], on: str) -> None:
        for key in annotations:
            if key.startswith(PREFIX) and key not in valid:
                near = None if key in SERVICE_KEYS else _closest(key, valid)
                if key in SERVICE_KEYS:
                    fix = f"{key} applies to Services only; on a {on} use {', '.join(valid)}"
                elif near is None:
                    fix = f"valid keys on a {on}: {', '.join(valid)}"
                else:
                    fix = f"did you mean {near}?"
                self.add(
                    annotation_field(key),
                    f"unknown annotation {key}",
                    fix,
                    Severity.WARNING,
                    UNKNOWN,
                )


def _has_ours(ann: Mapping[str, str]) -> bool:
    """Whether any key is a ``meshbridge.io/`` key."""
    return any(k.startswith(PREFIX) for k in ann)


def parse_namespace(ns: K8sNamespace) -> tuple[NamespaceSpec, tuple[Diagnostic, ...]]:
    """A Namespace's ``resolver``/``mesh`` defaults (diagnostics name the Namespace)."""
    ann = ns.annotations
    if not _has_ours(ann):
        return NO_DEFAULTS, ()
    d = _Diags(ns)
    d.unknown_keys(ann, NAMESPACE_KEYS, "Namespace")
    resolver = d.enum(RESOLVER_KEY, ann[RESOLVER_KEY], Resolver) if RESOLVER_KEY in ann else None
    mesh = d.enum(MESH_KEY, ann[MESH_KEY], Mesh) if MESH_KEY in ann else None
    return NamespaceSpec(resolver, mesh), tuple(d.items)


def parse_service(svc: K8sService) -> tuple[ServiceSpec, tuple[Diagnostic, ...]]:
    """A Service's annotations as a :class:`ServiceSpec`, plus diagnostics.

    The spec is returned even when there are ERROR diagnostics (so callers can
    still show what was understood); an ERROR means the Service is left out.
    """
    annotations = svc.annotations
    if not annotations:
        return NOT_EXPOSED, ()  # the common case, kept cheap
    # Our keys as a plain dict: every lookup below is then a C-level one.
    ann = {k: v for k, v in annotations.items() if k.startswith(PREFIX)}
    if not ann:
        return NOT_EXPOSED, ()
    d = _Diags(svc)
    if not _SERVICE_KEY_SET.issuperset(ann):
        d.unknown_keys(annotations, SERVICE_KEYS, "Service")

    get = ann.get
    value = get(RESOLVER_KEY)
    resolver = d.enum(RESOLVER_KEY, value, Resolver) if value is not None else None
    value = get(MESH_KEY)
    mesh = d.enum(MESH_KEY, value, Mesh) if value is not None else None
    consul_service = _consul_name(d, ann, CONSUL_SERVICE_KEY)
    consul_dc = _consul_name(d, ann, CONSUL_DATACENTER_KEY)

    routes: list[RouteSpec] = []
    exposed = False
    if ROUTES_KEY in ann:
        for key in (PREFIX_KEY, *_SINGLE_ROUTE_KEYS):
            if key in ann:
                d.add(
                    annotation_field(key),
                    f"{key} is ignored because {ROUTES_KEY} is set",
                    f"move it into the {ROUTES_KEY} entries, or remove {ROUTES_KEY}",
                    Severity.WARNING,
                    IGNORED,
                )
        exposed, routes = _parse_routes(d, svc, ann[ROUTES_KEY])
    elif PREFIX_KEY in ann:
        exposed = True
        route = _parse_route(
            d,
            svc,
            prefix=ann[PREFIX_KEY],
            host=get(HOST_KEY),
            port=get(PORT_KEY),
            rewrite=get(REWRITE_KEY),
            timeout=get(TIMEOUT_KEY),
            field=_annotation_key_field,
        )
        if route is not None:
            routes.append(route)
    else:
        for key in _SINGLE_ROUTE_KEYS:
            if key in ann:
                d.add(
                    annotation_field(key),
                    f"{key} has no effect without {PREFIX_KEY}; the Service is not exposed",
                    f"add {PREFIX_KEY} to expose the Service, or remove {key}",
                    Severity.WARNING,
                    IGNORED,
                )
    spec = _service_spec_of(tuple(routes), resolver, mesh, consul_service, consul_dc, exposed)
    return spec, tuple(d.items)


def _consul_name(d: _Diags, ann: Mapping[str, str], key: str) -> str | None:
    value = ann.get(key)
    if value is None:
        return None
    if not value or re.search(r"[\s/]", value):
        d.add(
            annotation_field(key),
            f"{value!r} is not a valid Consul name",
            "use a non-empty name without spaces or /",
        )
        return None
    return value


def _parse_routes(d: _Diags, svc: K8sService, text: str) -> tuple[bool, list[RouteSpec]]:
    """``(whether it asks to be exposed, the routes that passed)``."""
    base = annotation_field(ROUTES_KEY)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        d.add(
            base,
            f"is not valid YAML ({problem})",
            "write a YAML list of {prefix, host, port, rewrite, timeout} mappings",
        )
        return True, []
    if not isinstance(doc, list):
        d.add(
            base,
            f"must be a YAML list, got {_yaml_type(doc)}",
            "write a YAML list of {prefix, host, port, rewrite, timeout} mappings, "
            "e.g. '- prefix: /api'",
        )
        return True, []
    if not doc:
        d.add(
            base,
            "is an empty list; the Service is not exposed",
            f"add entries, or remove {ROUTES_KEY}",
            Severity.WARNING,
            IGNORED,
        )
        return False, []
    routes: list[RouteSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(doc):
        at = f"{base}[{i}]"
        if not isinstance(entry, dict):
            d.add(at, f"must be a mapping, got {_yaml_type(entry)}", "write e.g. '- prefix: /api'")
            continue
        for key in entry:
            if key not in ROUTE_ENTRY_KEYS:
                near = _closest(str(key), ROUTE_ENTRY_KEYS)
                d.add(
                    f"{at}.{key}",
                    f"unknown key {key!r} in a route entry",
                    f"did you mean {near}?"
                    if near
                    else f"valid keys are {', '.join(ROUTE_ENTRY_KEYS)}",
                    code=UNKNOWN,
                )
        values: dict[str, str | None] = {}
        bad = False
        for key in ROUTE_ENTRY_KEYS:
            v = entry.get(key)
            if v is None:
                values[key] = None
            elif isinstance(v, str) or (key == "port" and type(v) is int):
                values[key] = str(v)
            else:
                want = "a port name or number" if key == "port" else "a string"
                d.add(f"{at}.{key}", f"must be {want}, got {_yaml_type(v)} {v!r}", "quote it")
                bad = True
        if values["prefix"] is None:
            d.add(f"{at}.prefix", "is required", "give every route entry a prefix, e.g. /api")
            continue
        if bad:
            continue
        route = _parse_route(
            d,
            svc,
            prefix=values["prefix"],
            host=values["host"],
            port=values["port"],
            rewrite=values["rewrite"],
            timeout=values["timeout"],
            field=_entry_field(at),
        )
        if route is None:
            continue
        first = seen.setdefault((route.host, route.prefix), i)
        if first != i:
            d.add(
                f"{at}.prefix",
                f"repeats host {route.host} prefix {route.prefix} of entry {first}",
                "give each entry a distinct host and prefix",
                code=ROUTE_DUPLICATE,
            )
            continue
        routes.append(route)
    return True, routes


def _annotation_key_field(key: str) -> str:
    return annotation_field(PREFIX + key)


def _entry_field(at: str) -> Callable[[str], str]:
    return lambda key: f"{at}.{key}"


def _yaml_type(v: Any) -> str:
    return {
        type(None): "nothing",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
    }.get(type(v), type(v).__name__)


def _parse_route(
    d: _Diags,
    svc: K8sService,
    *,
    prefix: str,
    host: str | None,
    port: str | None,
    rewrite: str | None,
    timeout: str | None,
    field: Callable[[str], str],
) -> RouteSpec | None:
    ok = True
    problem = check_path(prefix)
    if problem:
        d.add(field("prefix"), f"prefix {prefix!r} {problem}", "use a path prefix like /api")
        ok = False
    norm_host = DEFAULT_HOST
    if host is not None:
        checked, problem = check_host(host)
        if checked is None:
            d.add(
                field("host"),
                f"host {host!r} {problem}",
                "use an exact name (shop.example.com), a wildcard (*.example.com) or *",
            )
            ok = False
        else:
            norm_host = checked
    if rewrite is not None:
        problem = check_path(rewrite)
        if problem:
            d.add(field("rewrite"), f"rewrite {rewrite!r} {problem}", "use a path like / or /v2")
            ok = False
    timeout_ms = DEFAULT_TIMEOUT_MS
    if timeout is not None:
        try:
            timeout_ms = parse_duration_ms(timeout)
        except DurationError as exc:
            d.add(
                field("timeout"),
                f"timeout {timeout!r} {exc}",
                "use a duration like 15s, 1m30s or 250ms (0s for none)",
            )
            ok = False
    port_ok, service_port = _pick_port(d, svc, port, field)
    if not (ok and port_ok):
        return None
    return _route_spec_of(prefix, norm_host, service_port, rewrite, timeout_ms)


def _port_text(p: ServicePort) -> str:
    return f"{p.name}({p.port})" if p.name else str(p.port)


def _pick_port(
    d: _Diags, svc: K8sService, wanted: str | None, field_of: Callable[[str], str]
) -> tuple[bool, ServicePort | None]:
    """``(True, the Service port a route targets)``, or ``(False, None)`` after a diagnostic."""
    ports = svc.ports
    if wanted is None and len(ports) <= 1:
        return True, ports[0] if ports else None
    field = field_of("port")
    listed = ", ".join(_port_text(p) for p in ports)
    if wanted is None:
        d.add(
            field,
            f"the Service has {len(ports)} ports ({listed}) and no port is chosen",
            f"set {PORT_KEY} (or port in each route entry) to one of them, by name or number",
            code=PORT_AMBIGUOUS,
        )
        return False, None
    wanted = wanted.strip()
    for p in ports:
        if (wanted.isdigit() and p.port == int(wanted)) or (p.name and p.name == wanted):
            return True, p
    d.add(
        field,
        f"port {wanted!r} is not a port of the Service"
        + (f" (its ports: {listed})" if ports else " (it has no ports)"),
        f"use one of {listed}, by name or number" if ports else "add the port to the Service",
        code=PORT_UNKNOWN,
    )
    return False, None
