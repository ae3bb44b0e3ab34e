"""The one HTTP client to Consul, and Consul's blocking-query loop.

Built on py-consul's asyncio HTTP layer (``consul.aio``); the adapter uses its
``get``/``put`` with its own response callback because it needs the status,
the ``X-Consul-Index`` header and the body together, and parameters py-consul
does not send (``ns``, ``partition``, ``index`` on the agent's Connect
endpoints). The aiohttp session is built here, because py-consul 1.8 builds
it with connector arguments aiohttp deprecates.

Rules kept here so every loop follows them:

- the ACL token goes in the ``X-Consul-Token`` header only, never the URL;
- ``dc``, ``ns`` and ``partition`` are sent only when configured (Consul CE
  answers 400 to ``ns``/``partition``);
- a blocking call's read timeout exceeds ``wait + wait/16`` (Consul adds up
  to wait/16 of jitter);
- :class:`BlockingIndex`: the index comes from ``X-Consul-Index``, resets to
  0 when it goes backwards, and is never 0 after a first answer;
- :func:`run_blocking`: at most one call per ``min_interval_s``, exponential
  backoff with jitter after errors.

Library exceptions are wrapped: connection failures, timeouts and 5xx become
:class:`bridge.errors.SourceUnavailable`; 4xx become :class:`ConsulHttpError`.
Error messages never contain the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import consul.aio
from consul import base as consul_base

from adapters.consul.settings import ConsulClientSettings
from bridge.errors import ConfigError, SourceError, SourceUnavailable

log = logging.getLogger(__name__)

_READ_SLACK_S = 5.0


class ConsulHttpError(SourceError):
    """Consul answered 4xx: the request itself is wrong (ACL, parameter, body)."""

    def __init__(self, status: int, path: str, body: str) -> None:
        self.status = status
        self.path = path
        self.body = body[:500]
        super().__init__(f"Consul answered {status} to {path}: {self.body.strip()}")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    index: int | None  # X-Consul-Index, when present
    body: Any  # decoded JSON


def build_ssl_context(settings: ConsulClientSettings) -> ssl.SSLContext | bool:
    """TLS to the agent (CA, client certificate), or False for plain HTTP."""
    if settings.scheme != "https":
        return False
    ca_loaded = False
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file)
        ca_loaded = True
        if settings.cert_file and settings.key_file:
            ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        # Name the file that failed: the CA is loaded first, then the key pair.
        key = "consul.tls.ca_file" if not ca_loaded else "consul.tls.cert_file"
        raise ConfigError(
            f"cannot load Consul TLS files (CA {settings.ca_file!r}, "
            f"certificate {settings.cert_file!r}): {exc}",
            path=key,
        ) from exc
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _HttpClient(consul.aio.HTTPClient):  # type: ignore[misc]
    """py-consul's aiohttp client, with a session built with current aiohttp arguments."""

    def __init__(self, settings: ConsulClientSettings) -> None:
        consul_base.HTTPClient.__init__(
            self, settings.host, settings.port, settings.scheme, settings.verify, None
        )
        self.loop = None
        connector = aiohttp.TCPConnector(ssl=build_ssl_context(settings), limit=0)
        self._session = aiohttp.ClientSession(connector=connector)


class _Consul(consul.aio.Consul):  # type: ignore[misc]
    def __init__(self, settings: ConsulClientSettings) -> None:
        self._settings = settings
        super().__init__(host=settings.host, port=settings.port, scheme=settings.scheme)
        # py-consul reads CONSUL_HTTP_TOKEN itself; the adapter's settings decide.
        self.token = None

    def http_connect(
        self, host: str, port: int, scheme: Any, verify: bool | str = True, cert: Any = None
    ) -> _HttpClient:
        return _HttpClient(self._settings)


def _raw(response: Any) -> Any:
    return response


