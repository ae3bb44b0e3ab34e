"""Requests through the demo's gateway: one-off probes and a paced load per route.

:func:`http_get` sends one GET and returns what the demo checks: the status,
who answered (``x-backend``), and for meshed routes what the sidecar saw of
the gateway (``x-mesh-peer``: the identity it verified; ``x-mesh-peer-serial``:
which certificate). :class:`RouteLoad` sends a steady stream to one route
from a thread on one keep-alive connection and records every outcome, so a
request that fails while the gateway's certificates rotate is counted, not
missed. Pacing sleeps until the next request's slot: that is the load's
schedule, not a wait for a condition.

Loopback only; every thread stops when asked and is joined by its owner.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 5.0  # seconds; the gateway answers a loopback request in milliseconds


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no answer (connection refused, reset, timeout)
    backend: str  # x-backend: who answered
    peer: str  # x-mesh-peer: the gateway identity the sidecar verified
    serial: int | None  # x-mesh-peer-serial: the gateway certificate the sidecar saw
    latency_ms: float
    close: bool = False  # the server asked to close the connection
    error: str = ""


def request(conn: http.client.HTTPConnection, host: str, path: str) -> Answer:
    """One GET on ``conn``; never raises for a failed request (status 0 and the error)."""
    start = time.perf_counter()
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        ms = (time.perf_counter() - start) * 1000
        return Answer(0, "", "", None, ms, close=True, error=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - start) * 1000
    serial = resp.getheader("x-mesh-peer-serial") or ""
    try:
        serial_number = int(serial, 16) if serial else None
    except ValueError:
        serial_number = None
    return Answer(
        resp.status,
        resp.getheader("x-backend", ""),
        resp.getheader("x-mesh-peer", ""),
        serial_number,
        ms,
        close=(resp.getheader("connection", "").lower() == "close"),
    )


def http_get(port: int, host: str, path: str) -> Answer:
    """One GET through the gateway on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        return request(conn, host, path)
    finally:
        conn.close()


@dataclass
class LoadResult:
    total: int = 0
    ok: int = 0  # status 200 from the expected backend
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    peers: Counter[str] = field(default_factory=Counter)
    serials: set[int] = field(default_factory=set)
    first_error: str = ""

    @property
    def failed(self) -> int:
        return self.total - self.ok

    def p50(self) -> float:
        xs = sorted(self.latencies_ms)
        return xs[len(xs) // 2] if xs else 0.0


class RouteLoad:
    """``rate`` requests per second to one route, from one thread, until :meth:`stop`."""

    def __init__(self, port: int, host: str, path: str, expected_backend: str, rate: float):
        self.port, self.host, self.path = port, host, path
        self.expected_backend = expected_backend
        self.rate = rate
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load {path}", daemon=True)

    def start(self) -> RouteLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = REQUEST_TIMEOUT + 5) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def seen(self, serial: int) -> bool:
        """Whether a sidecar has answered this route with the gateway certificate ``serial``."""
        with self._lock:
            return serial in self.result.serials

    def snapshot(self) -> LoadResult:
        with self._lock:
            r = self.result
            return LoadResult(
                r.total,
                r.ok,
                Counter(r.statuses),
                list(r.latencies_ms),
                Counter(r.peers),
                set(r.serials),
                r.first_error,
            )

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        t0 = time.monotonic()
        i = 0
        try:
            while not self._stop.is_set():
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                i += 1
                if conn is None:
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
                    )
                a = request(conn, self.host, self.path)
                if a.close:
                    conn.close()
                    conn = None
                self._record(a)
        finally:
            if conn is not None:
                conn.close()

    def _record(self, a: Answer) -> None:
        with self._lock:
            r = self.result
            r.total += 1
            r.latencies_ms.append(a.latency_ms)
            if a.status:
                r.statuses[a.status] += 1
            if a.status == 200 and a.backend == self.expected_backend:
                r.ok += 1
            elif not r.first_error:
                r.first_error = a.error or (
                    f"status {a.status} from {a.backend or 'no backend'}"
                    f" (expected 200 from {self.expected_backend})"
                )
            if a.peer:
                r.peers[a.peer] += 1
            if a.serial is not None:
                r.serials.add(a.serial)
