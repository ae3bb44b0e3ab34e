"""Where the xDS server listens: TCP, a Unix socket, or TCP with mTLS.

:class:`XdsServer` binds a grpc.aio server carrying :class:`AdsServer`'s
handlers to one address:

- ``127.0.0.1:18000`` (the default) — plaintext TCP; port 0 picks a free port;
- ``unix:/path/to/socket`` — a Unix domain socket;
- TCP with :class:`ServerTls` — mTLS: clients must present a certificate
  chained to ``client_ca_pem``.

Secrets are served only over loopback TCP, a Unix socket or mTLS (the
per-stream check lives in :mod:`bridge.server.ads`); a plaintext listener on
another address is allowed but warned about at start.

This module must not know how snapshots are made or what streams do.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from bridge.errors import XdsError
from bridge.model.secrets import PrivateKey
from bridge.server.ads import AdsServer

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:18000"
# Envoy sends the whole CDS/EDS state in one message at start-up; 10k clusters
# exceed gRPC's 4 MiB default, so allow large messages both ways.
_MAX_MESSAGE = 256 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    # Keep idle ADS streams alive through NATs and notice dead peers.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """mTLS for the xDS listener: the server's chain and key, the CA clients must chain to."""

    cert_chain_pem: bytes
    private_key: PrivateKey
    client_ca_pem: bytes


def _is_loopback_tcp(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class XdsServer:
    """A running (after :meth:`start`) gRPC server for ADS on one address."""

    def __init__(
        self, ads: AdsServer, address: str = DEFAULT_ADDRESS, *, tls: ServerTls | None = None
    ) -> None:
        if address.startswith("unix:") and tls is not None:
            raise XdsError(f"xDS address {address!r}: mTLS is for TCP addresses, not Unix sockets")
        if not address.startswith("unix:") and ":" not in address:
            raise XdsError(
                f"xDS address {address!r} is not HOST:PORT or unix:/path (e.g. 127.0.0.1:18000)"
            )
        self.ads = ads
        self.address = address
        self.tls = tls
        self.port: int | None = None  # the bound TCP port (useful with port 0)
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        """What a client dials: ``host:port`` with the bound port, or ``unix:/path``."""
        if self.address.startswith("unix:") or self.port is None:
            return self.address
        return f"{self.address.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=_OPTIONS)
        server.add_generic_rpc_handlers((self.ads.handler(),))
        try:
            if self.tls is not None:
                creds = grpc.ssl_server_credentials(
                    [(self.tls.private_key.reveal(), self.tls.cert_chain_pem)],
                    root_certificates=self.tls.client_ca_pem,
                    require_client_auth=True,
                )
                port = server.add_secure_port(self.address, creds)
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise XdsError(
                f"cannot listen for xDS on {self.address!r}: {exc} "
                "(is the address in use, or the socket's directory missing?)"
            ) from exc
        if not self.address.startswith("unix:"):
            self.port = port
            if self.tls is None and not _is_loopback_tcp(self.address):
                log.warning(
                    "xDS on %s is plaintext and not loopback: secrets will not be sent over it; "
                    "use mTLS, a Unix socket or a loopback address",
                    self.address,
                )
        await server.start()
        self._server = server
        log.info("xDS server listening on %s%s", self.target, " (mTLS)" if self.tls else "")

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting streams; open streams get ``grace`` seconds, then are cancelled.

        Envoy keeps serving its last config and reconnects (to this or another
        instance), so stopping is also how an instance drains.
        """
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
            # gRPC returns once the calls are cancelled; let their handlers finish
            # their own clean-up (unwatch the cache, end their reader tasks).
            await self.ads.wait_closed()

    async def __aenter__(self) -> XdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop(0)
