"""The admin HTTP server: a tiny asyncio HTTP/1.1 server for health and debug pages.

:class:`AdminServer` answers ``GET``/``HEAD`` requests by exact path from a
table of handlers; each handler returns a :class:`Response`. It serves
``/healthz`` (the process is up) and ``/readyz`` (every source synced and the
first snapshot published) out of the box — see :func:`health_handlers` — and
others register more pages (``/metrics``, ``/debug``) with :meth:`route`, or
with :meth:`route_request` for a page that reads its query string (given as a
:class:`Request`, each parameter's last value, percent-decoded).

It reads one request per connection (``Connection: close``): the admin port
is for probes and people, not load. Request heads over 16 KiB or slower than
10 s are dropped. It must not reveal secrets: handlers render only what
they are given, and nothing here logs request contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from bridge.errors import MeshbridgeError

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())


@dataclass(frozen=True, slots=True)
class Request:
    """What a page is asked: its path and query parameters (last value of each)."""

    path: str
    query: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, target: str) -> Request:
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qsl(query, keep_blank_values=True)
        return cls(urllib.parse.unquote(path), dict(params))


Handler = Callable[[], Response | Awaitable[Response]]
RequestHandler = Callable[[Request], Response | Awaitable[Response]]


def health_handlers(ready: Callable[[], tuple[bool, str]]) -> dict[str, Handler]:
    """``/healthz`` and ``/readyz``; ``ready()`` says whether and why (not) ready."""

    def healthz() -> Response:
        return Response.text("ok\n")

    def readyz() -> Response:
        ok, why = ready()
        return Response.text(f"{why}\n", 200 if ok else 503)

    return {"/healthz": healthz, "/readyz": readyz}


class AdminServer:
    """Serves registered pages on ``host:port`` (port 0 picks a free port)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._routes: dict[str, RequestHandler] = {}
        self._server: asyncio.Server | None = None

    def route(self, path: str, handler: Handler) -> None:
        """Serve ``handler()`` at ``path`` (any query string is ignored)."""
        self._routes[path] = lambda _request: handler()

    def route_request(self, path: str, handler: RequestHandler) -> None:
        """Serve ``handler(request)`` at ``path``: for pages that read the query."""
        self._routes[path] = handler

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise MeshbridgeError(
                f"cannot listen for the admin server on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("admin server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            response, method = await self._respond(head)
            reason = HTTPStatus(response.status).phrase
            writer.write(
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(response.body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[Response, str]:
        if len(head) > _MAX_HEAD:
            return Response.text("request head too large\n", 431), "GET"
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return Response.text("bad request\n", 400), "GET"
        if method not in ("GET", "HEAD"):
            return Response.text("only GET and HEAD\n", 405), method
        request = Request.parse(target)
        path = request.path
        handler = self._routes.get(path)
        if handler is None:
            known = "\n".join(sorted(self._routes))
            return Response.text(f"not found; pages:\n{known}\n", 404), method
        try:
            result = handler(request)
            if not isinstance(result, Response):
                result = await result
        except Exception:
            log.exception("admin page %s failed", path)
            return Response.text("internal error (see the log)\n", 500), method
        return result, method
