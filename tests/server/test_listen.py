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

from bridge.bootstrap import XdsTls, envoy_bootstrap
from bridge.errors import XdsError
from bridge.identity.pki import LocalCA
from bridge.server.ads import AdsServer
from bridge.server.cache import Snapshot, SnapshotCache
from bridge.server.listen import ServerTls, XdsServer
from bridge.xds.resources import SECRET
from tests.server.builders import cla, cluster, resources, secret
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


@pytest.mark.e2e
async def test_envoy_reaches_the_bridge_by_name_over_mtls_and_gets_secrets(
    tmp_dir: Path,
) -> None:
    """The bootstrap a gateway in its own pod uses: a DNS name, mTLS, secrets over SDS."""
    ca = LocalCA(now=NOW, validity=dt.timedelta(days=3650))
    server_cert = ca.issue(now=NOW, validity=dt.timedelta(days=3650), dns_sans=["localhost"])
    client_cert = ca.issue(now=NOW, validity=dt.timedelta(days=3650), uri_sans=["spiffe://t/gw"])
    (tmp_dir / "tls.crt").write_text(client_cert.cert_chain_pem)
    (tmp_dir / "tls.key").write_bytes(client_cert.private_key.reveal())
    (tmp_dir / "ca.crt").write_text(ca.root_pem)
    tls = ServerTls(
        cert_chain_pem=server_cert.cert_chain_pem.encode(),
        private_key=server_cert.private_key,
        client_ca_pem=ca.root_pem.encode(),
    )
    listen = free_port()
    with backend("one") as port:
        cache = SnapshotCache()
        # Cluster "two" verifies its peer against the SDS secret "ca": Envoy must fetch it.
        r = resources(
            cluster("two", ca_secret="ca"), secret("ca", ca.root_pem), base=world(listen, port)
        )
        cache.set_snapshot("default", Snapshot.from_resources(r))
        ads = AdsServer(cache)
        # "localhost" binds both loopback families: Envoy's resolver may answer either.
        async with XdsServer(ads, "localhost:0", tls=tls) as server:
            bootstrap = envoy_bootstrap(
                xds=f"localhost:{server.port}",
                node_id="gw",
                admin_port=free_port(),
                listen_port=listen,
                tls=XdsTls(
                    cert_file=str(tmp_dir / "tls.crt"),
                    key_file=str(tmp_dir / "tls.key"),
                    ca_file=str(tmp_dir / "ca.crt"),
                ),
            )
            assert bootstrap["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
            proc = EnvoyProcess(bootstrap)
            try:
                await asyncio.to_thread(proc.start)
                await async_wait_for(lambda: serves(listen, "one"), what="traffic via Envoy")

                def secret_acked() -> bool:
                    [st] = ads.status()
                    return st.secrets and any(
                        t.type_url == SECRET and t.acked_version for t in st.types
                    )

                await async_wait_for(secret_acked, what="the secret ACKed over mTLS")
                [st] = ads.status()
                assert st.listen_port == listen
                assert st.listen_port_problem == ""
            finally:
                await asyncio.to_thread(proc.stop)
