"""What ``meshbridge resolve`` prints: one row per Service, as a table or JSON.

A row is made for every exposed Service and for every Service with a
diagnostic (a bad annotation can leave a Service unexposed; it must still
show up, with the reason). Problems the sources found (a file that does not
parse) follow the table. Nothing here prints key material: identities are
shown by name and expiry only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import (
    Discovery,
    IdentitySecret,
    Resolved,
    Secret,
    SecretName,
    ServiceResolution,
    Upstream,
)
from bridge.model.k8s import Kind

MAX_ADDRESSES = 3


@dataclass(frozen=True, slots=True)
class Row:
    service: str  # "namespace/name"
    exposed: bool
    routes: tuple[str, ...]  # "host/prefix" (host "*" shown as "*")
    resolver: str
    mesh: str
    mesh_reason: str
    endpoints: tuple[str, ...]  # "addr:port", or "dns name:port"
    sni: tuple[str, ...]
    san: tuple[str, ...]  # "URI:spiffe://..." / "DNS:name"
    alpn: tuple[str, ...]
    identity: tuple[str, ...]  # "name (expires ...)"
    diagnostics: tuple[Diagnostic, ...]

    @property
    def left_out(self) -> bool:
        """Asked to be routed but has no route because of an error."""
        return not self.routes and any(d.severity is Severity.ERROR for d in self.diagnostics)

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "exposed": self.exposed,
            "left_out": self.left_out,
            "routes": list(self.routes),
            "resolver": self.resolver,
            "mesh": self.mesh,
            "mesh_reason": self.mesh_reason,
            "endpoints": list(self.endpoints),
            "sni": list(self.sni),
            "verify_san": list(self.san),
            "alpn": list(self.alpn),
            "identity": list(self.identity),
            "diagnostics": [diagnostic_json(d) for d in self.diagnostics],
        }


def diagnostic_json(d: Diagnostic) -> dict[str, str]:
    return {
        "object": str(d.ref),
        "field": d.field,
        "severity": d.severity.value,
        "message": d.message,
        "fix": d.fix,
        "code": d.code,
    }


def _uniq(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _endpoints(up: Upstream) -> list[str]:
    if up.discovery is Discovery.STRICT_DNS and up.dns is not None:
        return [f"dns {up.dns.host}:{up.dns.port}"]
    return [f"{e.address}:{e.port}" for e in up.endpoints]


def _identity(name: SecretName | None, secrets: Mapping[SecretName, Secret]) -> str:
    if name is None:
        return ""
    secret = secrets.get(name)
    if isinstance(secret, IdentitySecret) and secret.not_after:
        return f"{name} (expires {secret.not_after})"
    return f"{name} (not issued yet)" if secret is None else str(name)


def make_row(res: ServiceResolution, secrets: Mapping[SecretName, Secret]) -> Row:
    ups = res.upstreams
    tls = [u.tls for u in ups if u.tls is not None]
    return Row(
        service=f"{res.ref.namespace}/{res.ref.name}",
        exposed=res.exposed,
        routes=_uniq(f"{r.host}{r.prefix}" for r in res.routes),
        resolver=res.resolver.value if res.resolver else "",
        mesh=res.mesh.value if res.mesh else "",
        mesh_reason=res.mesh_reason,
        endpoints=_uniq(e for u in ups for e in _endpoints(u)),
        sni=_uniq(t.sni or "" for t in tls),
        san=_uniq(f"{s.kind}:{s.value}" for t in tls for s in t.verify_sans),
        alpn=_uniq(a for t in tls for a in t.alpn),
        identity=_uniq(_identity(t.client_identity, secrets) for t in tls),
        diagnostics=tuple(sorted(res.diagnostics)),
    )


def matches(ref_ns: str, ref_name: str, selectors: Sequence[str]) -> bool:
    """``NS/SVC`` selects one Service, ``NS`` or ``NS/`` a namespace; none selects all."""
    if not selectors:
        return True
    for sel in selectors:
        ns, _, name = sel.partition("/")
        if ns == ref_ns and (not name or name == ref_name):
            return True
    return False


def rows(resolved: Resolved, selectors: Sequence[str] = ()) -> list[Row]:
    out = [
        make_row(res, resolved.ir.secrets)
        for ref, res in sorted(resolved.services.items())
        if ref.kind is Kind.SERVICE
        and (res.exposed or res.diagnostics)
        and matches(ref.namespace, ref.name, selectors)
    ]
    return out


def other_diagnostics(
    resolved: Resolved, source_diagnostics: Iterable[Diagnostic]
) -> list[Diagnostic]:
    """Diagnostics not tied to a Service row (files, namespaces, identities)."""
    seen = {d for res in resolved.services.values() for d in res.diagnostics}
    out = {d for d in resolved.diagnostics if d not in seen and d.ref.kind is not Kind.SERVICE}
    out.update(source_diagnostics)
    return sorted(out)


def _cell(items: Sequence[str], limit: int = 0) -> str:
    if not items:
        return "-"
    if limit and len(items) > limit:
        return ", ".join(items[:limit]) + f", +{len(items) - limit} more"
    return ", ".join(items)


def _endpoints_cell(row: Row) -> str:
    if not row.endpoints:
        return "0" if row.exposed else "-"
    if row.endpoints[0].startswith("dns "):
        return row.endpoints[0]
    return f"{len(row.endpoints)}: {_cell(row.endpoints, MAX_ADDRESSES)}"


HEADERS = (
    "SERVICE",
    "ROUTES",
    "RESOLVER",
    "MESH (WHY)",
    "ENDPOINTS",
    "SNI",
    "VERIFY SAN",
    "ALPN",
    "IDENTITY",
)


def render_table(table_rows: Sequence[Row], extra: Sequence[Diagnostic]) -> str:
    cells: list[tuple[str, ...]] = []
    for r in table_rows:
        mesh = r.mesh or "-"
        if r.mesh_reason:
            mesh = f"{mesh} ({r.mesh_reason})"
        cells.append(
            (
                r.service,
                _routes_cell(r),
                r.resolver or "-",
                mesh,
                _endpoints_cell(r),
                _cell(r.sni),
                _cell(r.san),
                _cell(r.alpn),
                _cell(r.identity),
            )
        )
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    for r, c in zip(table_rows, cells, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        for d in r.diagnostics:
            lines.append(f"    {d.severity.value}: {_diag_text(d)}")
    if not table_rows:
        lines.append("(no exposed Services: annotate one with meshbridge.io/prefix)")
    if extra:
        lines.append("")
        lines.append("Other problems:")
        lines.extend(f"    {d.severity.value}: {d.ref}: {_diag_text(d)}" for d in extra)
    return "\n".join(lines) + "\n"


def _routes_cell(r: Row) -> str:
    if r.routes:
        return _cell(r.routes)
    return "(left out: see below)" if r.left_out else "(no routes)"


def _diag_text(d: Diagnostic) -> str:
    text = f"{d.field}: {d.message}" if d.field else d.message
    return f"{text} (fix: {d.fix})" if d.fix else text


def render_json(table_rows: Sequence[Row], extra: Sequence[Diagnostic]) -> str:
    doc = {
        "services": [r.as_json() for r in table_rows],
        "other_diagnostics": [diagnostic_json(d) for d in extra],
    }
    return json.dumps(doc, indent=2) + "\n"
