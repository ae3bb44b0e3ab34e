"""Fixtures for the Consul adapter's tests: a running stand-in agent and fast settings."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.consul.client import ConsulClient
from adapters.consul.settings import ConsulClientSettings
from tests.standins.consul_agent import ConsulAgent


def fast_settings(agent: ConsulAgent, **over: Any) -> ConsulClientSettings:
    """Settings for ``agent`` with short waits and backoff, so tests stay quick."""
    base = ConsulClientSettings(
        host="127.0.0.1",
        port=agent.port,
        scheme="https" if agent.ssl_context else "http",
        wait_s=5.0,
        min_interval_s=0.05,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
    )
    return dataclasses.replace(base, **over)


@pytest.fixture
async def agent() -> AsyncIterator[ConsulAgent]:
    async with ConsulAgent() as a:
        yield a


@pytest.fixture
async def client(agent: ConsulAgent) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(fast_settings(agent)) as c:
        yield c
