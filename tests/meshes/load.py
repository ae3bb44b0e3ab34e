"""A paced HTTP load generator (threads, keep-alive) that records every outcome.

Requests are scheduled at a fixed rate; each worker thread owns one keep-alive
connection and takes every ``workers``-th slot. Any answer other than 200,
and any exception, counts as a failure and is kept for the failure message.
Pacing waits for the next slot's start time: that is the load's schedule, not
a wait for a condition.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    planned: int
    done: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    peer_serials: set[int] = field(default_factory=set)  # x-mesh-peer-serial values seen
    elapsed: float = 0.0
    finished: bool = False

    @property
    def failed(self) -> int:
        return self.done - self.ok

    def percentile(self, p: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else 0.0

    def summary(self) -> str:
        rate = self.done / max(self.elapsed, 1e-9)
        return (
            f"{self.done} requests in {self.elapsed:.1f}s ({rate:.0f}/s): {self.ok} ok, "
            f"{self.failed} failed, statuses {dict(self.statuses)}, "
            f"p50 {self.percentile(0.5):.1f} ms, p99 {self.percentile(0.99):.1f} ms, "
            f"max {max(self.latencies_ms, default=0):.1f} ms"
        )


class Load:
    def __init__(
        self, port: int, path: str, *, rate: float, seconds: float, workers: int = 4
    ) -> None:
        self.port, self.path, self.rate, self.workers = port, path, rate, workers
        self.result = LoadResult(planned=int(rate * seconds))
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for w in range(self.workers):
            t = threading.Thread(target=self._work, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def join(self, timeout: float) -> LoadResult:
        for t in self._threads:
            t.join(timeout)
        self.result.elapsed = time.monotonic() - self._t0
        self.result.finished = True
        return self.result

    def stop(self) -> None:
        self._stop.set()

    def _work(self, w: int) -> None:
        conn: http.client.HTTPConnection | None = None
        for i in range(w, self.result.planned, self.workers):
            if self._stop.is_set():
                break
            delay = self._t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            start = time.monotonic()
            status, serial, error = 0, None, ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path)
                r = conn.getresponse()
                r.read()
                status = r.status
                value = r.getheader("x-mesh-peer-serial")
                serial = int(value, 16) if value else None
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                error = f"request {i}: {type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            latency = (time.monotonic() - start) * 1000
            with self._lock:
                res = self.result
                res.done += 1
                res.latencies_ms.append(latency)
                if status:
                    res.statuses[status] += 1
                if status == 200:
                    res.ok += 1
                elif error:
                    res.errors.append(error)
                else:
                    res.errors.append(f"request {i}: status {status}")
                if serial is not None:
                    res.peer_serials.add(serial)
        if conn is not None:
            conn.close()
