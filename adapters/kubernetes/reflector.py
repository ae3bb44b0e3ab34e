"""List and watch one kind in one scope, in a worker thread: a reflector.

A :class:`Reflector` keeps one kind (Services, EndpointSlices, ...) of one
scope (all namespaces, one namespace, or one object by name) in step with the
API server and hands the results to a :class:`Sink` on the event loop:

- **list** in pages (``limit``/``continue``), all pages first, then one
  :meth:`Sink.relisted` with everything: the store swaps the source's whole
  state in one step, so a relist never shows an empty or half world;
- **watch** from the list's resourceVersion with bookmarks; every event moves
  the resourceVersion on, and a stream that ends or is cut resumes from it
  (nothing is lost and nothing relisted);
- **410 Gone** (an HTTP 410 or an ERROR event holding one) means the server
  no longer keeps that history: relist;
- any other failure (connection refused or reset, 5xx, a malformed line):
  retry with exponential backoff and full jitter, from the last
  resourceVersion; the store keeps every object meanwhile.

Scale: responses are read with ``_preload_content=False`` and decoded with
the stdlib ``json`` module, then converted once by
:func:`bridge.sources.convert.parse_object`; the client's model classes are
never built. An object whose conversion fails becomes a diagnostic and its
last good version stays; an update equal to what is held is not handed on.

Threading: the thread owns everything in the reflector except ``stop``; it
talks to the loop only through the ``post`` callable (which blocks when the
loop falls behind: back-pressure instead of an unbounded queue). ``stop``
shuts the open watch's socket so the thread exits at once.

It must not touch the store or anything else owned by the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from kubernetes import client as k8s_client

from adapters.kubernetes.client import (
    CONNECT_TIMEOUT_S,
    ResourceExpired,
    call,
    read_json,
    wrap,
)
from bridge.errors import SourceError, SourceUnavailable
from bridge.model.diagnostics import Diagnostic
from bridge.model.k8s import K8sObject, Kind, ObjectRef
from bridge.sources.convert import InvalidObject, parse_object, positional_maker

log = logging.getLogger(__name__)

# Watch events handed to the loop in one callback, at most.
MAX_BATCH = 500

_object_ref = positional_maker(ObjectRef)


@dataclass(frozen=True, slots=True)
class _KindApi:
    api: str  # the kubernetes.client API class
    list_all: str  # method listing every namespace (or the cluster-scoped kind)
    list_namespaced: str | None
    api_version: str
    kind: str
    base: str  # URL path of the collection, for messages


KIND_APIS: dict[Kind, _KindApi] = {
    Kind.SERVICE: _KindApi(
        "CoreV1Api",
        "list_service_for_all_namespaces",
        "list_namespaced_service",
        "v1",
        "Service",
        "/api/v1/services",
    ),
    Kind.ENDPOINT_SLICE: _KindApi(
        "DiscoveryV1Api",
        "list_endpoint_slice_for_all_namespaces",
        "list_namespaced_endpoint_slice",
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    Kind.NAMESPACE: _KindApi(
        "CoreV1Api", "list_namespace", None, "v1", "Namespace", "/api/v1/namespaces"
    ),
    Kind.POD: _KindApi(
        "CoreV1Api",
        "list_pod_for_all_namespaces",
        "list_namespaced_pod",
        "v1",
        "Pod",
        "/api/v1/pods",
    ),
    Kind.CONFIG_MAP: _KindApi(
        "CoreV1Api",
        "list_config_map_for_all_namespaces",
        "list_namespaced_config_map",
        "v1",
        "ConfigMap",
        "/api/v1/configmaps",
    ),
    Kind.NODE: _KindApi("CoreV1Api", "list_node", None, "v1", "Node", "/api/v1/nodes"),
    Kind.SECRET: _KindApi(
        "CoreV1Api",
        "list_secret_for_all_namespaces",
        "list_namespaced_secret",
        "v1",
        "Secret",
        "/api/v1/secrets",
    ),
}


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What one reflector watches: a kind, optionally one namespace, optionally one name."""

    kind: Kind
    namespace: str | None = None  # None: every namespace (or a cluster-scoped kind)
    name: str | None = None  # watch just this object (fieldSelector metadata.name=)
    label_selector: str = ""

    @property
    def source(self) -> str:
        """The store source name: one per reflector, so each relist swaps only its own scope."""
        scope = "/".join(p for p in (self.namespace, self.name) if p)
        sel = f"?{self.label_selector}" if self.label_selector else ""
        return f"kubernetes:{self.kind.value}" + (f"/{scope}" if scope else "") + sel

    @property
    def path(self) -> str:
        """The collection's URL path, for messages."""
        k = KIND_APIS[self.kind]
        if self.namespace and k.list_namespaced:
            prefix, plural = k.base.rsplit("/", 1)
            return f"{prefix}/namespaces/{self.namespace}/{plural}"
        return k.base


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to ``initial * factor**n``."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rnd: random.Random) -> float:
        cap = min(self.max_s, self.initial_s * self.factor ** min(attempt, 32))
        # Full jitter spreads many clients reconnecting after one API server restart.
        return cap * (0.5 + 0.5 * rnd.random())


