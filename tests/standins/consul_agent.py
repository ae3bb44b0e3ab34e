"""A protocol-faithful Consul agent stand-in over HTTP on 127.0.0.1, for tests.

Real clients (py-consul, raw HTTP) talk to it over a socket. It keeps a small
catalog (nodes, services, checks), a Connect CA made with ``cryptography``
(roots and leaves with SPIFFE URI SANs), intentions, and Consul's quirks that
clients must survive:

- blocking queries: ``?index=N&wait=Xs`` blocks until the relevant table's
  index exceeds N or the wait (plus up to wait/16 jitter) passes; ANY change
  in the table wakes every query on it, so an answer does not mean a change;
  ``X-Consul-Index`` is never below 1;
- a snapshot restore (:meth:`ConsulAgent.restore_snapshot`) makes the index go
  backwards and wakes every blocked query at once, as Consul's abandoned state
  store does;
- ACLs: ``X-Consul-Token`` is checked when enabled (403 otherwise); a
  ``?token=`` parameter is recorded in :attr:`ConsulAgent.token_params` so
  tests can assert clients never put a token in a URL;
- CE mode answers 400 to ``ns``/``partition`` parameters; Enterprise accepts them;
- intentions: ``/v1/connect/intentions/check`` (not blocking, as in Consul)
  and ``/v1/connect/intentions/match`` (blocking on the intentions table);
  writing :attr:`ConsulAgent.intentions` is a change in that table;
- ``PUT /v1/txn``: at most 128 operations (413 beyond), Node/Service/Check
  verbs, all-or-nothing (409 with ``Errors`` when an operation fails);
- :meth:`ConsulAgent.go_down` / :meth:`ConsulAgent.come_up` close and reopen
  the listening socket (connection refused in between; state is kept);
- a request log (:attr:`ConsulAgent.requests`) with token values masked.

It runs in the test's own event loop (aiohttp). It does not implement
Consul's gossip, anti-entropy, sessions, KV, or prepared queries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAX_TXN_OPS = 128
_PASSING = "passing"
_TABLES = ("catalog", "roots", "intentions")


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # X-Consul-Token value replaced by "<set>"
    status: int = 0
    ops: int = 0  # operations in a /v1/txn body


def parse_duration(text: str) -> float:
    """Go duration (``10s``, ``500ms``, ``1m30s``) in seconds; bare numbers are seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total = 0.0
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(text)
    return total


# -- Connect CA -----------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Root:
    id: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    active: bool = True

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(slots=True)
class _Leaf:
    service: str
    cert_pem: str
    key_pem: str
    serial: str
    valid_after: dt.datetime
    valid_before: dt.datetime
    index: int


def _make_root(trust_domain: str, n: int) -> _Root:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Consul CA {n}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    fp = cert.fingerprint(hashes.SHA1()).hex()
    return _Root(id=":".join(fp[i : i + 2] for i in range(0, len(fp), 2)), cert=cert, key=key)


def _sign_leaf(root: _Root, uri: str, service: str, ttl: dt.timedelta, index: int) -> _Leaf:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.CLIENT_AUTH, x509.ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    hexs = f"{serial:x}"
    return _Leaf(
        service=service,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key_pem,
        serial=":".join(hexs[i : i + 2] for i in range(0, len(hexs), 2)),
        valid_after=now - dt.timedelta(minutes=1),
        valid_before=now + ttl,
        index=index,
    )


# -- the agent --------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    checks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def copy(self) -> _State:
        # Shallow: writes replace entries, never edit one in place.
        return _State(dict(self.nodes), dict(self.services), dict(self.checks))


class _TxnError(Exception):
    pass


class _Intentions(dict[tuple[str, str], str]):
    """(source, destination) -> allow|deny; every write is a change in the intentions table.

    A plain ``agent.intentions[(src, dst)] = "deny"`` in a test is a write as
    Consul's would be: it bumps the table's index (waking blocking queries
    on ``/v1/connect/intentions/match``) and the intention's ``ModifyIndex``.
    """

    def __init__(self, bump: Callable[[], int]) -> None:
        super().__init__()
        self._bump = bump
        self.indexes: dict[tuple[str, str], tuple[int, int]] = {}  # (Create, Modify)

    def __setitem__(self, key: tuple[str, str], action: str) -> None:
        if action not in ("allow", "deny"):
            raise ValueError(f"intention action must be allow or deny, not {action!r}")
        super().__setitem__(key, action)
        index = self._bump()
        created = self.indexes.get(key, (index, index))[0]
        self.indexes[key] = (created, index)

    def __delitem__(self, key: tuple[str, str]) -> None:
        super().__delitem__(key)
        self.indexes.pop(key, None)
        self._bump()

    def pop(self, key: tuple[str, str], *default: str) -> str:  # type: ignore[override]
        if key not in self:
            return dict.pop(self, key, *default)
        action = self[key]
        del self[key]
        return action


