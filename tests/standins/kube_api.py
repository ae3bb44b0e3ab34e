"""A Kubernetes API server stand-in over HTTP on 127.0.0.1, for the real ``kubernetes`` client.

What it implements, as the real API server does it:

- v1 ``services``, ``namespaces`` and ``nodes`` (cluster-scoped), ``pods``,
  ``configmaps``, ``secrets``, ``serviceaccounts``, ``events``; ``discovery.k8s.io/v1``
  ``endpointslices``; ``coordination.k8s.io/v1`` ``leases``;
  ``events.k8s.io/v1`` ``events``. Cluster-wide and namespaced collection paths.
- list with ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``),
  ``fieldSelector`` (``metadata.name``, ``metadata.namespace`` with ``=``,
  ``==``, ``!=``), ``limit``/``continue`` pages from a consistent snapshot
  (a continue token older than the retained window is ``410 Expired``).
  List items carry no ``kind``/``apiVersion`` (the list does), like the real one.
- watch (``watch=true``) as a chunked stream of JSON lines from
  ``resourceVersion`` (``""``/``"0"``: synthetic ADDED events first), with
  ``allowWatchBookmarks`` BOOKMARK events, ``timeoutSeconds`` (a clean end of
  stream), and an ERROR event holding a ``410 Expired`` Status when asked for a
  resourceVersion older than the retained event window.
- one global resourceVersion counter (etcd's revision); create/update/patch
  (JSON merge patch, used for strategic merge too: enough for the flat fields
  clients patch)/delete with ``metadata.resourceVersion`` optimistic
  concurrency (``409 Conflict``), ``409 AlreadyExists``, ``404 NotFound``.
- ``POST .../serviceaccounts/<sa>/token`` (TokenRequest): an RS256 JWT with the
  requested audiences and lifetime (at least 10 minutes, as the real server
  insists), signed by a key of this server; ``POST
  /apis/authentication.k8s.io/v1/tokenreviews`` checks such tokens.

Test controls (methods of :class:`KubeApiServer`): apply/delete objects,
``compact`` (forget the event window: any older resourceVersion gets 410),
``expire_watches`` (open watches get the 410 ERROR event), ``cut_watches``
(streams dropped without the closing chunk, as a network cut looks),
``unavailable`` (503 or connection reset for everything, for a while),
``fail_when`` (a predicate answering chosen requests with an error), and a
request log.

Left out: authentication/authorization (any bearer token is accepted),
set-based label selectors, server-side apply, protobuf, HTTP/2, admission.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import itertools
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "services", "Service", True),
    Resource("", "v1", "namespaces", "Namespace", False),
    Resource("", "v1", "nodes", "Node", False),
    Resource("", "v1", "pods", "Pod", True),
    Resource("", "v1", "configmaps", "ConfigMap", True),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True),
    Resource("", "v1", "events", "Event", True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
    Resource("events.k8s.io", "v1", "events", "Event", True),
)
_BY_KEY: dict[tuple[str, str], Resource] = {r.key: r for r in RESOURCES}
_BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}


def status(code: int, reason: str, message: str) -> JsonDict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.body = status(code, reason, message)
        self.code = code


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors -----------------------------------------------------------------


def _parse_label_selector(text: str) -> list[tuple[str, str, str]]:
    reqs: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(("!=", k.strip(), v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            reqs.append(("!", part[1:].strip(), ""))
        elif " in " in part or " notin " in part:
            raise ApiError(400, "BadRequest", f"set-based selectors are not supported: {part}")
        else:
            reqs.append(("exists", part, ""))
    return reqs


_FIELDS = ("metadata.name", "metadata.namespace")


def _parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    reqs: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        op = "!=" if "!=" in part else "="
        k, v = part.split("!=" if op == "!=" else ("==" if "==" in part else "="), 1)
        if k.strip() not in _FIELDS:
            raise ApiError(
                400, "BadRequest", f'field label not supported: "{k.strip()}" (stand-in)'
            )
        reqs.append((op, k.strip(), v.strip()))
    return reqs


@dataclass(slots=True)
class _Filter:
    namespace: str | None
    labels: list[tuple[str, str, str]]
    fields: list[tuple[str, str, str]]

    def matches(self, ns: str, name: str, labels: Mapping[str, str]) -> bool:
        if self.namespace is not None and ns != self.namespace:
            return False
        for op, k, v in self.labels:
            have = labels.get(k)
            if (
                (op == "=" and have != v)
                or (op == "!=" and have == v)
                or (op == "exists" and have is None)
                or (op == "!" and have is not None)
            ):
                return False
        for op, k, v in self.fields:
            have = name if k == "metadata.name" else ns
            if (op == "=") != (have == v):
                return False
        return True


# -- storage -------------------------------------------------------------------


@dataclass(slots=True)
class _Stored:
    obj: JsonDict  # never mutated after storing; updates store a new one
    item_json: bytes  # without kind/apiVersion, as list items are sent
    labels: Mapping[str, str]


@dataclass(slots=True)
class _Event:
    rv: int
    res: tuple[str, str]
    type: str
    ns: str
    name: str
    stored: _Stored


@dataclass(slots=True)
class _Watcher:
    res: Resource
    flt: _Filter
    queue: list[_Event] = field(default_factory=list)
    cut: bool = False
    expire: bool = False


def _obj_json(res: Resource, st: _Stored) -> bytes:
    head = json.dumps({"kind": res.kind, "apiVersion": res.api_version}).encode()
    body = st.item_json
    return head[:-1] + (b"," + body[1:] if body != b"{}" else b"}")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any


class KubeApiServer:
    """The stand-in; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        *,
        event_window: int = 10_000,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
    ) -> None:
        self.event_window = event_window
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self._cond = threading.Condition()
        self._objs: dict[tuple[str, str], dict[tuple[str, str], _Stored]] = {
            r.key: {} for r in RESOURCES
        }
        self._rv = 1
        self._log: list[_Event] = []
        self._log_start = 0  # index of the first retained event in _log
        self._compacted_rv = 0  # a watch from below this rv gets 410
        self._watchers: list[_Watcher] = []
        self._continues: dict[str, tuple[int, list[_Stored], Resource]] = {}
        self._unavailable: str | None = None
        self._held = False
        self._fail_when: Callable[[RequestInfo], int | None] | None = None
        self._stopping = False
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._signing_key: Any = None
        self._key_lock = threading.Lock()
        self.requests: list[RequestInfo] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> KubeApiServer:
        server = self

        class Handler(_Handler):
            api = server

        httpd = _Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        httpd.request_queue_size = 128
        httpd.daemon_threads = True
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._httpd.shutdown()
        # Wake handler threads blocked on idle keep-alive connections.
        with self._conns_lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: str | Path, token: str = "stand-in-token") -> Path:
        """A kubeconfig whose current context points at this server."""
        p = Path(path)
        p.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {"token": token}}],
                    "contexts": [
                        {"name": "standin", "context": {"cluster": "standin", "user": "standin"}}
                    ],
                    "current-context": "standin",
                }
            )
        )
        return p

    # -- test controls ------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def apply(self, obj: Mapping[str, Any]) -> JsonDict:
        """Create or update an object (no concurrency check); returns it as stored."""
        res = _BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if res is None:
            raise ValueError(f"stand-in does not serve {obj.get('apiVersion')} {obj.get('kind')}")
        md = obj.get("metadata", {})
        ns = md.get("namespace", "default") if res.namespaced else ""
        with self._cond:
            if (ns, md["name"]) in self._objs[res.key]:
                return self._update(res, ns, md["name"], obj, check_rv=False)
            return self._create(res, ns, obj)

    def apply_many(self, objs: Iterator[Mapping[str, Any]] | list[Mapping[str, Any]]) -> int:
        n = 0
        for o in objs:
            self.apply(o)
            n += 1
        return n

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        res = _BY_KIND[(api_version, kind)]
        with self._cond:
            try:
                self._delete(res, namespace if res.namespaced else "", name)
            except ApiError:
                return False
            return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> JsonDict | None:
        res = _BY_KIND[(api_version, kind)]
        with self._cond:
            st = self._objs[res.key].get((namespace if res.namespaced else "", name))
            return copy.deepcopy(st.obj) if st else None

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JsonDict]:
        res = _BY_KIND[(api_version, kind)]
        with self._cond:
            return [
                copy.deepcopy(st.obj)
                for (ns, _), st in sorted(self._objs[res.key].items())
                if namespace is None or ns == namespace
            ]

    def add_service_account(self, namespace: str, name: str) -> JsonDict:
        return self.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"namespace": namespace, "name": name},
            }
        )

    def compact(self) -> None:
        """Forget every retained event: a watch or continue from any older rv gets 410."""
        with self._cond:
            self._compacted_rv = self._rv
            self._log.clear()
            self._log_start = 0

    def hold_watches(self) -> None:
        """Stop delivering watch events (they queue) until :meth:`expire_watches` or release."""
        with self._cond:
            self._held = True

    def release_watches(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def expire_watches(self) -> None:
        """Compact, and send open watches the 410 ERROR event (a watch cache fell behind).

        Events held by :meth:`hold_watches` are dropped, never delivered: the
        client can only learn of them by relisting.
        """
        with self._cond:
            self._compacted_rv = self._rv
            self._log.clear()
            self._log_start = 0
            for w in self._watchers:
                w.expire = True
                w.queue.clear()
            self._held = False
            self._cond.notify_all()

    def cut_watches(self) -> None:
        """Drop every open watch stream without its closing chunk."""
        with self._cond:
            for w in self._watchers:
                w.cut = True
            self._cond.notify_all()

    @property
    def open_watches(self) -> int:
        with self._cond:
            return len(self._watchers)

    def set_unavailable(self, mode: str | None) -> None:
        """``"503"``: 503 to all; ``"reset"``: close connections unanswered; ``None``: back."""
        assert mode in (None, "503", "reset")
        with self._cond:
            self._unavailable = mode
        if mode is not None:
            self.cut_watches()

    @contextlib.contextmanager
    def unavailable(self, mode: str = "503") -> Iterator[None]:
        self.set_unavailable(mode)
        try:
            yield
        finally:
            self.set_unavailable(None)

    def fail_when(self, predicate: Callable[[RequestInfo], int | None] | None) -> None:
        """Answer requests for which ``predicate`` returns a status code with that error."""
        with self._cond:
            self._fail_when = predicate

    def requests_matching(self, method: str, path_part: str) -> list[RequestInfo]:
        with self._cond:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    # -- tokens ------------------------------------------------------------------

    def _key(self) -> Any:
        # Locked: concurrent TokenRequests must not each make (and sign with) their own key.
        with self._key_lock:
            if self._signing_key is None:
                from cryptography.hazmat.primitives.asymmetric import rsa

                self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._signing_key

    def issue_token(self, namespace: str, sa: str, audiences: list[str], seconds: int) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        now = int(time.time())
        sa_obj = self._objs[("", "serviceaccounts")].get((namespace, sa))
        sa_uid = sa_obj.obj["metadata"].get("uid", "") if sa_obj else ""
        claims = {
            "aud": audiences,
            "exp": now + seconds,
            "iat": now,
            "nbf": now,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:{namespace}:{sa}",
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": sa, "uid": sa_uid},
            },
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": "standin"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = self._key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(sig)}"

    def verify_token(self, token: str, audience: str | None = None) -> JsonDict:
        """Claims of a token this server issued; ValueError if forged, expired or wrong audience."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def unb64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            h, p, s = token.split(".")
            self._key().public_key().verify(
                unb64(s), f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (ValueError, InvalidSignature) as exc:
            raise ValueError("token not signed by this API server") from exc
        claims: JsonDict = json.loads(unb64(p))
        if claims["exp"] <= time.time():
            raise ValueError("token expired")
        if audience is not None and audience not in claims["aud"]:
            raise ValueError(f"token audience {claims['aud']} does not include {audience}")
        return claims

    # -- storage operations (caller holds _cond) -----------------------------------

    def _store(
        self, res: Resource, etype: str, ns: str, name: str, obj: JsonDict | None
    ) -> JsonDict:
        self._rv += 1
        table = self._objs[res.key]
        if obj is None:  # delete: the event carries the last state at the new rv
            old = table.pop((ns, name))
            obj = copy.deepcopy(old.obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
        else:
            obj["metadata"]["resourceVersion"] = str(self._rv)
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        st = _Stored(
            obj,
            json.dumps(item, separators=(",", ":")).encode(),
            obj["metadata"].get("labels") or {},
        )
        if etype != "DELETED":
            table[(ns, name)] = st
        ev = _Event(self._rv, res.key, etype, ns, name, st)
        self._log.append(ev)
        if len(self._log) - self._log_start > self.event_window:
            self._compacted_rv = self._log[self._log_start].rv
            self._log_start += 1
            if self._log_start > 4096:  # trim the dropped prefix now and then
                del self._log[: self._log_start]
                self._log_start = 0
        for w in self._watchers:
            if w.res.key == res.key and w.flt.matches(ns, name, st.labels):
                w.queue.append(ev)
        self._cond.notify_all()
        return obj

    def _create(self, res: Resource, ns: str, body: Mapping[str, Any]) -> JsonDict:
        obj = copy.deepcopy(dict(body))
        md = obj.setdefault("metadata", {})
        if not md.get("name"):
            if md.get("generateName"):
                md["name"] = md["generateName"] + secrets.token_hex(3)
            else:
                raise ApiError(
                    422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value"
                )
        if res.namespaced:
            if md.get("namespace", ns) != ns:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            md["namespace"] = ns
        if (ns, md["name"]) in self._objs[res.key]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res.plural}.{res.group or "core"} "{md["name"]}" already exists',
            )
        md["uid"] = str(uuid.uuid4())
        md.setdefault("creationTimestamp", _now())
        return self._store(res, "ADDED", ns, md["name"], obj)

    def _update(
        self, res: Resource, ns: str, name: str, body: Mapping[str, Any], *, check_rv: bool
    ) -> JsonDict:
        cur = self._objs[res.key].get((ns, name))
        if cur is None:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        obj = copy.deepcopy(dict(body))
        md = obj.setdefault("metadata", {})
        want = md.get("resourceVersion")
        if check_rv and want and want != cur.obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        md["name"] = name
        if res.namespaced:
            md["namespace"] = ns
        md["uid"] = cur.obj["metadata"]["uid"]
        md["creationTimestamp"] = cur.obj["metadata"].get("creationTimestamp")
        return self._store(res, "MODIFIED", ns, name, obj)

    def _delete(self, res: Resource, ns: str, name: str) -> JsonDict:
        if (ns, name) not in self._objs[res.key]:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        return self._store(res, "DELETED", ns, name, None)

    # -- HTTP handling -------------------------------------------------------------

    def _route(self, path: str) -> tuple[Resource | None, str | None, str | None, str | None, str]:
        """(resource, namespace or None, name or None, subresource, special)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None, None, None, None, "/".join(parts)
        if group == "authentication.k8s.io" and rest == ["tokenreviews"]:
            return None, None, None, None, "tokenreviews"
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None, None, None, None, "?"
        res = _BY_KEY.get((group, rest[0]))
        if res is None or res.version != version:
            return None, None, None, None, "?"
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return res, ns, name, sub, ""

    def handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        info = RequestInfo(method, split.path, query, dict(h.headers.items()), body)
        with self._cond:
            self.requests.append(info)
            unavailable = self._unavailable
            fail = self._fail_when
        if unavailable == "reset":
            h.abort()
            return
        if unavailable == "503":
            h.send_json(
                503, status(503, "ServiceUnavailable", "the server is currently unavailable")
            )
            return
        if fail is not None:
            code = fail(info)
            if code is not None:
                h.send_json(
                    code,
                    status(
                        code, "InternalError" if code >= 500 else "Forbidden", "injected failure"
                    ),
                )
                return
        try:
            self._dispatch(h, method, split.path, query, body)
        except ApiError as err:
            h.send_json(err.code, err.body)

    def _dispatch(
        self, h: _Handler, method: str, path: str, query: Mapping[str, str], body: Any
    ) -> None:
        res, ns, name, sub, special = self._route(path)
        if special == "version":
            h.send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin"})
            return
        if special == "tokenreviews" and method == "POST":
            h.send_json(201, self._token_review(body or {}))
            return
        if res is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        if res.namespaced and ns is None and name is not None:
            raise ApiError(404, "NotFound", "namespaced resource needs a namespace in the path")
        ns_key = (ns or "") if res.namespaced else ""
        if sub is not None:
            if res.plural == "serviceaccounts" and sub == "token" and method == "POST":
                assert ns is not None and name is not None
                h.send_json(201, self._token_request(ns, name, body or {}))
                return
            raise ApiError(404, "NotFound", f"subresource {sub} not served")
        if name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1"):
                    self._watch(h, res, ns, query)
                else:
                    h.send_json(200, self._list(res, ns, query))
                return
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "request body must be a JSON object")
                with self._cond:
                    h.send_json(201, self._create(res, ns_key, body))
                return
            raise ApiError(405, "MethodNotAllowed", f"{method} not allowed on a collection")
        with self._cond:
            if method == "GET":
                st = self._objs[res.key].get((ns_key, name))
                if st is None:
                    raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
                h.send_json(200, st.obj)
            elif method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "request body must be a JSON object")
                h.send_json(200, self._update(res, ns_key, name, body, check_rv=True))
            elif method == "PATCH":
                if not isinstance(body, dict):
                    raise ApiError(415, "UnsupportedMediaType", "only merge patches are served")
                cur = self._objs[res.key].get((ns_key, name))
                if cur is None:
                    raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
                merged = _merge_patch(copy.deepcopy(cur.obj), body)
                h.send_json(200, self._update(res, ns_key, name, merged, check_rv=True))
            elif method == "DELETE":
                h.send_json(200, self._delete(res, ns_key, name))
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} not allowed")

    def _list(self, res: Resource, ns: str | None, query: Mapping[str, str]) -> bytes:
        limit = int(query.get("limit") or 0)
        cont = query.get("continue") or ""
        with self._cond:
            if cont:
                entry = self._continues.get(cont)
                if entry is None or entry[0] < self._compacted_rv:
                    raise ApiError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter.",
                    )
                rv, items, _ = entry
                del self._continues[cont]
            else:
                flt = _Filter(
                    ns if res.namespaced else None,
                    _parse_label_selector(query.get("labelSelector", "")),
                    _parse_field_selector(query.get("fieldSelector", "")),
                )
                rv = self._rv
                items = [
                    st
                    for (ons, oname), st in sorted(self._objs[res.key].items())
                    if flt.matches(ons, oname, st.labels)
                ]
            next_token = ""
            if limit and len(items) > limit:
                next_token = secrets.token_urlsafe(12)
                self._continues[next_token] = (rv, items[limit:], res)
                items = items[:limit]
        meta: JsonDict = {"resourceVersion": str(rv)}
        if next_token:
            meta["continue"] = next_token
        head = json.dumps(
            {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta}
        ).encode()
        return head[:-1] + b',"items":[' + b",".join(st.item_json for st in items) + b"]}"

    def _watch(self, h: _Handler, res: Resource, ns: str | None, query: Mapping[str, str]) -> None:
        flt = _Filter(
            ns if res.namespaced else None,
            _parse_label_selector(query.get("labelSelector", "")),
            _parse_field_selector(query.get("fieldSelector", "")),
        )
        rv_param = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 0) or self.default_watch_timeout
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        w = _Watcher(res, flt)
        gone_from: int | None = None
        with self._cond:
            if rv_param in ("", "0"):
                w.queue = [
                    _Event(self._rv, res.key, "ADDED", ons, oname, st)
                    for (ons, oname), st in sorted(self._objs[res.key].items())
                    if flt.matches(ons, oname, st.labels)
                ]
            else:
                try:
                    start = int(rv_param)
                except ValueError as exc:
                    raise ApiError(
                        400, "BadRequest", f"invalid resourceVersion {rv_param!r}"
                    ) from exc
                if start < self._compacted_rv:
                    gone_from = start
                else:
                    w.queue = [
                        ev
                        for ev in itertools.islice(self._log, self._log_start, None)
                        if ev.rv > start
                        and ev.res == res.key
                        and flt.matches(ev.ns, ev.name, ev.stored.labels)
                    ]
            if gone_from is None:
                self._watchers.append(w)
            compacted = self._compacted_rv
        h.begin_stream()
        try:
            if gone_from is not None:
                h.write_chunk(_error_event(gone_from, compacted))
                h.end_stream()
                return
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                with self._cond:
                    while not ((w.queue and not self._held) or w.cut or w.expire or self._stopping):
                        now = time.monotonic()
                        wake = min(deadline, next_bookmark if bookmarks else deadline)
                        if now >= wake:
                            break
                        self._cond.wait(wake - now)
                    if self._held:
                        batch = []
                    else:
                        batch, w.queue = w.queue, []
                    cut, expire, stopping = w.cut, w.expire, self._stopping
                    # A bookmark must not pass events still queued for this watcher.
                    pending = bool(w.queue)
                    current_rv, compacted = self._rv, self._compacted_rv
                if cut or stopping:
                    h.abort()
                    return
                if batch:
                    h.write_chunk(
                        b"".join(
                            b'{"type":"%s","object":%s}\n'
                            % (ev.type.encode(), _obj_json(_BY_KEY[ev.res], ev.stored))
                            for ev in batch
                        )
                    )
                if expire:
                    h.write_chunk(_error_event(current_rv - 1, compacted))
                    h.end_stream()
                    return
                now = time.monotonic()
                if now >= deadline:
                    h.end_stream()
                    return
                if bookmarks and now >= next_bookmark and not batch and not pending:
                    h.write_chunk(
                        b'{"type":"BOOKMARK","object":%s}\n'
                        % json.dumps(
                            {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(current_rv)},
                            }
                        ).encode()
                    )
                    next_bookmark = now + self.bookmark_interval
        except OSError:
            h.close_connection = True
        finally:
            with self._cond:
                if w in self._watchers:
                    self._watchers.remove(w)

    def _token_request(self, ns: str, sa: str, body: Mapping[str, Any]) -> JsonDict:
        with self._cond:
            if (ns, sa) not in self._objs[("", "serviceaccounts")]:
                raise ApiError(404, "NotFound", f'serviceaccounts "{sa}" not found')
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(
                422,
                "Invalid",
                "TokenRequest.authentication.k8s.io is invalid: spec.expirationSeconds: "
                "Invalid value: may not specify a duration less than 10 minutes",
            )
        audiences = list(spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"])
        token = self.issue_token(ns, sa, audiences, seconds)
        exp = datetime.fromtimestamp(int(time.time()) + seconds, UTC)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa, "namespace": ns, "creationTimestamp": _now()},
            "spec": {"audiences": audiences, "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def _token_review(self, body: Mapping[str, Any]) -> JsonDict:
        spec = body.get("spec") or {}
        out: JsonDict = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {},
            "spec": spec,
        }
        auds = spec.get("audiences") or []
        try:
            claims = self.verify_token(spec.get("token", ""), auds[0] if auds else None)
        except (ValueError, KeyError) as exc:
            out["status"] = {"authenticated": False, "error": str(exc)}
            return out
        out["status"] = {
            "authenticated": True,
            "audiences": claims["aud"],
            "user": {
                "username": claims["sub"],
                "uid": claims["kubernetes.io"]["serviceaccount"]["uid"],
                # As the API server answers for a service-account token (istiod checks the first).
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{claims['kubernetes.io']['namespace']}",
                    "system:authenticated",
                ],
            },
        }
        return out


def _error_event(asked: int, compacted: int) -> bytes:
    st = status(410, "Expired", f"too old resource version: {asked} ({compacted})")
    return b'{"type":"ERROR","object":%s}\n' % json.dumps(st).encode()


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge_patch(target.get(k), v)
    return target


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections (a stopped watch, a test's reset) are normal here.
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.api._conns_lock:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.api._conns_lock:
            self.api._conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.api.handle(self, "GET")

    def do_POST(self) -> None:
        self.api.handle(self, "POST")

    def do_PUT(self) -> None:
        self.api.handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.api.handle(self, "PATCH")

    def do_DELETE(self) -> None:
        self.api.handle(self, "DELETE")

    def send_json(self, code: int, body: JsonDict | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def begin_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection as a network cut would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
