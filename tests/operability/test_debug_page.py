"""``/debug`` rendered by a real headless browser, and ``/debug/snapshot.json``.

Chromium (Debian's package; ``.ci/run`` installs it) loads the page from the
running bridge, dumps the DOM after rendering and takes a screenshot, saved
as ``tests/artifacts/debug.png`` for people to look at; then the same for a
search (``/debug?q=reviews``, ``tests/artifacts/debug-search.png``). The test is skipped,
saying why, only where chromium is not installed.
"""

from __future__ import annotations

import asyncio
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bridge.metrics import type_name
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from tests.operability.support import SERVICES, running_bridge
from tests.server.client import SotwStream
from tests.support.wait import async_wait_for

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
            # The search: the server filters, the browser renders what matches.
            search_url = env.admin + "/debug?q=reviews"
            found = await asyncio.to_thread(
                chromium, tmp_path / "profile", search_url, "--dump-dom"
            )
            search_shot = ARTIFACTS / "debug-search.png"
            search_shot.unlink(missing_ok=True)
            took_search = await asyncio.to_thread(
                chromium, tmp_path / "profile", search_url, f"--screenshot={search_shot}"
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
    # The trust bundle it verifies with, and when that expires.
    assert re.search(r"trust bundletrust/istio expires \d{4}-\d\d-\d\d [\d:]+Z \(in ", reviews)
    voting = parser.sections["emojivoto/voting"]
    assert "DNS:voting.emojivoto.serviceaccount.identity.linkerd.cluster.local" in voting
    assert "identity/consul expires" in parser.sections["payments/payments"]
    # The connected Envoy with its NACK, the sources and the identities.
    assert "op-gateway" in text and "refused by the test client" in text
    assert "dir" in text and "synced" in text
    assert "identity/linkerd" in text
    # Problems sort first.
    assert text.index('data-service="shop/legacy"') < text.index('data-service="shop/web"')

    # The identities table shows each mesh's trust bundle expiry next to the identity's.
    assert "trust/linkerd</code> expires" in text and "trust/consul</code> expires" in text

    assert took.returncode == 0, took.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1600)
    assert len(data) > 50_000, "the screenshot is nearly empty"

    assert found.returncode == 0, found.stderr.decode()[-2000:]
    searched = _Sections()
    searched.feed(found.stdout.decode())
    assert set(searched.sections) == {"bookstore/reviews"}, sorted(searched.sections)
    assert "1 of 5 Services match" in found.stdout.decode()
    assert took_search.returncode == 0, took_search.stderr.decode()[-2000:]
    assert png_size(search_shot.read_bytes()) == (1280, 1600)


