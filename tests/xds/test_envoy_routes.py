"""What a request goes through, checked on a real Envoy running translated resources.

A real Envoy (resources inlined as in ``test_envoy_accepts``) in front of an
HTTP backend that echoes what it received. It shows the behaviours the
route translation documents: remove-before-add for a header both removed and
set (a client-supplied ``l5d-dst-override`` never reaches the upstream), ``%``
in a header value arriving literally, prefix rewrite, and exact hosts matching
when the client's Host header carries the gateway's port.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bridge.model.frozen import FrozenDict
from bridge.model.ir import Discovery, Endpoint, Ir, Listener, Upstream, UpstreamKey, VirtualHost
from bridge.xds.translate import translate
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for
from tests.xds.rich import route
from tests.xds.test_envoy_accepts import static_bootstrap

pytestmark = pytest.mark.e2e


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_headers_rewrite_and_hosts_on_a_real_envoy(backend: int) -> None:
    listen = free_port()
    echo = UpstreamKey("default", "echo", "http")
    api = UpstreamKey("default", "api", "http")
    upstreams = {
        k: Upstream(k, Discovery.EDS, endpoints=(Endpoint("127.0.0.1", backend),))
        for k in (echo, api)
    }
    ir = Ir(
        listeners=(Listener("http", listen, "127.0.0.1"),),
        virtual_hosts=(
            VirtualHost(
                "api.example.com",
                (route("api.example.com", "/", api, headers_to_add=(("x-vhost", "api"),)),),
            ),
            VirtualHost(
                "*",
                (
                    route(
                        "*",
                        "/emoji/",
                        echo,
                        rewrite="/seen/",
                        headers_to_add=(
                            ("l5d-dst-override", "web-svc.emojivoto.svc.cluster.local:80"),
                            ("x-discount", "50%"),
                        ),
                        headers_to_remove=("l5d-dst-override", "x-debug"),
                    ),
                ),
            ),
        ),
        upstreams=FrozenDict(upstreams),
    )
    with EnvoyProcess(static_bootstrap(translate(ir).resources)) as envoy:
        client_headers = {"l5d-dst-override": "evil:1", "x-debug": "1"}

        def routed() -> tuple[int, dict[str, Any]] | None:
            result = get(listen, "/emoji/x", client_headers)
            return result if result[0] == 200 else None

        result = wait_for(routed, timeout=20, what=f"a 200 through envoy\n{envoy.log()}")
        assert result is not None
        _, seen = result
        assert seen["path"] == "/seen/x"
        assert seen["headers"]["l5d-dst-override"] == "web-svc.emojivoto.svc.cluster.local:80"
        assert "x-debug" not in seen["headers"]
        assert seen["headers"]["x-discount"] == "50%"

        # Host with the gateway's port still matches the exact virtual host.
        status, seen = get(listen, "/anything", {"host": f"api.example.com:{listen}"})
        assert status == 200
        assert seen["headers"]["x-vhost"] == "api"
        # Another host falls to "*", which has no route for this path.
        status, _ = get(listen, "/anything", {"host": "other.example.com"})
        assert status == 404
