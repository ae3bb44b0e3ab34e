"""When to renew a mesh identity, and the loop that does it.

Each mesh renews on its own schedule (DESIGN.md §5):

- Istio: at 50% of the certificate's lifetime (istio-agent's rule);
- Linkerd: at 70% of the time remaining when the certificate arrived;
- Consul: whenever the blocking leaf query returns (Consul answers early
  when the leaf nears expiry or the roots rotate).

Renewal is moved earlier by a random jitter so that many gateways do not hit
the CA together. A failed renewal is retried with exponential backoff; the
current certificate keeps being served until it expires (nothing here removes
it). While renewal keeps failing a diagnostic says so: a warning once the
certificate is in the last part of its life, an error once it has expired or
when there never was one.

Time and randomness are injected (:class:`Clock`, :class:`random.Random`) so
tests drive the loop with a fake clock. This module never logs key material.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.k8s import ObjectRef

log = logging.getLogger("bridge.identity")


class Clock(Protocol):
    """Wall-clock time (aware, UTC) and a way to wait; faked in tests."""

    def now(self) -> dt.datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """A mesh's renewal rule, plus the retry and warning knobs."""

    fraction: float = 0.5  # of the lifetime (or of the remaining time, below)
    of_remaining: bool = False  # Linkerd: fraction of the time left on arrival
    on_return: bool = False  # Consul: renew whenever the (blocking) fetch returns
    jitter: float = 0.05  # renew up to this fraction of the delay earlier
    backoff_initial: float = 1.0  # seconds
    backoff_max: float = 60.0
    warn_remaining: float = 0.25  # warn when less than this fraction of lifetime is left
    min_interval: float = 1.0  # never fetch more often than this (seconds)


ISTIO_POLICY = RenewalPolicy(fraction=0.5)
LINKERD_POLICY = RenewalPolicy(fraction=0.7, of_remaining=True)
CONSUL_POLICY = RenewalPolicy(on_return=True, jitter=0.0)


class Validity(Protocol):
    @property
    def not_before(self) -> dt.datetime: ...

    @property
    def not_after(self) -> dt.datetime: ...


V = TypeVar("V", bound=Validity)


def renewal_delay(
    policy: RenewalPolicy,
    not_before: dt.datetime,
    not_after: dt.datetime,
    received_at: dt.datetime,
    rand: random.Random,
) -> float:
    """Seconds from ``received_at`` until renewal is due, jitter applied (never negative)."""
    if policy.on_return:
        return policy.min_interval
    if policy.of_remaining:
        delay = (not_after - received_at).total_seconds() * policy.fraction
    else:
        due = not_before + (not_after - not_before) * policy.fraction
        delay = (due - received_at).total_seconds()
    # Jitter only ever moves renewal earlier: later would eat into the margin.
    delay -= delay * policy.jitter * rand.random()
    return max(delay, policy.min_interval)


def backoff_delay(policy: RenewalPolicy, failures: int, rand: random.Random) -> float:
    """Seconds before retry number ``failures`` (1-based): doubling, capped, ±20% jitter."""
    base = min(policy.backoff_max, policy.backoff_initial * float(2 ** max(failures - 1, 0)))
    return base * (0.8 + 0.4 * rand.random())


class Rotator(Generic[V]):
    """Fetches an identity, hands it on, and renews it on schedule until cancelled.

    ``fetch`` obtains a new certificate (CSR to the CA, blocking query, ...);
    it raises on failure. ``on_issued`` receives each new one. ``on_diagnostics``
    receives the current diagnostics (empty once healthy again) whenever they
    change.
    """

    def __init__(
        self,
        *,
        ref: ObjectRef,
        fetch: Callable[[], Awaitable[V]],
        on_issued: Callable[[V], None],
        on_diagnostics: Callable[[tuple[Diagnostic, ...]], None],
        policy: RenewalPolicy,
        clock: Clock,
        rand: random.Random | None = None,
        fix: str = "",
    ) -> None:
        self._ref = ref
        self._fetch = fetch
        self._on_issued = on_issued
        self._on_diagnostics = on_diagnostics
        self.policy = policy
        self._clock = clock
        self._rand = rand if rand is not None else random.Random()
        self._fix = fix
        self.current: V | None = None
        self.failures = 0
        self.last_error = ""
        self.failing_since: dt.datetime | None = None
        self.next_attempt: dt.datetime | None = None
        self._diags: tuple[Diagnostic, ...] = ()

    async def run(self) -> None:
        while True:
            try:
                issued = await self._fetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the CA path: retry, keep serving
                delay = self._failed(exc)
            else:
                delay = self._succeeded(issued)
            self.next_attempt = self._clock.now() + dt.timedelta(seconds=delay)
            await self._clock.sleep(delay)

    def _succeeded(self, issued: V) -> float:
        now = self._clock.now()
        self.current = issued
        self.failures = 0
        self.last_error = ""
        self.failing_since = None
        self._on_issued(issued)
        self._set_diagnostics(())
        delay = renewal_delay(self.policy, issued.not_before, issued.not_after, now, self._rand)
        log.info(
            "%s: new certificate valid until %s; renewing in %.0fs",
            self._ref,
            issued.not_after.isoformat(),
            delay,
        )
        return delay

    def _failed(self, exc: Exception) -> float:
        now = self._clock.now()
        self.failures += 1
        self.last_error = str(exc) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = now
        delay = backoff_delay(self.policy, self.failures, self._rand)
        log.warning(
            "%s: renewal failed (attempt %d): %s; retrying in %.1fs",
            self._ref,
            self.failures,
            self.last_error,
            delay,
        )
        self._set_diagnostics(self._failure_diagnostics(now))
        return delay

    def _failure_diagnostics(self, now: dt.datetime) -> tuple[Diagnostic, ...]:
        cur = self.current
        since = self.failing_since.isoformat() if self.failing_since else now.isoformat()
        if cur is None:
            return (
                Diagnostic(
                    ref=self._ref,
                    field="identity",
                    message=f"no certificate yet: {self.last_error}",
                    fix=self._fix,
                    severity=Severity.ERROR,
                    code="identity.unavailable",
                ),
            )
        if now >= cur.not_after:
            return (
                Diagnostic(
                    ref=self._ref,
                    field="identity",
                    message=(
                        f"certificate expired at {cur.not_after.isoformat()}; renewal failing "
                        f"since {since}: {self.last_error}"
                    ),
                    fix=self._fix,
                    severity=Severity.ERROR,
                    code="identity.expired",
                ),
            )
        lifetime = (cur.not_after - cur.not_before).total_seconds()
        left = (cur.not_after - now).total_seconds()
        if left < lifetime * self.policy.warn_remaining:
            return (
                Diagnostic(
                    ref=self._ref,
                    field="identity",
                    message=(
                        f"certificate expires at {cur.not_after.isoformat()} and renewal keeps "
                        f"failing (since {since}): {self.last_error}"
                    ),
                    fix=self._fix,
                    severity=Severity.WARNING,
                    code="identity.expiring",
                ),
            )
        return ()

    def _set_diagnostics(self, diags: tuple[Diagnostic, ...]) -> None:
        if diags != self._diags:
            self._diags = diags
            self._on_diagnostics(diags)
