"""``/debug`` and ``/debug/snapshot.json``: what the running bridge is doing, at a glance.

:func:`page` renders one self-contained HTML page (inline CSS, no script, no
external assets, so it works offline and behind a port-forward):

- a summary: ready or not and why, problems counted, last build error;
- each connected Envoy: per-type ACKed versions against the current
  snapshot's, NACK count and its last NACK;
- each Service: routes, resolver, mesh and why, endpoints, TLS settings
  (SNI, SANs verified, ALPN, TLS versions), the identity it presents and
  the trust bundle it verifies with, each with its expiry, and its
  diagnostics — Services with problems first. At most :data:`MAX_SERVICES`
  are rendered; a search box (``/debug?q=words``, matched on the server
  against every Service's name, routes, resolver and mesh) finds any other;
- mesh identities and trust bundles with their expiries, sources and their
  sync state, recent build timings and the snapshot's types and versions.

``/debug/snapshot.json`` is the current snapshot as JSON (``json_format``).
Asked with no parameters it is cheap at any size: per type the version, the
count and the resource names, with links to the full forms. ``?type=clusters``
(``listeners``, ``routes``, ``endpoints``, ``secrets``) and/or
``?name=<substring>`` render the matching resources in full, each with its
version. Secrets are reduced to names, certificate summaries (subject, SANs,
expiry, fingerprint) and a fingerprint of the private key — never key bytes;
any field named like key material (``private_key``, ``password``, ...) is
replaced wherever it appears, in every form. :class:`SnapshotJson` keeps each
rendered form while its snapshot is current.

Every value interpolated into the page goes through :func:`html.escape`.
This module only reads the bridge's state (and keeps its own cache of
rendered JSON); it changes nothing and does no I/O of its own. A whole type
in full takes seconds at 10k clusters (``bench/admin_pages.py``), so the
bridge renders the JSON in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import hashlib
import html
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

import bridge
from bridge.errors import IdentityError
from bridge.identity import pki
from bridge.metrics import type_name
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import (
    Discovery,
    IdentitySecret,
    Secret,
    SecretName,
    ServiceResolution,
    TrustSecret,
    Upstream,
)
from bridge.model.k8s import Kind
from bridge.xds.resources import PUSH_ORDER

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.model.world import World
    from bridge.server.cache import Snapshot

HTML = "text/html; charset=utf-8"
JSON = "application/json"

MAX_SERVICES = 500  # rendered in full; the rest are counted (meshbridge resolve shows all)
MAX_ENDPOINTS = 12
MAX_BUILDS = 15
# Fields whose value is key material, in json_format's camelCase and proto names.
_SECRET_FIELDS = frozenset(
    {
        "privateKey",
        "private_key",
        "password",
        "pkcs12",
        "sessionTicketKeys",
        "session_ticket_keys",
        "privateKeyProvider",
        "private_key_provider",
        "hmacSecret",
        "hmac_secret",
        "genericSecret",
        "generic_secret",
    }
)
_CERT_FIELDS = frozenset({"certificateChain", "certificate_chain", "trustedCa", "trusted_ca"})


def e(value: object) -> str:
    """HTML-escaped text of ``value`` (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


# -- time ---------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _parse_time(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _expiry(not_after: dt.datetime | None, now: dt.datetime, lifetime: float = 0) -> str:
    """``<span>`` with the expiry and time left, coloured by urgency."""
    if not_after is None:
        return '<span class="bad">not issued</span>'
    left = (not_after - now).total_seconds()
    stamp = not_after.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if left <= 0:
        return f'<span class="bad">expired {e(stamp)} ({e(_ago(-left))} ago)</span>'
    urgent = left < 3600 or (lifetime > 0 and left < lifetime * 0.25)
    cls = "warn" if urgent else "ok"
    return f'<span class="{cls}">{e(stamp)} (in {e(_ago(left))})</span>'


# -- the page -------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e3e6ea;
--ok:#137333;--okbg:#e6f4ea;--warn:#8a5300;--warnbg:#fff4d6;--bad:#b3261e;--badbg:#fde7e6;
--acc:#2456c7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:18px;
align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:600}
header .meta{color:#c5cad3;font-size:13px}
main{padding:16px 24px;max-width:1400px}
h2{font-size:16px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.stat b{display:block;font-size:22px}
.stat span{color:var(--mute);font-size:12px}
.stat.bad{border-color:var(--bad);background:var(--badbg)}
.stat.warn{border-color:#e2b340;background:var(--warnbg)}
.svc{background:var(--card);border:1px solid var(--line);border-left:5px solid var(--ok);
border-radius:8px;padding:10px 14px;margin:0 0 10px}
.svc.error{border-left-color:var(--bad)}
.svc.warning{border-left-color:#e2b340}
.svc.off{border-left-color:#aab1bd}
.svc h3{margin:0 0 6px;font-size:15px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;
border-radius:10px;background:#eef1f5;color:#344054}
.badge.ok{background:var(--okbg);color:var(--ok)}
.badge.warn{background:var(--warnbg);color:var(--warn)}
.badge.bad{background:var(--badbg);color:var(--bad)}
.badge.mesh{background:#e8eefc;color:var(--acc)}
dl.kv{display:grid;grid-template-columns:140px 1fr;gap:2px 12px;margin:4px 0}
dl.kv dt{color:var(--mute)}
dl.kv dd{margin:0;word-break:break-word}
code,.mono{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
ul.diags{list-style:none;margin:6px 0 0;padding:0}
ul.diags li{padding:6px 10px;border-radius:6px;margin:4px 0}
li.error{background:var(--badbg);color:var(--bad)}
li.warning{background:var(--warnbg);color:var(--warn)}
li.info{background:#eef1f5}
li .fix{display:block;color:var(--ink);font-size:13px}
table{border-collapse:collapse;width:100%;background:var(--card);
border:1px solid var(--line);border-radius:8px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--mute);font-weight:600;background:#fafbfc}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}
.muted{color:var(--mute)}
.alert{background:var(--badbg);border:1px solid var(--bad);color:var(--bad);
border-radius:8px;padding:10px 14px;margin:12px 0}
.alert pre{white-space:pre-wrap;margin:6px 0 0;color:var(--ink)}
.up{border-top:1px dashed var(--line);margin-top:6px;padding-top:6px}
input#filter{padding:6px 10px;border:1px solid var(--line);border-radius:6px;width:380px}
form.search{margin:8px 0 12px}
form.search button{padding:6px 12px;border:1px solid var(--acc);border-radius:6px;
background:var(--acc);color:#fff;cursor:pointer}
a{color:var(--acc)}
nav{margin-left:auto;display:flex;gap:14px}
nav a{color:#c5cad3;text-decoration:none;font-size:13px}
nav a:hover{color:#fff}
"""


def _diag_items(diags: Iterable[Diagnostic], with_ref: bool = False) -> str:
    items = []
    for d in diags:
        where = f"{d.ref}: " if with_ref else ""
        field = f"<code>{e(d.field)}</code>: " if d.field else ""
        fix = f'<span class="fix">fix: {e(d.fix)}</span>' if d.fix else ""
        items.append(
            f'<li class="{e(d.severity.value)}"><b>{e(d.severity.value)}</b> '
            f"{e(where)}{field}{e(d.message)}{fix}</li>"
        )
    return f'<ul class="diags">{"".join(items)}</ul>' if items else ""


def _worst(diags: Iterable[Diagnostic]) -> str:
    sev = {d.severity for d in diags}
    if Severity.ERROR in sev:
        return "error"
    if Severity.WARNING in sev:
        return "warning"
    return ""


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are already-escaped HTML."""
    return '<dl class="kv">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _list(items: Iterable[str], limit: int = 0) -> str:
    """Escaped, comma-separated ``items`` (``-`` when none), capped at ``limit``."""
    items = list(items)
    if not items:
        return '<span class="muted">-</span>'
    shown = items[:limit] if limit else items
    text = ", ".join(f"<code>{e(i)}</code>" for i in shown)
    if limit and len(items) > limit:
        text += f' <span class="muted">+{len(items) - limit} more</span>'
    return text


def _identity(
    name: SecretName | None, secrets: Mapping[SecretName, Secret], now: dt.datetime
) -> str:
    if name is None:
        return '<span class="muted">none</span>'
    secret = secrets.get(name)
    if not isinstance(secret, IdentitySecret):
        return f'<code>{e(name)}</code> <span class="bad">not issued yet</span>'
    when = _parse_time(secret.not_after) if secret.not_after else None
    return f"<code>{e(name)}</code> expires {_expiry(when, now)}"


@dataclass(frozen=True, slots=True)
class _Bundle:
    """What the page shows of a trust bundle: how many roots, the first to expire."""

    roots: int
    not_after: dt.datetime | None  # the earliest expiry among its certificates
    lifetime: float  # that certificate's lifetime in seconds


def _bundles(*sources: Mapping[SecretName, Secret]) -> dict[SecretName, _Bundle]:
    """Every trust bundle among ``sources``, parsed once per page."""
    out: dict[SecretName, _Bundle] = {}
    for secrets in sources:
        for name, secret in secrets.items():
            if not isinstance(secret, TrustSecret) or name in out:
                continue
            try:
                infos = [pki.cert_info(c) for c in pki.load_pem_chain(secret.ca_bundle_pem)]
            except (IdentityError, ValueError):
                out[name] = _Bundle(0, None, 0)
                continue
            first = min(infos, key=lambda i: i.not_after)
            out[name] = _Bundle(len(infos), first.not_after, first.lifetime.total_seconds())
    return out


def _trust(name: SecretName | None, bundles: Mapping[SecretName, _Bundle], now: dt.datetime) -> str:
    if name is None:
        return '<span class="muted">-</span>'
    bundle = bundles.get(name)
    if bundle is None:
        return f'<code>{e(name)}</code> <span class="bad">not received yet</span>'
    if not bundle.roots:
        return f'<code>{e(name)}</code> <span class="bad">holds no readable certificate</span>'
    roots = f' <span class="muted">({bundle.roots} roots)</span>' if bundle.roots > 1 else ""
    return (
        f"<code>{e(name)}</code> expires {_expiry(bundle.not_after, now, bundle.lifetime)}{roots}"
    )


def _upstream(
    up: Upstream,
    secrets: Mapping[SecretName, Secret],
    bundles: Mapping[SecretName, _Bundle],
    now: dt.datetime,
) -> str:
    if up.discovery is Discovery.STRICT_DNS and up.dns is not None:
        eps = f"DNS <code>{e(up.dns.host)}:{e(up.dns.port)}</code>"
    else:
        n = len(up.endpoints)
        cls = "bad" if n == 0 else "ok"
        addrs = _list((f"{p.address}:{p.port}" for p in up.endpoints), MAX_ENDPOINTS)
        eps = f'<span class="{cls}">{n}</span> {addrs if n else ""}'
    rows = [
        ("upstream", f"<code>{e(up.key.namespace)}/{e(up.key.service)}:{e(up.key.port)}</code>"),
        ("endpoints", eps),
        ("protocol", e(up.protocol.value)),
    ]
    tls = up.tls
    if tls is None:
        rows.append(("TLS", '<span class="muted">plaintext</span>'))
    else:
        rows += [
            ("SNI", _list([tls.sni] if tls.sni else [])),
            ("verify SAN", _list(f"{s.kind}:{s.value}" for s in tls.verify_sans)),
            ("ALPN", _list(tls.alpn)),
            ("TLS versions", e(f"{tls.min_version} to {tls.max_version}")),
            ("identity", _identity(tls.client_identity, secrets, now)),
            ("trust bundle", _trust(tls.trust_bundle, bundles, now)),
        ]
    return '<div class="up">' + _kv(rows) + "</div>"


def _service(
    res: ServiceResolution,
    secrets: Mapping[SecretName, Secret],
    bundles: Mapping[SecretName, _Bundle],
    now: dt.datetime,
) -> str:
    name = f"{res.ref.namespace}/{res.ref.name}"
    worst = _worst(res.diagnostics)
    errors = sum(d.severity is Severity.ERROR for d in res.diagnostics)
    warnings = sum(d.severity is Severity.WARNING for d in res.diagnostics)
    badges = []
    if res.routes:
        badges.append('<span class="badge ok">routed</span>')
    elif errors:
        badges.append('<span class="badge bad">left out</span>')
    else:
        badges.append('<span class="badge">not exposed</span>')
    if res.mesh is not None:
        badges.append(f'<span class="badge mesh">mesh {e(res.mesh.value)}</span>')
    if errors:
        badges.append(f'<span class="badge bad">{errors} error(s)</span>')
    if warnings:
        badges.append(f'<span class="badge warn">{warnings} warning(s)</span>')
    cls = worst or ("" if res.routes else "off")
    mesh = e(res.mesh.value) if res.mesh else '<span class="muted">-</span>'
    if res.mesh_reason:
        mesh += f' <span class="muted">({e(res.mesh_reason)})</span>'
    routes = [
        f"<code>{e(r.host)}{e(r.prefix)}</code> → <code>{e(r.upstream.port)}</code>"
        + (f" rewrite <code>{e(r.rewrite)}</code>" if r.rewrite else "")
        + f' <span class="muted">timeout {r.timeout_ms / 1000:g}s</span>'
        for r in res.routes
    ]
    head = _kv(
        [
            ("routes", "<br>".join(routes) or '<span class="muted">none</span>'),
            ("resolver", e(res.resolver.value) if res.resolver else '<span class="muted">-</span>'),
            ("mesh (why)", mesh),
        ]
    )
    ups = "".join(_upstream(u, secrets, bundles, now) for u in res.upstreams)
    anchor = f"svc-{res.ref.namespace}-{res.ref.name}"
    return (
        f'<section class="svc {e(cls)}" id="{e(anchor)}" data-service="{e(name)}">'
        f"<h3>{e(name)} {''.join(badges)}</h3>{head}{ups}{_diag_items(res.diagnostics)}</section>"
    )


def _stat(value: object, label: str, cls: str = "") -> str:
    return f'<div class="stat {e(cls)}"><b>{e(value)}</b><span>{e(label)}</span></div>'


def _envoys(app: Bridge, now: float) -> str:
    streams = app.ads.status()
    if not streams:
        return '<p class="muted">No Envoy is connected.</p>'
    snap = app.publisher.snapshot
    rows = []
    for s in streams:
        versions = []
        for t in s.types:
            current = snap.version(t.type_url) if snap is not None else ""
            if not t.acked_version:
                state = '<span class="warn">not ACKed yet</span>'
            elif t.acked_version == current:
                state = '<span class="ok">current</span>'
            else:
                state = '<span class="warn">behind</span>'
            nacks = f' <span class="bad">{t.nacks} NACK(s)</span>' if t.nacks else ""
            versions.append(
                f"{e(type_name(t.type_url))} <code>{e(t.acked_version or '-')}</code> "
                f"{state}{nacks}"
            )
        nack = '<span class="muted">none</span>'
        if s.last_nack is not None:
            nack = (
                f'<span class="bad">{e(type_name(s.last_nack.type_url))}, '
                f"{e(_ago(now - s.last_nack.at))} ago: {e(s.last_nack.message)}</span>"
            )
        secrets = '<span class="ok">yes</span>' if s.secrets else '<span class="warn">no</span>'
        rows.append(
            f"<tr><td><b>{e(s.node_id)}</b><br><span class='muted'>{e(s.mode)}, group "
            f"{e(s.group)}</span></td><td class='mono'>{e(s.peer)}</td>"
            f"<td>{e(_ago(now - s.connected_since))}</td><td>{secrets}</td>"
            f"<td>{'<br>'.join(versions) or '-'}</td>"
            f"<td>{e(s.responses)} / {e(s.bytes_sent)} B</td><td>{nack}</td></tr>"
        )
    return (
        "<table><tr><th>node</th><th>peer</th><th>connected</th><th>secrets</th>"
        "<th>ACKed versions</th><th>responses / sent</th><th>last NACK</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _identities(app: Bridge, bundles: Mapping[SecretName, _Bundle], now: dt.datetime) -> str:
    statuses = app.identities()
    secrets = app.pipeline.world.mesh_secrets if app.pipeline.world is not None else {}
    rows = []
    trusts: set[SecretName] = set()
    for st in statuses:
        health = (
            '<span class="ok">healthy</span>'
            if st.healthy
            else '<span class="bad">unhealthy</span>'
        )
        renew = st.next_renewal.strftime("%Y-%m-%d %H:%M:%SZ") if st.next_renewal else "-"
        err = f'<span class="bad">{e(st.last_error)}</span>' if st.last_error else ""
        trust = SecretName(f"trust/{st.mesh.value}")
        trusts.add(trust)
        rows.append(
            f"<tr><td><b>{e(st.mesh.value)}</b><br><span class='muted'>{e(st.source)}</span></td>"
            f"<td><code>{e(st.identity or '-')}</code></td><td>{_expiry(st.not_after, now)}</td>"
            f"<td>{e(renew)}</td><td>{_trust(trust, bundles, now)}</td>"
            f"<td>{health} {err}{_diag_items(st.diagnostics)}</td></tr>"
        )
    shown = {f"identity/{st.mesh.value}" for st in statuses}
    for name, secret in sorted(secrets.items()):
        if isinstance(secret, IdentitySecret) and name not in shown:
            when = _parse_time(secret.not_after) if secret.not_after else None
            trust = SecretName("trust/" + name.split("/", 1)[-1])
            trusts.add(trust)
            rows.append(
                f"<tr><td><b>{e(name)}</b></td><td>-</td><td>{_expiry(when, now)}</td>"
                f"<td>-</td><td>{_trust(trust, bundles, now)}</td><td></td></tr>"
            )
    for name, secret in sorted(secrets.items()):
        if isinstance(secret, TrustSecret) and name not in trusts:
            rows.append(
                f"<tr><td><b>{e(name)}</b></td><td>-</td><td>-</td><td>-</td>"
                f"<td>{_trust(name, bundles, now)}</td><td></td></tr>"
            )
    if not rows:
        return '<p class="muted">No mesh identity is configured.</p>'
    return (
        "<table><tr><th>mesh</th><th>identity</th><th>expires</th><th>next renewal</th>"
        "<th>trust bundle</th><th>status</th></tr>" + "".join(rows) + "</table>"
    )


def _sources(app: Bridge) -> str:
    events: dict[str, list[str]] = {}
    for (source, op), n in sorted(app.store.event_counts().items()):
        events.setdefault(source, []).append(f"{op} {n}")
    rows = []
    for name, ok in sorted(app.store.sync_state().items()):
        state = (
            '<span class="ok">synced</span>'
            if ok
            else '<span class="warn">waiting for initial sync</span>'
        )
        rows.append(
            f"<tr><td><b>{e(name)}</b></td><td>{state}</td>"
            f"<td>{e(', '.join(events.get(name, [])) or '-')}</td></tr>"
        )
    for name in sorted(set(events) - set(app.store.sync_state())):
        rows.append(
            f"<tr><td><b>{e(name)}</b></td><td>-</td><td>{e(', '.join(events[name]))}</td></tr>"
        )
    return (
        "<table><tr><th>source</th><th>state</th><th>events</th></tr>" + "".join(rows) + "</table>"
    )


def _builds(app: Bridge) -> str:
    builds = list(app.pipeline.builds)[-MAX_BUILDS:][::-1]
    if not builds:
        return '<p class="muted">No build yet.</p>'
    rows = []
    for b in builds:
        result = (
            '<span class="ok">ok</span>'
            if b.ok
            else f'<span class="bad">failed: {e(b.error)}</span>'
        )
        rows.append(
            f"<tr><td>{b.world_version}</td><td>{b.changed}</td><td>{b.resolve_ms:.2f}</td>"
            f"<td>{b.translate_ms:.2f}</td><td>{b.publish_ms:.2f}</td><td><b>{b.total_ms:.2f}</b></td>"
            f"<td>{result}</td></tr>"
        )
    return (
        "<table><tr><th>world version</th><th>changed</th><th>resolve ms</th><th>translate ms</th>"
        "<th>publish ms</th><th>total ms</th><th>result</th></tr>" + "".join(rows) + "</table>"
    )


def _snapshot(app: Bridge) -> str:
    snap = app.publisher.snapshot
    if snap is None:
        return '<p class="muted">Nothing published yet.</p>'
    order = [t for t in PUSH_ORDER if t in snap.types] + sorted(set(snap.types) - set(PUSH_ORDER))
    rows = "".join(
        f"<tr><td>{e(type_name(t))}</td><td>{len(snap.entries(t))}</td>"
        f"<td><code>{e(snap.version(t))}</code></td>"
        f"<td><a href='{e(SnapshotQuery(type=type_name(t) + 's').link())}'>as JSON</a></td></tr>"
        for t in order
        if type_name(t) + "s" in TYPE_PARAMS
    )
    return (
        "<table><tr><th>type</th><th>resources</th><th>version</th><th>every resource</th></tr>"
        + rows
        + f"</table><p><a href='{SNAPSHOT_PATH}'>snapshot.json</a> "
        '<span class="muted">(versions and names; add <code>?type=</code> or '
        "<code>?name=&lt;substring&gt;</code> for resources in full; secrets as names, "
        "certificate summaries and fingerprints only)</span></p>"
    )


def _haystack(res: ServiceResolution) -> str:
    """The text a search matches against: name, routes, resolver and mesh."""
    parts = [f"{res.ref.namespace}/{res.ref.name}"]
    parts += [f"{r.host}{r.prefix}" for r in res.routes]
    if res.resolver is not None:
        parts.append(res.resolver.value)
    if res.mesh is not None:
        parts.append(f"mesh {res.mesh.value}")
    return " ".join(parts).lower()


def matches(res: ServiceResolution, query: str) -> bool:
    """Whether every word of ``query`` is in the Service's name, routes, resolver or mesh."""
    hay = _haystack(res)
    return all(word in hay for word in query.lower().split())


def _search(query: str, shown: int, matched: int, total: int) -> str:
    box = (
        "<form class='search' method='get' action='/debug#services' role='search'>"
        f"<input id='filter' name='q' type='search' value='{e(query)}' "
        "placeholder='search every Service: name, namespace/, /prefix, mesh…' "
        "aria-label='search Services'> <button type='submit'>search</button>"
    )
    if query:
        box += " <a href='/debug#services'>clear</a>"
        note = f"{matched} of {total} Services match <code>{e(query)}</code>"
    else:
        note = f"{total} Services"
    if shown < matched:
        note += f"; showing the first {shown}, problems first — narrow the search to see the rest"
    return box + f" <span class='muted' id='search-note'>{note}</span></form>"


def page(app: Bridge, now: float | None = None, query: str = "") -> bytes:
    """The ``/debug`` page, UTF-8 encoded; ``query`` searches the Services (every one)."""
    query = query.strip()
    now_s = time.time() if now is None else now
    now_dt = dt.datetime.fromtimestamp(now_s, dt.UTC)
    ready, why = app.readiness()
    resolved = app.pipeline.resolved
    world = app.pipeline.world
    services = (
        [
            res
            for ref, res in sorted(resolved.services.items())
            if ref.kind is Kind.SERVICE and (res.exposed or res.diagnostics)
        ]
        if resolved is not None
        else []
    )
    # Problems first, then the rest in name order.
    rank = {"error": 0, "warning": 1, "": 2}
    services.sort(key=lambda r: rank[_worst(r.diagnostics)])
    total = len(services)
    in_services = {d for r in services for d in r.diagnostics}
    if query:
        services = [r for r in services if matches(r, query)]
    secrets: Mapping[SecretName, Secret] = resolved.ir.secrets if resolved is not None else {}
    bundles = _bundles(secrets, world.mesh_secrets if world is not None else {})
    other = sorted(
        d for d in app.diagnostics() if d not in in_services and d.ref.kind is not Kind.SERVICE
    )
    all_diags = app.diagnostics()
    n_err = sum(d.severity is Severity.ERROR for d in all_diags)
    n_warn = sum(d.severity is Severity.WARNING for d in all_diags)
    streams = app.ads.status()
    nacking = sum(1 for s in streams if any(t.nacks for t in s.types))
    last_error = app.pipeline.last_error

    out: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>meshbridge /debug — {'ready' if ready else 'NOT READY'}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header><h1>meshbridge</h1>",
        f"<span class='badge {'ok' if ready else 'bad'}'>"
        f"{'ready' if ready else 'not ready'}</span>",
        f"<span class='meta'>{e(why)}</span>",
        f"<span class='meta'>version {e(bridge.__version__)} · up {e(_ago(now_s - app.started_at))}"
        f" · world {e(world.version if world else '-')} · rendered "
        f"{e(now_dt.strftime('%Y-%m-%d %H:%M:%SZ'))}</span>",
        "<nav><a href='#envoys'>Envoys</a><a href='#services'>Services</a>"
        "<a href='#identities'>Identities</a><a href='#sources'>Sources</a>"
        "<a href='#builds'>Builds</a><a href='#snapshot'>Snapshot</a>"
        "<a href='/metrics'>metrics</a></nav></header><main>",
    ]
    out.append("<div class='cards'>")
    out.append(_stat(total, "Services exposed or with problems"))
    out.append(_stat(n_err, "errors", "bad" if n_err else ""))
    out.append(_stat(n_warn, "warnings", "warn" if n_warn else ""))
    out.append(_stat(len({s.node_id for s in streams}), "Envoys connected"))
    out.append(_stat(nacking, "Envoys with NACKs", "bad" if nacking else ""))
    out.append(_stat(app.pipeline.published, "snapshots published"))
    out.append("</div>")
    if last_error is not None:
        out.append(
            f"<div class='alert'><b>The last build failed</b> in {e(last_error.stage)} (world "
            f"version {e(last_error.world_version)}); the last good snapshot stays live."
            f"<pre>{e(last_error.message)}</pre></div>"
        )

    out.append("<h2 id='envoys'>Envoys</h2>")
    out.append(_envoys(app, now_s))
    out.append("<h2 id='services'>Services</h2>")
    shown = services[:MAX_SERVICES]
    out.append(_search(query, len(shown), len(services), total))
    if not total:
        out.append(
            "<p class='muted'>No exposed Service yet: annotate one with "
            "<code>meshbridge.io/prefix</code>.</p>"
        )
    elif not services:
        out.append(f"<p class='muted'>No Service matches <code>{e(query)}</code>.</p>")
    for res in shown:
        out.append(_service(res, secrets, bundles, now_dt))
    if len(services) > MAX_SERVICES:
        out.append(
            f"<p class='muted'>{len(services) - MAX_SERVICES} more matching Services are not "
            "shown: search above to find any one (<code>meshbridge resolve</code> lists every "
            "one too).</p>"
        )
    if other:
        out.append("<h2 id='problems'>Other problems</h2>")
        out.append(_diag_items(other, with_ref=True))
    out.append("<h2 id='identities'>Mesh identities</h2>")
    out.append(_identities(app, bundles, now_dt))
    out.append("<h2 id='sources'>Sources</h2>")
    out.append(_sources(app))
    out.append("<h2 id='builds'>Builds</h2>")
    out.append(_builds(app))
    out.append("<h2 id='snapshot'>Snapshot</h2>")
    out.append(_snapshot(app))
    out.append("</main></body></html>")
    return "".join(out).encode()


# -- snapshot.json ------------------------------------------------------------------


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return b""


def _data_source_bytes(ds: Any) -> bytes:
    """The bytes of an Envoy DataSource in json_format form (inline only)."""
    if not isinstance(ds, dict):
        return b""
    if "inlineString" in ds:
        return str(ds["inlineString"]).encode()
    if "inlineBytes" in ds:
        return _b64(str(ds["inlineBytes"]))
    return b""


def _certs(ds: Any) -> Any:
    """A certificate DataSource as summaries of its certificates."""
    if isinstance(ds, dict) and "filename" in ds:
        return {"filename": ds["filename"]}
    data = _data_source_bytes(ds)
    try:
        certs = pki.load_pem_chain(data)
    except (IdentityError, ValueError):
        return {"certificates": [], "note": "no PEM certificate could be read"}
    out = []
    for cert in certs:
        info = pki.cert_info(cert)
        out.append(
            {
                "subject": info.subject,
                "issuer": info.issuer,
                "not_before": pki.rfc3339(info.not_before),
                "not_after": pki.rfc3339(info.not_after),
                "uri_sans": list(info.uri_sans),
                "dns_sans": list(info.dns_sans),
                "is_ca": info.is_ca,
                "sha256": info.sha256,
            }
        )
    return {"certificates": out}


def _redacted(value: Any) -> dict[str, Any]:
    data = _data_source_bytes(value)
    out: dict[str, Any] = {"redacted": True}
    if data:
        out["sha256"] = hashlib.sha256(data).hexdigest()[:12]
    return out


def redact(value: Any) -> Any:
    """``value`` (json_format output) with key material removed, certificates summarized."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _SECRET_FIELDS:
                out[k] = _redacted(v)
            elif k in _CERT_FIELDS:
                out[k] = _certs(v)
            else:
                out[k] = redact(v)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _resource(message: Any) -> Any:
    try:
        doc = json_format.MessageToDict(message)
    except (TypeError, KeyError, json_format.Error) as exc:
        return {"error": f"cannot render as JSON: {type(exc).__name__}"}
    # Every type goes through redact(): a Secret's key is the obvious case, but an
    # inline key could sit in any transport socket.
    return redact(doc)


def _secret_sources(secrets: Mapping[SecretName, Secret]) -> Iterator[dict[str, Any]]:
    for name, secret in sorted(secrets.items()):
        if isinstance(secret, IdentitySecret):
            yield {
                "name": name,
                "kind": "identity",
                "not_after": secret.not_after,
                "private_key": {"redacted": True, "sha256": secret.private_key.fingerprint()},
            }
        elif isinstance(secret, TrustSecret):
            yield {"name": name, "kind": "trust bundle", "trust_domain": secret.trust_domain}


# The ``type`` values ``/debug/snapshot.json`` takes: ``clusters`` -> the Cluster type URL, ...
TYPE_PARAMS: Mapping[str, str] = {type_name(t) + "s": t for t in PUSH_ORDER}
SNAPSHOT_PATH = "/debug/snapshot.json"


@dataclass(frozen=True, slots=True)
class SnapshotQuery:
    """What ``/debug/snapshot.json`` is asked for: a type, a name substring, or neither."""

    type: str = ""  # a key of TYPE_PARAMS; "" = every type
    name: str = ""  # resources whose name contains this; "" = any

    @property
    def filtered(self) -> bool:
        """Whether resources are rendered in full (else versions and names only)."""
        return bool(self.type or self.name)

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> SnapshotQuery:
        """From query parameters; :class:`ValueError` says what is wrong and what works."""
        unknown = sorted(set(query) - {"type", "name"})
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)}: "
                f"{SNAPSHOT_PATH} takes type=<{'|'.join(TYPE_PARAMS)}> and name=<substring>"
            )
        kind = query.get("type", "").strip().lower()
        if kind and kind not in TYPE_PARAMS and kind + "s" in TYPE_PARAMS:
            kind += "s"  # the singular works too
        if kind and kind not in TYPE_PARAMS:
            raise ValueError(f"type={kind!r} is not one of {', '.join(TYPE_PARAMS)}")
        return cls(kind, query.get("name", ""))

    def link(self) -> str:
        params = {k: v for k, v in (("type", self.type), ("name", self.name)) if v}
        return SNAPSHOT_PATH + ("?" + urllib.parse.urlencode(params, safe="/") if params else "")


def _snapshot_doc(
    snap: Snapshot | None, world: World | None, published: int, query: SnapshotQuery
) -> dict[str, Any]:
    mesh_secrets = list(_secret_sources(world.mesh_secrets)) if world is not None else []
    doc: dict[str, Any] = {
        "world_version": world.version if world is not None else None,
        "snapshots_published": published,
    }
    if query.filtered:
        doc["query"] = {"type": query.type or None, "name": query.name or None}
    doc["versions"] = {}
    doc["counts"] = {}
    types: list[str] = []
    if snap is not None:
        types = [t for t in PUSH_ORDER if t in snap.types] + sorted(
            set(snap.types) - set(PUSH_ORDER)
        )
    for type_url in types:
        doc["versions"][type_name(type_url)] = snap.version(type_url) if snap else ""
        doc["counts"][type_name(type_url)] = len(snap.entries(type_url)) if snap else 0
    if not query.filtered:
        # The cheap form: at 10k Services every resource in full is ~28 MiB and
        # seconds of json_format, so it is asked for by type or name instead.
        doc["names"] = {type_name(t): sorted(snap.entries(t)) if snap else [] for t in types}
        doc["links"] = {
            **{p: SnapshotQuery(type=p).link() for p in TYPE_PARAMS},
            "by_name": SNAPSHOT_PATH + "?name=<substring>",
            "by_type_and_name": SNAPSHOT_PATH + "?type=clusters&name=<substring>",
        }
        doc["mesh_secrets"] = mesh_secrets
        return doc
    wanted = [TYPE_PARAMS[query.type]] if query.type else types
    doc["resources"] = {}
    for type_url in wanted:
        entries = snap.entries(type_url) if snap is not None else {}
        doc["resources"][type_name(type_url)] = [
            {"name": entry.name, "version": entry.version, "resource": _resource(entry.message)}
            for name, entry in sorted(entries.items())
            if query.name in name
        ]
    if query.type in ("", "secrets"):
        doc["mesh_secrets"] = [s for s in mesh_secrets if query.name in s["name"]]
    return doc


class SnapshotJson:
    """``/debug/snapshot.json``, rendered once per snapshot and query.

    The rendered bytes are kept while the snapshot (and World) they show is
    current: at most ``max_pages`` queries and ``max_bytes`` in all, the
    least recently asked dropped first. Safe to call from worker threads.
    """

    def __init__(self, max_pages: int = 16, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.renders = 0  # how many times a page was rendered rather than reused
        self._lock = threading.Lock()
        self._state: tuple[int | None, int | None, int] | None = None
        self._pages: collections.OrderedDict[SnapshotQuery, bytes] = collections.OrderedDict()

    def render(self, app: Bridge, query: SnapshotQuery = SnapshotQuery()) -> bytes:
        # Read each reference once: this may run in a worker thread while the loop
        # publishes (the objects themselves are immutable).
        snap = app.publisher.snapshot
        world = app.pipeline.world
        published = app.pipeline.published
        state = (
            snap.serial if snap is not None else None,
            world.version if world is not None else None,
            published,
        )
        with self._lock:
            if state != self._state:
                self._pages.clear()
                self._state = state
            body = self._pages.get(query)
            if body is not None:
                self._pages.move_to_end(query)
                return body
        doc = _snapshot_doc(snap, world, published, query)
        body = (json.dumps(doc, indent=1) + "\n").encode()
        with self._lock:
            self.renders += 1
            if self._state == state and len(body) <= self.max_bytes:
                self._pages[query] = body
                while (
                    len(self._pages) > self.max_pages
                    or sum(map(len, self._pages.values())) > self.max_bytes
                ):
                    self._pages.popitem(last=False)
        return body


def snapshot_json(app: Bridge, query: SnapshotQuery = SnapshotQuery()) -> bytes:
    """``/debug/snapshot.json`` rendered now (no cache), key material redacted."""
    snap = app.publisher.snapshot
    world = app.pipeline.world
    doc = _snapshot_doc(snap, world, app.pipeline.published, query)
    return (json.dumps(doc, indent=1) + "\n").encode()
