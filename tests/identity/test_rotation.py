"""The renewal schedule and the rotation loop, on a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge.errors import IdentityUnavailable
from bridge.identity.rotation import (
    CONSUL_POLICY,
    ISTIO_POLICY,
    LINKERD_POLICY,
    RenewalPolicy,
    Rotator,
    backoff_delay,
    renewal_delay,
)
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.k8s import Kind, ObjectRef
from tests.identity.fakeclock import FakeClock
from tests.support.wait import async_wait_for

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
REF = ObjectRef(Kind.IDENTITY, "", "istio")


class _Rand(random.Random):
    """random() returns a fixed value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("policy", "received", "jitter_draw", "want"),
    [
        pytest.param(ISTIO_POLICY, T0, 0.0, 12 * 3600, id="istio-half-life"),
        pytest.param(ISTIO_POLICY, T0 + 2 * H, 0.0, 10 * 3600, id="istio-counts-from-not-before"),
        pytest.param(ISTIO_POLICY, T0, 1.0, 12 * 3600 * 0.95, id="istio-jitter-earlier-only"),
        pytest.param(LINKERD_POLICY, T0, 0.0, 24 * 3600 * 0.7, id="linkerd-70pct"),
        pytest.param(LINKERD_POLICY, T0 + 4 * H, 0.0, 20 * 3600 * 0.7, id="linkerd-of-remaining"),
        pytest.param(CONSUL_POLICY, T0, 0.5, 1.0, id="consul-on-return"),
        pytest.param(ISTIO_POLICY, T0 + 20 * H, 0.0, 1.0, id="overdue-clamped-to-min-interval"),
    ],
)
def test_renewal_delay(
    policy: RenewalPolicy, received: dt.datetime, jitter_draw: float, want: float
) -> None:
    got = renewal_delay(policy, T0, T0 + 24 * H, received, _Rand(jitter_draw))
    assert got == pytest.approx(want)


