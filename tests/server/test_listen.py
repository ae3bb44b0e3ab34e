"""Listening on a Unix socket and on TCP with mTLS; what each transport may carry."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc

from bridge.bootstrap import envoy_bootstrap
from bridge.errors import XdsError
from bridge.identity.pki import LocalCA
from bridge.server.ads import AdsServer
from bridge.server.cache import Snapshot, SnapshotCache
from bridge.server.listen import ServerTls, XdsServer
from bridge.xds.resources import SECRET
from tests.server.builders import cla, resources, secret
from tests.server.client import SotwStream, names
from tests.server.test_envoy import backend, serves, world
from tests.support.envoy import EnvoyProcess
from tests.support.wait import async_wait_for, free_port

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    # Short path: a Unix socket path must fit in 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="mb-"))
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


async def test_unix_socket_serves_secrets(tmp_dir: Path) -> None:
    cache = SnapshotCache()
    cache.set_snapshot("default", Snapshot.from_resources(resources(secret("ca"))))
    ads = AdsServer(cache)
    sock = f"unix:{tmp_dir}/xds.sock"
    async with XdsServer(ads, sock) as server, grpc.aio.insecure_channel(server.target) as ch:
        s = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(ch), "gw")
        await s.send(SECRET, ["ca"])
        assert names(await s.recv()) == ["ca"]
        [st] = ads.status()
        assert st.peer.startswith("unix:")
        assert st.secrets
        await s.close()


async def test_mtls_requires_a_client_certificate_and_serves_secrets() -> None:
    ca = LocalCA(now=NOW, validity=dt.timedelta(days=3650))
    server_cert = ca.issue(now=NOW, validity=dt.timedelta(days=3650), dns_sans=["localhost"])
    client_cert = ca.issue(now=NOW, validity=dt.timedelta(days=3650), uri_sans=["spiffe://t/gw"])
    tls = ServerTls(
        cert_chain_pem=server_cert.cert_chain_pem.encode(),
        private_key=server_cert.private_key,
        client_ca_pem=ca.root_pem.encode(),
    )
    cache = SnapshotCache()
    cache.set_snapshot("default", Snapshot.from_resources(resources(secret("ca"))))
    ads = AdsServer(cache)
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with XdsServer(ads, "127.0.0.1:0", tls=tls) as server:
        good = grpc.ssl_channel_credentials(
            root_certificates=ca.root_pem.encode(),
            private_key=client_cert.private_key.reveal(),
            certificate_chain=client_cert.cert_chain_pem.encode(),
        )
        async with grpc.aio.secure_channel(server.target, good, options=options) as ch:
            s = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(ch), "gw")
            await s.send(SECRET, ["ca"])
            assert names(await s.recv()) == ["ca"]
            await s.close()
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.root_pem.encode())
        async with grpc.aio.secure_channel(server.target, anonymous, options=options) as ch:
            s = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(ch), "gw")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.send(SECRET, ["ca"])
                await s.recv()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await s.close()


def test_bad_addresses_are_refused_with_the_fix() -> None:
    ads = AdsServer(SnapshotCache())
    with pytest.raises(XdsError, match="HOST:PORT or unix:/path"):
        XdsServer(ads, "18000")
    with pytest.raises(XdsError, match="not Unix sockets"):
        XdsServer(ads, "unix:/x.sock", tls=ServerTls(b"", None, b""))  # type: ignore[arg-type]


async def test_address_in_use_is_a_clear_error() -> None:
    ads = AdsServer(SnapshotCache())
    async with XdsServer(ads, "127.0.0.1:0") as first:
        # gRPC sets SO_REUSEPORT on TCP, so collide on a Unix socket in a missing directory.
        with pytest.raises(XdsError, match="cannot listen for xDS"):
            await XdsServer(ads, "unix:/nonexistent-dir/xds.sock").start()
        assert first.port


@pytest.mark.e2e
async def test_envoy_over_a_unix_socket(tmp_dir: Path) -> None:
    listen = free_port()
    with backend("one") as port:
        cache = SnapshotCache()
        r = resources(cla("two", [("127.0.0.1", port)]), base=world(listen, port))
        cache.set_snapshot("default", Snapshot.from_resources(r))
        async with XdsServer(AdsServer(cache), f"unix:{tmp_dir}/xds.sock") as server:
            proc = EnvoyProcess(
                envoy_bootstrap(xds=server.target, node_id="gw", admin_port=free_port())
            )
            try:
                await asyncio.to_thread(proc.start)
                await async_wait_for(lambda: serves(listen, "one"), what="traffic via Envoy")
            finally:
                await asyncio.to_thread(proc.stop)