class ConsulAgent:
    """The stand-in. ``async with ConsulAgent() as agent:`` starts it on a free port."""

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        node_name: str = "agent-1",
        enterprise: bool = False,
        acl_tokens: Iterable[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        jitter: Callable[[float], float] | None = None,
        leaf_ttl: dt.timedelta = dt.timedelta(hours=72),
    ) -> None:
        self.datacenter = datacenter
        self.node_name = node_name
        self.enterprise = enterprise
        # None = ACLs disabled; else the set of accepted tokens (all with full rights).
        self.acl_tokens: set[str] | None = set(acl_tokens) if acl_tokens is not None else None
        self.ssl_context = ssl_context
        # Extra seconds a blocking query waits beyond ``wait``; Consul adds up to wait/16.
        self.jitter: Callable[[float], float] = jitter or (lambda w: random.uniform(0, w / 16))
        self.leaf_ttl = leaf_ttl
        self.trust_domain = f"{uuid.uuid4()}.consul"
        self.requests: list[LoggedRequest] = []
        self.token_params: list[str] = []  # paths where a ?token= parameter was sent
        # (source, destination) -> allow|deny; writes bump the intentions table.
        self.intentions = _Intentions(lambda: self._bump("intentions"))
        self.intention_default_allow = True
        # False: /v1/connect/intentions/match answers 404, as a Consul without it would.
        self.intention_match_supported = True
        # Every (node, service ID) ever removed, by any write: "not even briefly" checks.
        self.removed: list[tuple[str, str]] = []
        self.txn_delay = 0.0  # seconds each /v1/txn takes (to cut a sync in the middle)
        self.port = 0
        self._state = _State()
        self._index = 1
        self._table_index: dict[str, int] = dict.fromkeys(_TABLES, 1)
        self._leaf_index: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._abandon = asyncio.Event()
        self._roots: list[_Root] = [_make_root(self.trust_domain, 1)]
        self._leaves: dict[str, _Leaf] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> ConsulAgent:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await self._site.start()
        if not self.port:
            server = self._site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        self._abandon.set()  # release blocked queries so shutdown is prompt
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        self._abandon = asyncio.Event()

    async def go_down(self) -> None:
        """Close the socket: clients get connection refused until :meth:`come_up`."""
        await self.stop()

    async def come_up(self) -> None:
        await self.start()

    async def __aenter__(self) -> ConsulAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls ---------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def _bump(self, *tables: str) -> int:
        self._index += 1
        for t in tables:
            self._table_index[t] = self._index
        old, self._changed = self._changed, asyncio.Event()
        old.set()
        return self._index

    def restore_snapshot(self, index: int = 2) -> None:
        """Make every index go back to ``index`` (as after a snapshot restore); wake queries."""
        self._index = index
        for t in _TABLES:
            self._table_index[t] = index
        for s in self._leaf_index:
            self._leaf_index[s] = index
        old, self._abandon = self._abandon, asyncio.Event()
        old.set()
        self._bump()
        self._index = index  # the wake-up above must not move the index forward

    def touch_catalog(self) -> None:
        """A change in the catalog table that changes nothing a query returns."""
        self._bump("catalog")

    def register(
        self,
        node: str,
        address: str,
        service: str,
        port: int,
        *,
        service_id: str | None = None,
        service_address: str = "",
        tags: Iterable[str] = (),
        meta: dict[str, str] | None = None,
        status: str = _PASSING,
        kind: str = "",
        destination: str = "",
        namespace: str = "default",
        node_meta: dict[str, str] | None = None,
    ) -> str:
        """Register one instance (with one check of ``status``) as a real agent would."""
        sid = service_id or f"{service}-{address}-{port}"
        self._state.nodes.setdefault(
            node, {"Node": node, "Address": address, "Meta": dict(node_meta or {})}
        )
        svc: dict[str, Any] = {
            "ID": sid,
            "Service": service,
            "Tags": list(tags),
            "Address": service_address,
            "Port": port,
            "Meta": dict(meta or {}),
            "Kind": kind,
            "Namespace": namespace,
        }
        if kind == "connect-proxy":
            svc["Proxy"] = {"DestinationServiceName": destination}
        self._state.services[(node, sid)] = svc
        self._state.checks[(node, f"service:{sid}")] = {
            "Node": node,
            "CheckID": f"service:{sid}",
            "Name": f"Service '{service}' check",
            "Status": status,
            "ServiceID": sid,
            "ServiceName": service,
            "Type": "tcp",
        }
        self._bump("catalog")
        return sid

    def set_check_status(self, node: str, service_id: str, status: str) -> None:
        for k, chk in list(self._state.checks.items()):
            if k[0] == node and chk.get("ServiceID") == service_id:
                self._state.checks[k] = {**chk, "Status": status}
        self._bump("catalog")

    def deregister(self, node: str, service_id: str | None = None) -> None:
        new = self._state.copy()
        self._delete(new, node, service_id)
        self._commit(new)

    def services_on(self, node: str) -> dict[str, dict[str, Any]]:
        """What ``node`` holds, by service ID (copies)."""
        return {
            sid: json.loads(json.dumps(s))
            for (n, sid), s in self._state.services.items()
            if n == node
        }

    def checks_on(self, node: str) -> dict[str, dict[str, Any]]:
        return {
            cid: json.loads(json.dumps(c))
            for (n, cid), c in self._state.checks.items()
            if n == node
        }

    def rotate_leaf(self, service: str) -> None:
        """Issue a new leaf for ``service``; blocked leaf queries return it."""
        if service in self._leaves:
            self._issue_leaf(service)

    def rotate_roots(self) -> None:
        """A new active root; the old one stays listed (inactive); leaves are re-issued."""
        for r in self._roots:
            r.active = False
        self._roots.append(_make_root(self.trust_domain, len(self._roots) + 1))
        self._bump("roots")
        for svc in list(self._leaves):
            self._issue_leaf(svc)

    @property
    def active_root_pem(self) -> str:
        return next(r.pem for r in self._roots if r.active)

    def spiffe_id(self, service: str, namespace: str = "default") -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace}/dc/{self.datacenter}/svc/{service}"

    def leaf_pem(self, service: str) -> str | None:
        leaf = self._leaves.get(service)
        return leaf.cert_pem if leaf else None

    def issue_cert(self, service: str) -> tuple[str, str]:
        """A leaf (cert PEM, key PEM) for a test backend's own sidecar (not via HTTP)."""
        leaf = _sign_leaf(
            next(r for r in self._roots if r.active),
            self.spiffe_id(service),
            service,
            self.leaf_ttl,
            self._index,
        )
        return leaf.cert_pem, leaf.key_pem

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(path_prefix)
        )

    # -- HTTP ------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        headers = {
            k: ("<set>" if k.lower() == "x-consul-token" else v) for k, v in request.headers.items()
        }
        query = dict(request.query)
        if "token" in query:
            self.token_params.append(request.path)
            query["token"] = "<set>"
        ops = 0
        if request.path == "/v1/txn" and request.can_read_body:
            try:
                body = json.loads(await request.read())
                ops = len(body) if isinstance(body, list) else 0
            except ValueError:
                ops = 0
        entry_pos = len(self.requests)
        self.requests.append(LoggedRequest(request.method, request.path, query, headers, 0, ops))
        resp: web.StreamResponse
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = exc
        e = self.requests[entry_pos]
        self.requests[entry_pos] = LoggedRequest(
            e.method, e.path, e.query, e.headers, resp.status, e.ops
        )
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    def _error(self, status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text)

    def _check_common(self, request: web.Request) -> web.Response | None:
        if self.acl_tokens is not None:
            token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
            if token not in self.acl_tokens:
                return self._error(403, "Permission denied: token with AccessorID '' lacks rights")
        for p in ("ns", "partition"):
            if p in request.query and not self.enterprise:
                return self._error(
                    400,
                    f'Bad request: Invalid query parameter: "{p}" - '
                    "Namespaces and partitions are a Consul Enterprise feature",
                )
        dc = request.query.get("dc")
        if dc and dc != self.datacenter:
            return self._error(500, f"No path to datacenter {dc!r}")
        return None

    async def _block(self, request: web.Request, current: Callable[[], int]) -> None:
        """Consul's blocking-query wait: until index > N, a restore, or wait + jitter."""
        raw = request.query.get("index")
        if not raw:
            return
        try:
            min_index = int(raw)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"Invalid index {raw!r}") from exc
        if min_index <= 0:
            return  # index 0 never blocks
        try:
            wait = parse_duration(request.query.get("wait", "5m"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text="Invalid wait time") from exc
        wait = min(wait, 600.0)
        wait += self.jitter(wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        abandon = self._abandon
        while current() <= min_index and not abandon.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = asyncio.ensure_future(self._changed.wait())
            abandoned = asyncio.ensure_future(abandon.wait())
            try:
                await asyncio.wait(
                    {changed, abandoned}, timeout=remaining, return_when="FIRST_COMPLETED"
                )
            finally:
                changed.cancel()
                abandoned.cancel()
                await asyncio.gather(changed, abandoned, return_exceptions=True)

    def _json(self, data: Any, index: int | None = None, status: int = 200) -> web.Response:
        headers = {}
        if index is not None:
            headers["X-Consul-Index"] = str(max(index, 1))
            headers["X-Consul-KnownLeader"] = "true"
            headers["X-Consul-LastContact"] = "0"
        return web.json_response(data, status=status, headers=headers)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        err = self._check_common(request)
        if err is not None:
            return err
        path = request.path
        m = request.method
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", r"/v1/agent/self", self._agent_self),
            ("GET", r"/v1/status/leader", self._status_leader),
            ("PUT", r"/v1/catalog/register", self._catalog_register),
            ("PUT", r"/v1/catalog/deregister", self._catalog_deregister),
            ("GET", r"/v1/catalog/services", self._catalog_services),
            ("GET", r"/v1/catalog/service/(?P<name>[^/]+)", self._catalog_service),
            ("GET", r"/v1/catalog/node-services/(?P<node>[^/]+)", self._node_services),
            ("GET", r"/v1/health/service/(?P<name>[^/]+)", self._health_service),
            ("GET", r"/v1/health/connect/(?P<name>[^/]+)", self._health_connect),
            ("GET", r"/v1/health/node/(?P<node>[^/]+)", self._health_node),
            ("GET", r"/v1/agent/connect/ca/roots", self._ca_roots),
            ("GET", r"/v1/agent/connect/ca/leaf/(?P<name>[^/]+)", self._ca_leaf),
            ("GET", r"/v1/connect/intentions/check", self._intention_check),
            ("GET", r"/v1/connect/intentions/match", self._intention_match),
            ("PUT", r"/v1/txn", self._txn),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match:
                if m != method:
                    return self._error(405, f"method {m} not allowed")
                result: web.StreamResponse = await handler(request, **match.groupdict())
                return result
        return self._error(404, f"no such endpoint {path}")

    # -- agent / status ----------------------------------------------------------

    async def _agent_self(self, request: web.Request) -> web.Response:
        return self._json(
            {"Config": {"Datacenter": self.datacenter, "NodeName": self.node_name}, "Member": {}}
        )

    async def _status_leader(self, request: web.Request) -> web.Response:
        return self._json("127.0.0.1:8300")

    # -- catalog reads -------------------------------------------------------------

    def _ns_ok(self, request: web.Request, svc: dict[str, Any]) -> bool:
        if not self.enterprise:
            return True
        return bool(svc.get("Namespace", "default") == request.query.get("ns", "default"))

    async def _catalog_services(self, request: web.Request) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        out: dict[str, list[str]] = {}
        for s in self._state.services.values():
            if self._ns_ok(request, s):
                tags = out.setdefault(s["Service"], [])
                tags.extend(t for t in s["Tags"] if t not in tags)
        return self._json(out, self._table_index["catalog"])

    async def _catalog_service(self, request: web.Request, name: str) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        out = []
        for (node, _), s in sorted(self._state.services.items()):
            if s["Service"] != name or not self._ns_ok(request, s):
                continue
            n = self._state.nodes[node]
            out.append(
                {
                    "Node": node,
                    "Address": n["Address"],
                    "Datacenter": self.datacenter,
                    "NodeMeta": n.get("Meta", {}),
                    "ServiceID": s["ID"],
                    "ServiceName": s["Service"],
                    "ServiceAddress": s["Address"],
                    "ServicePort": s["Port"],
                    "ServiceTags": s["Tags"],
                    "ServiceMeta": s["Meta"],
                    "ServiceKind": s.get("Kind", ""),
                }
            )
        return self._json(out, self._table_index["catalog"])

    async def _node_services(self, request: web.Request, node: str) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        n = self._state.nodes.get(node)
        services = [dict(s) for (nn, _), s in sorted(self._state.services.items()) if nn == node]
        return self._json(
            {"Node": dict(n) if n else None, "Services": services}, self._table_index["catalog"]
        )

    async def _health_node(self, request: web.Request, node: str) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        checks = [dict(c) for (nn, _), c in sorted(self._state.checks.items()) if nn == node]
        return self._json(checks, self._table_index["catalog"])

    def _health_entries(
        self, request: web.Request, pick: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        passing_only = "passing" in request.query and request.query["passing"] not in ("0", "false")
        out = []
        for (node, sid), s in sorted(self._state.services.items()):
            if not pick(s) or not self._ns_ok(request, s):
                continue
            checks = [
                dict(c)
                for (nn, _), c in sorted(self._state.checks.items())
                if nn == node and c.get("ServiceID", "") in ("", sid)
            ]
            if passing_only and any(c["Status"] != _PASSING for c in checks):
                continue
            n = self._state.nodes[node]
            out.append(
                {
                    "Node": {
                        "Node": node,
                        "Address": n["Address"],
                        "Datacenter": self.datacenter,
                        "Meta": n.get("Meta", {}),
                    },
                    "Service": dict(s),
                    "Checks": checks,
                }
            )
        return out

    async def _health_service(self, request: web.Request, name: str) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        entries = self._health_entries(request, lambda s: s["Service"] == name)
        return self._json(entries, self._table_index["catalog"])

    async def _health_connect(self, request: web.Request, name: str) -> web.Response:
        await self._block(request, lambda: self._table_index["catalog"])
        entries = self._health_entries(
            request,
            lambda s: (
                s.get("Kind") == "connect-proxy"
                and s.get("Proxy", {}).get("DestinationServiceName") == name
            ),
        )
        return self._json(entries, self._table_index["catalog"])

    # -- catalog writes --------------------------------------------------------------

    @staticmethod
    def _delete(state: _State, node: str, service_id: str | None) -> None:
        if service_id is None:
            state.nodes.pop(node, None)
            for k in [k for k in state.services if k[0] == node]:
                del state.services[k]
            for k in [k for k in state.checks if k[0] == node]:
                del state.checks[k]
            return
        state.services.pop((node, service_id), None)
        for k in [
            k for k, c in state.checks.items() if k[0] == node and c.get("ServiceID") == service_id
        ]:
            del state.checks[k]

    @staticmethod
    def _set_node(state: _State, body: dict[str, Any]) -> None:
        node = body.get("Node")
        if not node:
            raise _TxnError("Must provide node")
        if not body.get("Address"):
            raise _TxnError("Must provide address")
        state.nodes[node] = {
            "Node": node,
            "Address": body["Address"],
            "Meta": dict(body.get("Meta") or body.get("NodeMeta") or {}),
        }

    @staticmethod
    def _set_service(state: _State, node: str, svc: dict[str, Any]) -> None:
        if node not in state.nodes:
            raise _TxnError(f'failed inserting service: node "{node}" not found')
        if not svc.get("Service"):
            raise _TxnError("Must provide service name")
        sid = svc.get("ID") or svc["Service"]
        stored = {
            "ID": sid,
            "Service": svc["Service"],
            "Tags": list(svc.get("Tags") or []),
            "Address": svc.get("Address", ""),
            "Port": int(svc.get("Port", 0)),
            "Meta": dict(svc.get("Meta") or {}),
            "Kind": svc.get("Kind", ""),
            "Namespace": svc.get("Namespace", "default") or "default",
            "Weights": dict(svc.get("Weights") or {"Passing": 1, "Warning": 1}),
        }
        if svc.get("Proxy"):
            stored["Proxy"] = dict(svc["Proxy"])
        state.services[(node, sid)] = stored

    @staticmethod
    def _set_check(state: _State, chk: dict[str, Any]) -> None:
        node = chk.get("Node", "")
        if node not in state.nodes:
            raise _TxnError(f'failed inserting check: node "{node}" not found')
        sid = chk.get("ServiceID", "")
        if sid and (node, sid) not in state.services:
            raise _TxnError(f'failed inserting check: service "{sid}" not found on node "{node}"')
        cid = chk.get("CheckID") or chk.get("Name")
        if not cid:
            raise _TxnError("Must provide check ID")
        svc = state.services.get((node, sid), {})
        state.checks[(node, cid)] = {
            "Node": node,
            "CheckID": cid,
            "Name": chk.get("Name", cid),
            "Status": chk.get("Status", "critical"),
            "Notes": chk.get("Notes", ""),
            "Output": chk.get("Output", ""),
            "ServiceID": sid,
            "ServiceName": svc.get("Service", ""),
            "Type": chk.get("Type", ""),
        }

    async def _read_json(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"Request decode failed: {exc}") from exc

    async def _catalog_register(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        new = self._state.copy()
        try:
            if body.get("SkipNodeUpdate") and body.get("Node") in new.nodes:
                pass
            else:
                self._set_node(new, {**body, "Meta": body.get("NodeMeta")})
            if body.get("Service"):
                self._set_service(new, body["Node"], body["Service"])
            for chk in ([body["Check"]] if body.get("Check") else []) + list(
                body.get("Checks") or []
            ):
                one = dict(chk)
                one.setdefault("Node", body["Node"])
                if body.get("Service") and not one.get("ServiceID"):
                    one["ServiceID"] = body["Service"].get("ID") or body["Service"]["Service"]
                self._set_check(new, one)
        except _TxnError as exc:
            return self._error(400, str(exc))
        self._commit(new)
        return self._json(True)

    def _commit(self, new: _State) -> None:
        self.removed.extend(sorted(set(self._state.services) - set(new.services)))
        self._state = new
        self._bump("catalog")

    async def _catalog_deregister(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        node = body.get("Node")
        if not node:
            return self._error(400, "Must provide node")
        new = self._state.copy()
        if body.get("CheckID"):
            new.checks.pop((node, body["CheckID"]), None)
        else:
            self._delete(new, node, body.get("ServiceID"))
        self._commit(new)
        return self._json(True)

    async def _txn(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        if not isinstance(body, list):
            return self._error(400, "Failed to parse body: expected a list of operations")
        if len(body) > MAX_TXN_OPS:
            return self._error(
                413,
                f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})",
            )
        if self.txn_delay:
            await asyncio.sleep(self.txn_delay)
        new = self._state.copy()
        errors = []
        results: list[dict[str, Any]] = []
        for i, op in enumerate(body):
            try:
                results.extend(self._txn_op(new, op))
            except _TxnError as exc:
                errors.append({"OpIndex": i, "What": str(exc)})
            except (KeyError, TypeError, AttributeError) as exc:
                return self._error(400, f"Failed to parse operation {i}: {exc!r}")
        if errors:
            return self._json({"Results": None, "Errors": errors}, status=409)
        changed = (new.nodes, new.services, new.checks) != (
            self._state.nodes,
            self._state.services,
            self._state.checks,
        )
        if changed:
            self._commit(new)
        return self._json({"Results": results, "Errors": None}, self._table_index["catalog"])

    def _txn_op(self, state: _State, op: dict[str, Any]) -> list[dict[str, Any]]:
        if len(op) != 1:
            raise KeyError("exactly one of Node, Service, Check per operation")
        ((kind, spec),) = op.items()
        verb = spec["Verb"]
        if kind == "Node":
            node = spec["Node"]
            if verb == "set":
                self._set_node(state, node)
                return [{"Node": state.nodes[node["Node"]]}]
            if verb in ("delete", "delete-cas"):
                self._delete(state, node["Node"], None)
                return []
            if verb == "get":
                if node["Node"] not in state.nodes:
                    raise _TxnError(f'node "{node["Node"]}" doesn\'t exist')
                return [{"Node": state.nodes[node["Node"]]}]
        elif kind == "Service":
            node, svc = spec["Node"], spec["Service"]
            if verb in ("set", "cas"):
                self._set_service(state, node, svc)
                return [{"Service": state.services[(node, svc.get("ID") or svc["Service"])]}]
            if verb in ("delete", "delete-cas"):
                self._delete(state, node, svc["ID"])
                return []
            if verb == "get":
                got = state.services.get((node, svc["ID"]))
                if got is None:
                    raise _TxnError(f'service "{svc["ID"]}" doesn\'t exist')
                return [{"Service": got}]
        elif kind == "Check":
            chk = spec["Check"]
            if verb in ("set", "cas"):
                self._set_check(state, chk)
                return [{"Check": state.checks[(chk["Node"], chk["CheckID"])]}]
            if verb in ("delete", "delete-cas"):
                state.checks.pop((chk["Node"], chk["CheckID"]), None)
                return []
        else:
            raise KeyError(f"unknown operation type {kind}")
        raise _TxnError(f"unknown {kind} verb {verb!r}")

    # -- Connect -----------------------------------------------------------------

    async def _ca_roots(self, request: web.Request) -> web.Response:
        await self._block(request, lambda: self._table_index["roots"])
        active = next(r for r in self._roots if r.active)
        roots = [
            {
                "ID": r.id,
                "Name": r.cert.subject.rfc4514_string(),
                "SerialNumber": r.cert.serial_number,
                "SigningKeyID": r.id,
                "NotBefore": _rfc3339(r.cert.not_valid_before_utc),
                "NotAfter": _rfc3339(r.cert.not_valid_after_utc),
                "RootCert": r.pem,
                "IntermediateCerts": None,
                "Active": r.active,
                "PrivateKeyType": "ec",
                "PrivateKeyBits": 256,
            }
            for r in self._roots
        ]
        return self._json(
            {"ActiveRootID": active.id, "TrustDomain": self.trust_domain, "Roots": roots},
            self._table_index["roots"],
        )

    def _issue_leaf(self, service: str) -> _Leaf:
        idx = self._bump()
        self._leaf_index[service] = idx
        leaf = _sign_leaf(
            next(r for r in self._roots if r.active),
            self.spiffe_id(service),
            service,
            self.leaf_ttl,
            idx,
        )
        self._leaves[service] = leaf
        return leaf

    async def _ca_leaf(self, request: web.Request, name: str) -> web.Response:
        if name not in self._leaves:
            self._issue_leaf(name)
        await self._block(request, lambda: self._leaf_index[name])
        leaf = self._leaves[name]
        return self._json(
            {
                "SerialNumber": leaf.serial,
                "CertPEM": leaf.cert_pem,
                "PrivateKeyPEM": leaf.key_pem,
                "Service": name,
                "ServiceURI": self.spiffe_id(name),
                "ValidAfter": _rfc3339(leaf.valid_after),
                "ValidBefore": _rfc3339(leaf.valid_before),
                "CreateIndex": leaf.index,
                "ModifyIndex": leaf.index,
            },
            self._leaf_index[name],
        )

    async def _intention_check(self, request: web.Request) -> web.Response:
        src = request.query.get("source")
        dst = request.query.get("destination")
        if not src or not dst:
            return self._error(400, "required query parameter 'source' and 'destination' not set")
        action = self.intentions.get((src, dst)) or self.intentions.get(("*", dst))
        if action is None:
            action = self.intentions.get((src, "*")) or self.intentions.get(("*", "*"))
        allowed = action == "allow" if action else self.intention_default_allow
        return self._json({"Allowed": allowed})

    async def _intention_match(self, request: web.Request) -> web.Response:
        """Consul's List Matching Intentions: blocking, in precedence order per name."""
        if not self.intention_match_supported:
            return self._error(404, "no such endpoint /v1/connect/intentions/match")
        by = request.query.get("by")
        names = request.query.getall("name", [])
        if by not in ("source", "destination") or not names:
            return self._error(400, "required query parameters 'by' and 'name' not set")
        await self._block(request, lambda: self._table_index["intentions"])
        out: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            hits = []
            for (src, dst), action in self.intentions.items():
                field_ = src if by == "source" else dst
                if field_ not in (name, "*"):
                    continue
                created, modified = self.intentions.indexes.get((src, dst), (1, 1))
                # Exact names before wildcards: Consul's precedence (9 > 8 > 6 > 5).
                precedence = 9 - (src == "*") - 3 * (dst == "*")
                hits.append(
                    {
                        "SourceNS": "default",
                        "SourceName": src,
                        "DestinationNS": "default",
                        "DestinationName": dst,
                        "SourceType": "consul",
                        "Action": action,
                        "Precedence": precedence,
                        "CreateIndex": created,
                        "ModifyIndex": modified,
                    }
                )
            hits.sort(key=lambda h: (-h["Precedence"], h["SourceName"], h["DestinationName"]))
            out[name] = hits
        return self._json(out, self._table_index["intentions"])