def test_backoff_doubles_and_caps() -> None:
    p = RenewalPolicy(backoff_initial=1, backoff_max=30)
    mid = _Rand(0.5)  # no jitter at the midpoint
    assert [backoff_delay(p, n, mid) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(p, 3, _Rand(0.0)) == pytest.approx(3.2)
    assert backoff_delay(p, 3, _Rand(1.0)) == pytest.approx(4.8)


@dataclass(frozen=True)
class _Cert:
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


class _Ca:
    """A CA whose answers the test scripts: a cert, or an exception."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fail: Exception | None = None
        self.calls = 0

    async def fetch(self) -> _Cert:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        now = self.clock.now()
        return _Cert(self.calls, now, now + 24 * H)


@dataclass
class _Harness:
    clock: FakeClock
    ca: _Ca
    rotator: Rotator[_Cert]
    issued: list[_Cert]
    diags: list[tuple[Diagnostic, ...]]


@pytest.fixture
async def harness() -> AsyncIterator[_Harness]:
    clock = FakeClock(T0)
    ca = _Ca(clock)
    issued: list[_Cert] = []
    diags: list[tuple[Diagnostic, ...]] = []
    rot: Rotator[_Cert] = Rotator(
        ref=REF,
        fetch=ca.fetch,
        on_issued=issued.append,
        on_diagnostics=diags.append,
        policy=RenewalPolicy(fraction=0.5, jitter=0.0, backoff_initial=10, backoff_max=600),
        clock=clock,
        rand=_Rand(0.5),
        fix="configure istio.identity",
    )
    task = asyncio.create_task(rot.run())
    try:
        yield _Harness(clock, ca, rot, issued, diags)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _settle(h: _Harness, calls: int) -> None:
    await async_wait_for(
        lambda: h.ca.calls == calls and h.clock.sleeping == 1, timeout=5, what=f"{calls} calls"
    )


async def test_renews_at_half_life(harness: _Harness) -> None:
    h = harness
    await _settle(h, 1)
    assert [c.serial for c in h.issued] == [1]
    assert h.clock.sleeps == [12 * 3600]
    assert h.rotator.next_attempt == T0 + 12 * H
    h.clock.advance(12 * 3600 - 1)
    assert h.ca.calls == 1  # not yet
    h.clock.advance(1)
    await _settle(h, 2)
    assert [c.serial for c in h.issued] == [1, 2]
    assert h.diags == []  # healthy throughout: nothing reported


async def test_failures_back_off_keep_the_cert_and_warn_near_expiry(harness: _Harness) -> None:
    h = harness
    await _settle(h, 1)
    h.ca.fail = IdentityUnavailable("istiod unreachable: connection refused")
    h.clock.advance(12 * 3600)
    await _settle(h, 2)
    # Half-life left: still plenty of time, so no diagnostic; the cert stays.
    assert h.diags == []
    assert h.rotator.current is not None and h.rotator.current.serial == 1
    assert h.clock.sleeps[-1] == 10  # first backoff
    h.clock.advance(10)
    await _settle(h, 3)
    assert h.clock.sleeps[-1] == 20  # doubles
    # Jump to 19h after issue (5h left of 24h < 25%): a warning appears.
    h.clock.set(T0 + 19 * H)
    await _settle(h, 4)
    assert len(h.diags) == 1
    (warning,) = h.diags[-1]
    assert warning.severity is Severity.WARNING
    assert warning.code == "identity.expiring"
    assert "istiod unreachable" in warning.message
    assert warning.fix == "configure istio.identity"
    # Past expiry: an error, and still no replacement was dropped on the floor.
    h.clock.set(T0 + 24 * H + dt.timedelta(minutes=1))
    await _settle(h, 5)
    (error,) = h.diags[-1]
    assert error.severity is Severity.ERROR and error.code == "identity.expired"
    assert h.rotator.current.serial == 1
    # The CA comes back: a new cert, diagnostics cleared, backoff reset.
    h.ca.fail = None
    h.clock.advance(h.clock.sleeps[-1])
    await _settle(h, 6)
    assert h.diags[-1] == ()
    assert h.issued[-1].serial == 6
    assert h.rotator.failures == 0
    assert h.clock.sleeps[-1] == 12 * 3600


async def test_no_cert_at_all_is_an_error() -> None:
    clock = FakeClock(T0)
    ca = _Ca(clock)
    ca.fail = IdentityUnavailable("connection refused")
    diags: list[tuple[Diagnostic, ...]] = []
    rot: Rotator[_Cert] = Rotator(
        ref=REF,
        fetch=ca.fetch,
        on_issued=lambda c: None,
        on_diagnostics=diags.append,
        policy=ISTIO_POLICY,
        clock=clock,
        rand=_Rand(0.5),
    )
    task = asyncio.create_task(rot.run())
    try:
        await async_wait_for(lambda: clock.sleeping == 1, timeout=5)
        (err,) = diags[-1]
        assert err.ref == REF and err.severity is Severity.ERROR
        assert err.code == "identity.unavailable" and "connection refused" in err.message
        assert rot.current is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_consul_style_refetches_when_the_blocking_call_returns() -> None:
    clock = FakeClock(T0)
    ca = _Ca(clock)
    got: list[_Cert] = []
    rot: Rotator[_Cert] = Rotator(
        ref=REF,
        fetch=ca.fetch,
        on_issued=got.append,
        on_diagnostics=lambda d: None,
        policy=CONSUL_POLICY,
        clock=clock,
    )
    task = asyncio.create_task(rot.run())
    try:
        await async_wait_for(lambda: clock.sleeping == 1, timeout=5)
        assert clock.sleeps == [1.0]  # rate limit only; the fetch itself blocks
        clock.advance(1)
        await async_wait_for(lambda: ca.calls == 2 and clock.sleeping == 1, timeout=5)
        assert len(got) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
