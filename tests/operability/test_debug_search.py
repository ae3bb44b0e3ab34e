"""``/debug`` on a world larger than it renders: the search finds every Service.

The page renders at most ``MAX_SERVICES`` Services and counts the rest; the
search box (``/debug?q=...``) filters on the server, so a Service beyond the
first page is found by name, namespace, route prefix or mesh. The world here
is ``MAX_SERVICES + 100`` exposed Services put into the store of a real
bridge, whose admin server answers over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator

from bridge import debug
from bridge.app import Bridge, Source, wait_ready
from bridge.config import load_config
from bridge.model.frozen import FrozenDict
from bridge.model.k8s import (
    EndpointPort,
    K8sEndpointSlice,
    K8sNamespace,
    K8sService,
    ServicePort,
    SliceEndpoint,
)
from bridge.store import Store

N = debug.MAX_SERVICES + 100
SOURCE = "many"


class ManyServices:
    """A source holding N exposed Services in ten namespaces; one has a bad timeout."""

    name = SOURCE

    def __init__(self, store: Store) -> None:
        self.store = store
        store.register_source(SOURCE)

    async def run(self) -> None:
        for n in range(10):
            self.store.upsert(SOURCE, K8sNamespace(name=f"team{n}"))
        for i in range(N):
            ns = f"team{i % 10}"
            annotations = {"meshbridge.io/prefix": f"/app{i}/", "meshbridge.io/mesh": "none"}
            if i == N - 1:
                annotations["meshbridge.io/timeout"] = "later"
            self.store.upsert(
                SOURCE,
                K8sService(
                    namespace=ns,
                    name=f"app{i}",
                    ports=(ServicePort(port=80, name="http", target_port=8080),),
                    annotations=FrozenDict(annotations),
                ),
            )
            self.store.upsert(
                SOURCE,
                K8sEndpointSlice(
                    namespace=ns,
                    name=f"app{i}-a",
                    service_name=f"app{i}",
                    ports=(EndpointPort(port=8080, name="http"),),
                    endpoints=(SliceEndpoint(addresses=(f"10.1.{i // 250}.{i % 250 + 1}",)),),
                ),
            )
        self.store.mark_synced(SOURCE)
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def bridge() -> AsyncIterator[Bridge]:
    config = load_config(None, env={})

    def sources(store: Store) -> list[Source]:
        return [ManyServices(store)]

    app = Bridge(config, sources, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", drain=0)
    await app.start()
    try:
        await wait_ready(app)
        yield app
    finally:
        await app.stop(0)


async def get(app: Bridge, path: str) -> tuple[int, str]:
    assert app.admin is not None
    url = f"http://127.0.0.1:{app.admin.port}{path}"

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    return await asyncio.to_thread(fetch)


def listed(page: str) -> list[str]:
    return re.findall(r'data-service="([^"]+)"', page)


async def test_the_search_finds_services_beyond_the_first_page() -> None:
    async with bridge() as app:
        status, plain = await get(app, "/debug")
        assert status == 200
        shown = listed(plain)
        # The page renders MAX_SERVICES, problems first, and says how many are left.
        assert len(shown) == debug.MAX_SERVICES
        assert shown[0] == f"team{(N - 1) % 10}/app{N - 1}"
        assert f"{N - debug.MAX_SERVICES} more matching Services are not shown" in plain
        assert f"{N} Services; showing the first {debug.MAX_SERVICES}" in plain
        hidden = sorted(
            {f"team{i % 10}/app{i}" for i in range(N)} - set(shown),
            key=lambda s: int(s.rsplit("app", 1)[1]),
        )
        assert hidden, "every Service fits on the page: the search would prove nothing"
        target = hidden[len(hidden) // 2]
        ns, name = target.split("/")

        # By namespace/name: only that one.
        _, by_name = await get(app, f"/debug?q={target}")
        assert listed(by_name) == [target]
        assert f"1 of {N} Services match" in by_name
        assert f"value='{target}'" in by_name, "the search box keeps the words"
        # By route prefix, case-insensitive, with two words that must both match.
        number = name.removeprefix("app")
        _, by_prefix = await get(app, f"/debug?q={urllib.parse.quote(f'/APP{number}/ {ns}')}")
        assert listed(by_prefix) == [target]
        # By namespace: a tenth of the Services, under the limit, all listed.
        _, by_ns = await get(app, "/debug?q=team3/")
        assert sorted(listed(by_ns)) == sorted(f"team3/app{i}" for i in range(3, N, 10))
        # Nothing matches: said so.
        _, none = await get(app, "/debug?q=no-such-service")
        assert listed(none) == [] and "No Service matches" in none
        # The search covers the whole world even when the matches exceed the page.
        _, many = await get(app, "/debug?q=mesh+none")
        assert len(listed(many)) == debug.MAX_SERVICES
        assert f"{N} of {N} Services match" in many
        # Unknown parameters are refused, naming the one that works.
        status, bad = await get(app, "/debug?query=app1")
        assert status == 400 and "q=<search>" in bad
