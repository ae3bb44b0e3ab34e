"""A fake wall clock whose ``sleep`` returns only when the test advances time."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._sleepers: list[tuple[dt.datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []  # every delay asked for, in order

    def now(self) -> dt.datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers, (self._now + dt.timedelta(seconds=seconds), next(self._seq), fut)
        )
        await fut

    @property
    def sleeping(self) -> int:
        return sum(1 for *_, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline passes (in order)."""
        end = self._now + dt.timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not fut.done():
                fut.set_result(None)
        self._now = end

    def set(self, when: dt.datetime) -> None:
        self.advance((when - self._now).total_seconds())