async def test_values_are_escaped(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        evil = "<script>alert(1)</script>"
        path = env.world / "shop.yaml"
        path.write_text(path.read_text().replace("timeout: soon", f"timeout: '{evil}'"))
        await _wait_for_page(env, "&lt;script&gt;alert(1)&lt;/script&gt;")
        _, _, body = await env.get("/debug")
        # The search words are echoed back into the page: escaped too.
        status, _, searched = await env.get("/debug?q=%3Cscript%3Ealert(2)%3C/script%3E")
    assert evil.encode() not in body
    assert b"<script" not in body  # the page has no script of its own
    assert status == 200 and b"<script" not in searched
    assert b"&lt;script&gt;alert(2)&lt;/script&gt;" in searched


async def test_snapshot_json_lists_resources_and_versions(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        status, ctype, body = await env.get("/debug/snapshot.json?type=clusters")
        _, _, secrets_body = await env.get("/debug/snapshot.json?type=secrets")
        snap = env.app.publisher.snapshot
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert snap is not None
    assert doc["versions"]["cluster"] == snap.version(CLUSTER)
    assert list(doc["resources"]) == ["cluster"]
    clusters = {c["name"]: c for c in doc["resources"]["cluster"]}
    assert set(clusters) == set(snap.entries(CLUSTER))
    assert "shop/web/http" in clusters
    web = clusters["shop/web/http"]
    assert web["version"] == snap.entries(CLUSTER)["shop/web/http"].version
    assert web["resource"]["name"] == "shop/web/http"
    doc = json.loads(secrets_body)
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


async def test_snapshot_json_default_is_versions_and_names_with_links(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        status, _, body = await env.get("/debug/snapshot.json")
        snap = env.app.publisher.snapshot
        assert snap is not None
        doc = json.loads(body)
        # Each link in the default form works and gives that type in full.
        for param, link in doc["links"].items():
            if "<" in link:
                continue
            got = json.loads((await env.get(link))[2])
            assert got["query"] == {"type": param, "name": None}, link
    assert status == 200
    assert "resources" not in doc, "the default form must stay cheap: names only"
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET):
        short = type_name(type_url)
        assert doc["versions"][short] == snap.version(type_url)
        assert doc["names"][short] == sorted(snap.entries(type_url))
        assert doc["counts"][short] == len(snap.entries(type_url))
    assert doc["links"]["clusters"] == "/debug/snapshot.json?type=clusters"
    assert set(doc["links"]) >= {"clusters", "endpoints", "listeners", "routes", "secrets"}
    assert {s["name"] for s in doc["mesh_secrets"]} >= {"identity/consul", "trust/consul"}


async def test_snapshot_json_filters_by_type_and_name(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        by_name = json.loads((await env.get("/debug/snapshot.json?name=bookstore/"))[2])
        both = json.loads((await env.get("/debug/snapshot.json?type=endpoint&name=shop/"))[2])
        secrets = json.loads((await env.get("/debug/snapshot.json?type=secrets&name=istio"))[2])
        bad_type = await env.get("/debug/snapshot.json?type=clusterz")
        bad_param = await env.get("/debug/snapshot.json?typ=clusters")
    # A name search looks through every type.
    assert by_name["query"] == {"type": None, "name": "bookstore/"}
    names = {t: [r["name"] for r in rs] for t, rs in by_name["resources"].items()}
    assert names["cluster"] == ["bookstore/reviews/http"]
    assert names["endpoint"] == ["bookstore/reviews/http"]
    assert names["listener"] == [] and names["secret"] == []
    assert by_name["mesh_secrets"] == []
    # Type and name together; the singular type name works too.
    assert both["query"] == {"type": "endpoints", "name": "shop/"}
    assert list(both["resources"]) == ["endpoint"]
    assert [r["name"] for r in both["resources"]["endpoint"]] == ["shop/web/http"]
    assert [r["name"] for r in secrets["resources"]["secret"]] == [
        "identity/istio",
        "trust/istio",
    ]
    assert [s["name"] for s in secrets["mesh_secrets"]] == ["identity/istio", "trust/istio"]
    # Bad input: 400, saying what is wrong and what works.
    assert bad_type[0] == 400 and b"type='clusterz' is not one of" in bad_type[2]
    assert b"secrets, clusters, endpoints, listeners, routes" in bad_type[2]
    assert bad_param[0] == 400 and b"unknown parameter(s) typ" in bad_param[2]
    assert b"type=<" in bad_param[2] and b"name=<substring>" in bad_param[2]


async def test_snapshot_json_is_rendered_once_per_snapshot_and_query(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        pages = env.app.snapshot_pages
        first = await env.get("/debug/snapshot.json?type=endpoints")
        renders = pages.renders
        again = await env.get("/debug/snapshot.json?type=endpoints")
        assert again == first and pages.renders == renders, "the same page was rendered again"
        await env.get("/debug/snapshot.json?type=clusters")
        assert pages.renders == renders + 1, "another query is another page"
        # A new snapshot: the page is rendered anew and shows the change.
        published = env.app.pipeline.published
        # Replaced in one step, as editors and ConfigMap mounts do: a file
        # rewritten in place can be read half-written (a real, separate change).
        changed = tmp_path / "web-slice.yaml.new"
        changed.write_text((env.world / "web-slice.yaml").read_text().replace("8080", "8081"))
        os.replace(changed, env.world / "web-slice.yaml")
        await async_wait_for(lambda: env.app.pipeline.published > published, timeout=10)
        after = await env.get("/debug/snapshot.json?type=endpoints")
    assert pages.renders == renders + 2
    assert after != first and b"8081" in after[2] and b"8081" not in first[2]


async def _wait_for_page(env: object, needle: str) -> None:
    from tests.operability.support import Running

    assert isinstance(env, Running)

    async def has() -> bool:
        return needle.encode() in (await env.get("/debug"))[2]

    await async_wait_for(has, timeout=10, what=f"/debug to show {needle}")


async def _nacking_client(target: str) -> tuple[object, SotwStream]:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc as ads_grpc

    channel = grpc.aio.insecure_channel(target)
    stream = SotwStream(ads_grpc.AggregatedDiscoveryServiceStub(channel), "op-gateway")
    await stream.send(CLUSTER)
    resp = await stream.recv()
    await stream.send(CLUSTER, version="", nonce=resp.nonce, error="refused by the test client")
    return channel, stream