class ConsulClient:
    """An open connection pool to one Consul agent. Use ``async with`` or call :meth:`close`."""

    def __init__(self, settings: ConsulClientSettings) -> None:
        self.settings = settings
        self._consul: _Consul | None = None

    async def __aenter__(self) -> ConsulClient:
        self._api()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._consul is not None:
            await self._consul.close()
            self._consul = None

    def _api(self) -> _Consul:
        if self._consul is None:
            self._consul = _Consul(self.settings)
        return self._consul

    def _headers(self) -> dict[str, str]:
        if self.settings.token is None:
            return {}
        return {"X-Consul-Token": self.settings.token.reveal().decode()}

    def scope_params(
        self, *, datacenter: str = "", namespace: str = "", partition: str = ""
    ) -> list[tuple[str, str]]:
        """``dc``/``ns``/``partition``, each only when set (here or in the settings)."""
        out: list[tuple[str, str]] = []
        dc = datacenter or self.settings.datacenter
        if dc:
            out.append(("dc", dc))
        ns = namespace or self.settings.namespace
        if ns:
            out.append(("ns", ns))
        ap = partition or self.settings.partition
        if ap:
            out.append(("partition", ap))
        return out

    async def get(
        self,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        index: int = 0,
        wait_s: float | None = None,
    ) -> Reply:
        """GET ``path``; a blocking query when ``index`` > 0 (Consul ignores wait otherwise)."""
        q = list(params)
        timeout = 30.0
        if index > 0:
            wait = self.settings.wait_s if wait_s is None else wait_s
            q += [("index", str(index)), ("wait", _go_duration(wait))]
            timeout = wait + wait / 16 + _READ_SLACK_S
        return await self._call("GET", path, q, None, timeout)

    async def put(self, path: str, body: Any, params: Sequence[tuple[str, str]] = ()) -> Reply:
        return await self._call("PUT", path, list(params), json.dumps(body), 30.0)

    async def _call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        data: str | None,
        read_timeout_s: float,
    ) -> Reply:
        http = self._api().http
        try:
            if method == "GET":
                resp = await http.get(
                    _raw,
                    path,
                    params=params,
                    headers=self._headers(),
                    connections_timeout=read_timeout_s,
                )
            else:
                resp = await http.put(
                    _raw,
                    path,
                    params=params,
                    data=data or "",
                    headers={**self._headers(), "Content-Type": "application/json"},
                    connections_timeout=read_timeout_s,
                )
        except (aiohttp.ClientError, TimeoutError, OSError, consul.Timeout) as exc:
            raise SourceUnavailable(
                f"Consul at {self.settings.base_url} unreachable ({method} {path}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        status = int(resp.code)
        if status >= 500:
            raise SourceUnavailable(
                f"Consul at {self.settings.base_url} answered {status} to {path}: "
                f"{str(resp.body)[:300].strip()}"
            )
        if status >= 400 and not (status == 409 and path == "/v1/txn"):
            raise ConsulHttpError(status, path, str(resp.body))
        raw_index = resp.headers.get("X-Consul-Index")
        try:
            index = int(raw_index) if raw_index is not None else None
            body = json.loads(resp.body) if resp.body else None
        except ValueError as exc:
            raise SourceUnavailable(f"Consul sent an unreadable answer to {path}: {exc}") from exc
        return Reply(status, index, body)


def _go_duration(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class BlockingIndex:
    """The index of one blocking-query loop, kept by Consul's rules."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, returned: int | None) -> None:
        """Take the ``X-Consul-Index`` of an answer."""
        if returned is None:
            return
        if returned < self.value:
            # Went backwards (a snapshot restore, a new leader): start over with a
            # non-blocking read, or the loop would wait for an index that never comes.
            self.value = 0
            return
        # Never block with 0 after a first answer: Consul returns at once for 0.
        self.value = max(returned, 1)


class Backoff:
    """Exponential backoff with jitter: each delay in [d/2, d], d doubling to a cap."""

    def __init__(self, base_s: float, max_s: float, rand: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self._rand = rand or random.Random()

    def next_delay(self) -> float:
        d = min(self.max_s, self.base_s * (2.0**self.failures))
        self.failures += 1
        return d / 2 + self._rand.uniform(0, d / 2)

    def reset(self) -> None:
        self.failures = 0


async def run_blocking(
    client: ConsulClient,
    path: str,
    params: Sequence[tuple[str, str]],
    on_reply: Callable[[Reply], Awaitable[None] | None],
    on_error: Callable[[Exception], Awaitable[None] | None],
    *,
    wait_s: float | None = None,
) -> None:
    """Call ``path`` as a blocking query forever (until cancelled).

    ``on_reply`` gets every answer, changed or not (Consul answers on any
    change in the table, on the wait timeout, and after restores), so it
    must compare before acting. ``on_error`` gets each failure; the loop
    then waits with backoff and tries again.
    """
    s = client.settings
    idx = BlockingIndex()
    backoff = Backoff(s.backoff_base_s, s.backoff_max_s)
    loop = asyncio.get_running_loop()
    last_call = -1e18
    while True:
        pause = last_call + s.min_interval_s - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        last_call = loop.time()
        try:
            reply = await client.get(path, params, index=idx.value, wait_s=wait_s)
        except (SourceError, ConfigError) as exc:
            await _maybe_await(on_error(exc))
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        idx.update(reply.index)
        await _maybe_await(on_reply(reply))


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


def entries(reply: Reply) -> list[Mapping[str, Any]]:
    """The body as a list of objects (Consul sends ``null`` for none)."""
    body = reply.body
    if body is None:
        return []
    if not isinstance(body, list):
        raise SourceError(f"Consul sent {type(body).__name__} where a list was expected")
    return [e for e in body if isinstance(e, Mapping)]
