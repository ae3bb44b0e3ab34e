"""``/debug`` rendered by a real headless browser, and ``/debug/snapshot.json``.

Chromium (Debian's package; ``.ci/run`` installs it) loads the page from the
running bridge, dumps the DOM after rendering and takes a screenshot, saved
as ``tests/artifacts/debug.png`` for people to look at. The test is skipped,
saying why, only where chromium is not installed.
"""

from __future__ import annotations

import asyncio
import html.parser
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.operability.support import SERVICES, running_bridge
from tests.server.client import SotwStream

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}",
            "--window-size=1280,1600",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


class _Sections(html.parser.HTMLParser):
    """The text of each ``<section data-service=...>`` of a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._current is not None:
            self._depth += tag == "section"
            return
        svc = dict(attrs).get("data-service")
        if tag == "section" and svc:
            self._current = svc
            self._depth = 0
            self.sections[svc] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag == "section":
            if self._depth == 0:
                self._current = None
            else:
                self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self.sections[self._current] += data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_debug_page_in_a_real_browser(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        # An Envoy-like client that NACKs, so the page has an Envoy and a NACK to show.
        channel, stream = await _nacking_client(env.app.xds_target)
        try:
            url = env.admin + "/debug"
            dom = await asyncio.to_thread(chromium, tmp_path / "profile", url, "--dump-dom")
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "debug.png"
            shot.unlink(missing_ok=True)
            took = await asyncio.to_thread(
                chromium, tmp_path / "profile", url, f"--screenshot={shot}"
            )
        finally:
            await stream.close()
            await channel.close()
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    parser = _Sections()
    parser.feed(text)
    # Every Service of the test world is listed, with its diagnostics.
    assert set(parser.sections) == set(SERVICES), sorted(parser.sections)
    for name, problem in SERVICES.items():
        section = parser.sections[name]
        if problem:
            assert problem in section and "error" in section, section
            assert "left out" in section
        else:
            assert "routed" in section, section
    # Mesh, why, and TLS settings as resolved: Istio's SNI, SAN and ALPN, Linkerd's DNS SAN.
    reviews = parser.sections["bookstore/reviews"]
    assert "mesh istio" in reviews and "mesh (why)istio (pod bookstore/reviews-v1 label" in reviews
    assert "outbound_.9080_._.reviews.bookstore.svc.cluster.local" in reviews
    assert "URI:spiffe://cluster.local/ns/bookstore/sa/bookstore-reviews" in reviews
    assert "istio-http/1.1" in reviews and "identity/istio expires" in reviews
    voting = parser.sections["emojivoto/voting"]
    assert "DNS:voting.emojivoto.serviceaccount.identity.linkerd.cluster.local" in voting
    assert "identity/consul expires" in parser.sections["payments/payments"]
    # The connected Envoy with its NACK, the sources and the identities.
    assert "op-gateway" in text and "refused by the test client" in text
    assert "dir" in text and "synced" in text
    assert "identity/linkerd" in text
    # Problems sort first.
    assert text.index('data-service="shop/legacy"') < text.index('data-service="shop/web"')

    assert took.returncode == 0, took.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1600)
    assert len(data) > 50_000, "the screenshot is nearly empty"


async def test_values_are_escaped(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        evil = "<script>alert(1)</script>"
        path = env.world / "shop.yaml"
        path.write_text(path.read_text().replace("timeout: soon", f"timeout: '{evil}'"))
        await _wait_for_page(env, "&lt;script&gt;alert(1)&lt;/script&gt;")
        _, _, body = await env.get("/debug")
    assert evil.encode() not in body
    assert body.count(b"<script>") == 1  # the page's own filter script, nothing else


async def test_snapshot_json_lists_resources_and_versions(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        status, ctype, body = await env.get("/debug/snapshot.json")
        snap = env.app.publisher.snapshot
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert snap is not None
    assert doc["versions"]["cluster"] == snap.version(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    )
    clusters = {c["name"]: c for c in doc["resources"]["cluster"]}
    assert "shop/web/http" in clusters
    secrets = {s["name"]: s["resource"] for s in doc["resources"]["secret"]}
    ident = secrets["identity/istio"]["tlsCertificate"]
    assert ident["privateKey"]["redacted"] is True and len(ident["privateKey"]["sha256"]) == 12
    cert = ident["certificateChain"]["certificates"][0]
    assert cert["uri_sans"] == ["spiffe://cluster.local/ns/meshbridge/sa/meshbridge"]
    assert cert["not_after"].endswith("Z")
    trust = secrets["trust/linkerd"]["validationContext"]["trustedCa"]["certificates"][0]
    assert trust["is_ca"] is True
    mesh = {s["name"]: s for s in doc["mesh_secrets"]}
    assert mesh["identity/consul"]["private_key"] == {
        "redacted": True,
        "sha256": mesh["identity/consul"]["private_key"]["sha256"],
    }


async def _wait_for_page(env: object, needle: str) -> None:
    from tests.operability.support import Running
    from tests.support.wait import async_wait_for

    assert isinstance(env, Running)

    async def has() -> bool:
        return needle.encode() in (await env.get("/debug"))[2]

    await async_wait_for(has, timeout=10, what=f"/debug to show {needle}")


async def _nacking_client(target: str) -> tuple[object, SotwStream]:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc

    from bridge.xds.resources import CLUSTER

    channel = grpc.aio.insecure_channel(target)
    stream = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(channel), "op-gateway")
    await stream.send(CLUSTER)
    resp = await stream.recv()
    await stream.send(CLUSTER, version="", nonce=resp.nonce, error="refused by the test client")
    return channel, stream