class Sink(Protocol):
    """Where a reflector's results go; every method runs on the event loop."""

    def relisted(
        self, spec: WatchSpec, objects: list[K8sObject], diags: tuple[Diagnostic, ...]
    ) -> None: ...

    def changed(
        self,
        spec: WatchSpec,
        items: list[K8sObject | ObjectRef],
        diags: tuple[Diagnostic, ...] | None,
    ) -> None: ...

    def health(self, spec: WatchSpec, error: str | None) -> None: ...


Post = Callable[[Callable[[], None]], bool]


class _Stopped(Exception):
    pass


@dataclass(slots=True)
class ReflectorStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0
    errors: int = 0
    resource_version: str = ""
    state: str = "starting"
    last_error: str = ""


class Reflector:
    """One list+watch loop in its own thread; see the module docstring."""

    def __init__(
        self,
        spec: WatchSpec,
        api_client: Any,
        sink: Sink,
        post: Post,
        *,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        backoff: Backoff = Backoff(),
        seed: int | None = None,
    ) -> None:
        self.spec = spec
        self._kind = spec.kind
        self._cluster_scoped = spec.kind in (Kind.NAMESPACE, Kind.NODE)
        self._k = KIND_APIS[spec.kind]
        api_cls = getattr(k8s_client, self._k.api)
        self._api = api_cls(api_client)
        self._sink = sink
        self._post = post
        self._page_size = page_size
        self._watch_timeout_s = watch_timeout_s
        self._backoff = backoff
        self._rnd = random.Random(seed)
        self._stop = threading.Event()
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        # Owned by the thread:
        self._rv: str | None = None  # None: relist before watching
        self._known: dict[ObjectRef, K8sObject] = {}
        self._bad: dict[ObjectRef, Diagnostic] = {}
        self.stats = ReflectorStats()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"reflector {self.spec.source}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and unblock its read; :meth:`join` waits for it."""
        self._stop.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            # shutdown() wakes a recv blocked in the reflector's thread.
            with contextlib.suppress(OSError, AttributeError, urllib3.exceptions.HTTPError):
                resp.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # -- the loop --------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._rv is None:
                        self.stats.state = "listing"
                        self._rv = self._list()
                        attempt = 0
                    self.stats.state = "watching"
                    started = time.monotonic()
                    events_before = self.stats.events
                    self._watch()
                    if time.monotonic() - started < 1.0 and self.stats.events == events_before:
                        # A server that ends watches at once must not make us spin.
                        attempt += 1
                        self._wait(self._backoff.delay(attempt, self._rnd))
                    else:
                        attempt = 0
                except ResourceExpired as exc:
                    self.stats.expired += 1
                    log.info("%s: %s; relisting", self.spec.source, exc)
                    self._rv = None
                except SourceError as exc:
                    self.stats.errors += 1
                    self.stats.last_error = str(exc)
                    self.stats.state = "backoff"
                    self._emit_health(str(exc))
                    delay = self._backoff.delay(attempt, self._rnd)
                    attempt += 1
                    log.warning(
                        "%s: %s; retrying in %.2fs from resourceVersion %s",
                        self.spec.source,
                        exc,
                        delay,
                        self._rv or "(relist)",
                    )
                    self._wait(delay)
        except _Stopped:
            pass
        finally:
            self.stats.state = "stopped"

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    def _post_or_stop(self, fn: Callable[[], None]) -> None:
        if self._stop.is_set() or not self._post(fn):
            raise _Stopped

    def _emit_health(self, error: str | None) -> None:
        spec, sink = self.spec, self._sink
        self._post_or_stop(lambda: sink.health(spec, error))

    def _list_call(self, **kwargs: Any) -> Any:
        if self.spec.name:
            kwargs["field_selector"] = f"metadata.name={self.spec.name}"
        if self.spec.label_selector:
            kwargs["label_selector"] = self.spec.label_selector
        if self.spec.namespace and self._k.list_namespaced:
            fn = getattr(self._api, self._k.list_namespaced)
            return fn(self.spec.namespace, _preload_content=False, **kwargs)
        return getattr(self._api, self._k.list_all)(_preload_content=False, **kwargs)

    def _list(self) -> str:
        """List every page, then hand the whole state over at once; returns its resourceVersion."""
        what = f"list {self.spec.path}"
        known: dict[ObjectRef, K8sObject] = {}
        bad: dict[ObjectRef, Diagnostic] = {}
        cont: str | None = None
        rv = ""
        while True:
            kwargs: dict[str, Any] = {
                "limit": self._page_size,
                "_request_timeout": (CONNECT_TIMEOUT_S, 60.0),
            }
            if cont:
                kwargs["_continue"] = cont
            resp = call(what, self._list_call, **kwargs)
            with self._resp_lock:
                self._resp = resp
            try:
                page = read_json(what, resp)
            finally:
                with self._resp_lock:
                    self._resp = None
            if self._stop.is_set():
                raise _Stopped
            meta = page.get("metadata") or {}
            if not cont:
                rv = str(meta.get("resourceVersion") or "")
            for item in page.get("items") or ():
                # List items carry no kind/apiVersion; the converter needs them.
                item.setdefault("kind", self._k.kind)
                item.setdefault("apiVersion", self._k.api_version)
                self._convert(item, known, bad, previous=self._known)
            cont = meta.get("continue") or None
            if not cont:
                break
        self.stats.lists += 1
        self.stats.resource_version = rv
        self._known, self._bad = known, bad
        objects = list(known.values())
        diags = tuple(bad.values())
        spec, sink = self.spec, self._sink
        self._post_or_stop(lambda: sink.relisted(spec, objects, diags))
        return rv

    def _watch(self) -> None:
        """Follow one watch stream until it ends, moving ``_rv`` on with every event."""
        assert self._rv is not None
        what = f"watch {self.spec.path}"
        # Spread reconnections like client-go does: timeouts vary per watch.
        timeout = int(self._watch_timeout_s * (1 + self._rnd.random()))
        resp = call(
            what,
            self._list_call,
            watch=True,
            resource_version=self._rv,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(CONNECT_TIMEOUT_S, timeout + 30.0),
        )
        with self._resp_lock:
            self._resp = resp
        self.stats.watches += 1
        buf = b""
        clean = False
        try:
            self._emit_health(None)
            for chunk in resp.stream(amt=None, decode_content=False):
                if self._stop.is_set():
                    raise _Stopped
                buf += chunk
                if b"\n" not in buf:
                    continue
                *lines, buf = buf.split(b"\n")
                # Bounded batches keep each loop callback short under a flood.
                for i in range(0, len(lines), MAX_BATCH):
                    self._handle_lines(lines[i : i + MAX_BATCH], what)
            clean = not self._stop.is_set()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self._stop.is_set():
                raise _Stopped from exc
            raise wrap(exc, what) from exc
        finally:
            with self._resp_lock:
                self._resp = None
            if not clean:
                # A stream left mid-way (stop, ERROR event, cut) is not reusable:
                # close it so the server sees the watch end and no socket leaks.
                resp.close()
            resp.release_conn()
        if self._stop.is_set():
            raise _Stopped

    def _handle_lines(self, lines: list[bytes], what: str) -> None:
        items: list[K8sObject | ObjectRef] = []
        diags_changed = False
        try:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                    etype = ev["type"]
                    raw = ev["object"]
                    if type(raw) is not dict:
                        raise TypeError(f"object is {type(raw).__name__}, not a mapping")
                except (ValueError, KeyError, TypeError) as exc:
                    raise SourceUnavailable(f"{what}: malformed watch event: {exc}") from exc
                if etype == "ERROR":
                    code = raw.get("code") if isinstance(raw, dict) else None
                    msg = (
                        f"{what}: {code} {raw.get('message', '') if isinstance(raw, dict) else raw}"
                    )
                    if code == 410:
                        raise ResourceExpired(msg)
                    raise SourceUnavailable(msg)
                md = raw.get("metadata")
                if type(md) is not dict:
                    md = {}
                new_rv = md.get("resourceVersion")
                if etype == "BOOKMARK":
                    self.stats.bookmarks += 1
                elif etype == "DELETED":
                    ref = self._ref(md)
                    if ref is not None:
                        self._known.pop(ref, None)
                        diags_changed |= self._bad.pop(ref, None) is not None
                        items.append(ref)
                    self.stats.events += 1
                else:
                    raw.setdefault("kind", self._k.kind)
                    raw.setdefault("apiVersion", self._k.api_version)
                    ref = self._ref(md)
                    before = self._known.get(ref) if ref else None
                    diag_before = self._bad.get(ref) if ref else None
                    self._convert(raw, self._known, self._bad, previous=None)
                    if ref is not None:
                        after = self._known.get(ref)
                        diags_changed |= self._bad.get(ref) != diag_before
                        if after is not None and after != before:
                            items.append(after)
                    self.stats.events += 1
                if new_rv:
                    self._rv = str(new_rv)
        finally:
            # Hand on what was read before an ERROR or a bad line, then raise.
            self.stats.resource_version = self._rv or ""
            if items or diags_changed:
                diags = tuple(self._bad.values()) if diags_changed else None
                spec, sink = self.spec, self._sink
                self._post_or_stop(lambda: sink.changed(spec, items, diags))

    def _ref(self, md: Any) -> ObjectRef | None:
        # Once per object on every list and watch event: no enum lookups here.
        if type(md) is not dict:
            return None
        name = md.get("name")
        if type(name) is not str or not name:
            return None
        ns = "" if self._cluster_scoped else md.get("namespace") or ""
        return _object_ref(self._kind, sys.intern(ns), sys.intern(name))

    def _convert(
        self,
        raw: dict[str, Any],
        known: dict[ObjectRef, K8sObject],
        bad: dict[ObjectRef, Diagnostic],
        previous: dict[ObjectRef, K8sObject] | None,
    ) -> None:
        """Convert one object into ``known``; a failure goes to ``bad`` and keeps the last good."""
        md = raw.get("metadata") or {}
        ref = self._ref(md) if isinstance(md, dict) else None
        if ref is None:
            log.warning("%s: skipping an object without metadata.name", self.spec.source)
            return
        try:
            obj = parse_object(raw, f"watch {self.spec.path}")
        except SourceError as exc:
            problem = exc.problem if isinstance(exc, InvalidObject) else str(exc)
            field = exc.field if isinstance(exc, InvalidObject) else ""
            bad[ref] = Diagnostic(
                ref=ref,
                field=field,
                message=f"cannot be read: {problem}",
                fix="correct the object; its last good version stays in use",
                code="object.invalid",
            )
            if previous is not None and ref in previous:
                known[ref] = previous[ref]
            return
        bad.pop(ref, None)
        known[ref] = obj
