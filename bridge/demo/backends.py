"""Tiny HTTP backends for the demo and the end-to-end tests: each answers with its name.

:class:`NameServer` answers every request with status 200, the body
``<name>\\n`` and the headers ``x-backend: <name>`` and ``x-path: <path>``
(the path as it arrived, so a prefix rewrite is visible). It is an asyncio
server on loopback; ``port`` 0 picks a free port. It keeps connections alive
(Envoy pools them) and counts requests.
"""

from __future__ import annotations

import asyncio
import contextlib


class NameServer:
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> NameServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            for w in list(self._writers):
                w.close()
            await server.wait_closed()

    async def __aenter__(self) -> NameServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                path = parts[1] if len(parts) > 1 else "/"
                length = 0
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                body = f"{self.name}\n".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\n"
                    b"content-type: text/plain\r\n"
                    + f"x-backend: {self.name}\r\nx-path: {path}\r\n".encode()
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
