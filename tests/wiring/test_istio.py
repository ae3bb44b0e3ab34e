"""``meshbridge serve`` / ``resolve`` with ``istio.identity: ca``: the istiod stand-in, real Envoys.

The gateway's service-account token is a projected-token file (issued by
the stand-in TokenRequest for audience ``istio-ca``); istiod's roots come
from ConfigMap ``istio-ca-root-cert`` in the gateway's namespace, read by the
directory source like any object. The backend is a real Envoy enforcing
Istio's inbound rules with a certificate from the same CA.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.istio.ca import ROOT_CONFIG_MAP, ROOT_KEY
from bridge.cli import main
from bridge.demo.meshes import Backend, InlineCert, istio_sidecar
from tests.e2e.backends import NamedBackend
from tests.standins.istiod_ca import IstiodCa
from tests.standins.sa_tokens import FakeTokenRequest
from tests.support.envoy import EnvoyProcess
from tests.wiring.support import (
    DEADLINE,
    LoopThread,
    config_map,
    endpoint_slice,
    free_port,
    loop_thread,
    namespace,
    pod,
    serve,
    service,
    wait_for,
    write_docs,
)

pytestmark = pytest.mark.e2e

GATEWAY_NS = "edge"
GATEWAY_SA = "meshbridge"
GATEWAY_SPIFFE = f"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}"


@dataclass
class Mesh:
    lt: LoopThread
    ca: IstiodCa
    world: Path
    config: str  # the istio section
    sidecar_port: int


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    tokens = FakeTokenRequest(namespace=GATEWAY_NS, service_account=GATEWAY_SA)
    token_file = tmp_path / "istio-token"
    token_file.write_text(tokens.issue(GATEWAY_NS, GATEWAY_SA, ["istio-ca"]))
    with loop_thread() as lt, NamedBackend("reviews") as backend:

        async def start() -> IstiodCa:
            return await IstiodCa(tokens).start()

        ca = lt.call(start)
        try:
            side_port = free_port()
            workload = ca.issue_workload("shop", "reviews", dt.timedelta(hours=1))
            sidecar = istio_sidecar(
                name="reviews",
                port=side_port,
                cert=InlineCert.of(workload),
                trust=ca.roots_pem,
                backend=Backend("127.0.0.1", backend.port),
            )
            world = tmp_path / "world"
            world.mkdir()
            ann = {"meshbridge.io/prefix": "/reviews", "meshbridge.io/mesh": "istio"}
            write_docs(
                world / "world.yaml",
                [
                    namespace(GATEWAY_NS),
                    config_map(GATEWAY_NS, ROOT_CONFIG_MAP, {ROOT_KEY: ca.roots_pem}),
                    namespace("shop"),
                    service("shop", "reviews", ann),
                    endpoint_slice("shop", "reviews", "127.0.0.1", side_port, pod="reviews-1"),
                    pod("shop", "reviews-1", "reviews", "127.0.0.1"),
                ],
            )
            config = (
                f"istio:\n  identity: ca\n  ca_address: {ca.address}\n  token_file: {token_file}\n"
            )
            with EnvoyProcess(sidecar):
                yield Mesh(lt, ca, world, config, side_port)
        finally:
            lt.call(ca.stop)


def answer(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("x-mesh-peer") or ""
    finally:
        conn.close()


def test_serve_gets_the_gateway_identity_from_istiod_and_reaches_the_sidecar(
    tmp_path: Path, mesh: Mesh
) -> None:
    with serve(tmp_path, mesh.world, mesh.config, gateway_namespace=GATEWAY_NS) as s:
        wait_for(
            lambda: answer(s.gateway_port, "/reviews") == (200, GATEWAY_SPIFFE),
            timeout=DEADLINE,
            what=f"the Istio route to answer with the gateway's SPIFFE ID (log: {s.log()})",
        )
    calls = mesh.lt.do(lambda: list(mesh.ca.calls))
    assert calls and all(c.status == "OK" for c in calls), calls


def resolve_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main(["resolve", "-o", "json", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_resolve_fetches_the_identity_once_and_shows_the_upstream_tls(
    tmp_path: Path, mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "meshbridge.yaml"
    config.write_text(f"gateway:\n  namespace: {GATEWAY_NS}\n" + mesh.config)
    args = ("--config", str(config), "--source", f"dir:{mesh.world}")
    doc = resolve_json(capsys, *args)
    (row,) = doc["services"]
    assert row["routes"] == ["*/reviews"] and row["mesh"] == "istio"
    assert row["sni"] == ["outbound_.80_._.reviews.shop.svc.cluster.local"]
    assert row["verify_san"] == ["URI:spiffe://cluster.local/ns/shop/sa/reviews"]
    assert row["alpn"][0] == "istio-http/1.1"
    (identity,) = row["identity"]
    assert identity.startswith("identity/istio (expires ")
    assert not row["diagnostics"], row["diagnostics"]

    # istiod down: a bounded wait, then a diagnostic naming the mesh; never plaintext.
    mesh.lt.call(mesh.ca.outage)
    doc = resolve_json(capsys, *args, "--timeout", "2")
    (row,) = doc["services"]
    assert row["routes"] == [] and row["left_out"]
    assert any("no identity for mesh istio" in d["message"] for d in row["diagnostics"])
    others = [d["message"] for d in doc["other_diagnostics"]]
    assert any("could not obtain the gateway's istio identity" in m for m in others), others
