"""``meshbridge serve`` / ``resolve`` with ``linkerd.mode: ca``, and refused tokens of both CAs.

Linkerd's counterpart of :mod:`tests.wiring.test_istio`. The gateway's
service-account token is a projected-token file (issued by the stand-in
TokenRequest for audience ``identity.l5d.io``); the trust anchors come from
ConfigMap ``linkerd-identity-trust-roots`` in Linkerd's namespace, read by the
directory source like any object. The identity service is reached through
its TLS 1.3, no-ALPN proxy (a real Envoy). The backend sits behind a real
Envoy enforcing Linkerd's inbound rules (TLS 1.3 only, SNI = its identity,
client certificate from the anchors, no ALPN) with a certificate from the
same issuer.

A token either CA refuses is shown by ``resolve`` and ``/debug``, naming the
audience and the service account, and heals once the token file does (the
Istio case uses :mod:`tests.wiring.test_istio`'s fixture).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.linkerd.identity import TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY
from bridge.demo.meshes import Backend, InlineCert, linkerd_sidecar
from tests.e2e.backends import NamedBackend
from tests.standins.linkerd_identity import LinkerdIdentity
from tests.standins.sa_tokens import FakeTokenRequest
from tests.support.envoy import EnvoyProcess
from tests.wiring import test_istio
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
from tests.wiring.test_istio import Mesh as IstioMesh
from tests.wiring.test_istio import answer, resolve_json

pytestmark = pytest.mark.e2e

mesh = test_istio.mesh  # the Istio wiring fixture, shared

GATEWAY_NS = "edge"
GATEWAY_SA = "meshbridge"
GATEWAY_ID = f"{GATEWAY_SA}.{GATEWAY_NS}.serviceaccount.identity.linkerd.cluster.local"
CART_ID = "cart.shop.serviceaccount.identity.linkerd.cluster.local"


@dataclass
class LinkerdMesh:
    lt: LoopThread
    li: LinkerdIdentity
    tokens: FakeTokenRequest
    world: Path
    token_file: Path
    config: str  # the linkerd section
    sidecar_port: int


@pytest.fixture
def linkerd(tmp_path: Path) -> Iterator[LinkerdMesh]:
    tokens = FakeTokenRequest(namespace=GATEWAY_NS, service_account=GATEWAY_SA)
    token_file = tmp_path / "linkerd-token"
    token_file.write_text(tokens.issue(GATEWAY_NS, GATEWAY_SA, ["identity.l5d.io"]))
    with loop_thread() as lt, NamedBackend("cart") as backend:
        li = LinkerdIdentity(tokens)
        lt.call(li.start)
        try:
            side_port = free_port()
            workload = li.issue_workload("shop", "cart", dt.timedelta(hours=1))
            sidecar = linkerd_sidecar(
                name="cart",
                port=side_port,
                identity=CART_ID,
                cert=InlineCert.of(workload),
                trust=li.bundle_pem,
                backend=Backend("127.0.0.1", backend.port),
            )
            world = tmp_path / "world"
            world.mkdir()
            ann = {"meshbridge.io/prefix": "/cart", "meshbridge.io/mesh": "linkerd"}
            write_docs(
                world / "world.yaml",
                [
                    namespace(GATEWAY_NS),
                    namespace(li.namespace),
                    config_map(
                        li.namespace, TRUST_ROOTS_CONFIG_MAP, {TRUST_ROOTS_KEY: li.bundle_pem}
                    ),
                    namespace("shop"),
                    service("shop", "cart", ann),
                    endpoint_slice("shop", "cart", "127.0.0.1", side_port, pod="cart-1"),
                    pod("shop", "cart-1", "cart", "127.0.0.1"),
                ],
            )
            config = (
                "linkerd:\n  mode: ca\n"
                f"  identity_address: {li.address}\n  token_file: {token_file}\n"
            )
            with EnvoyProcess(sidecar):
                yield LinkerdMesh(lt, li, tokens, world, token_file, config, side_port)
        finally:
            lt.call(li.stop)


def test_serve_gets_the_gateway_identity_from_linkerd_and_reaches_the_proxy(
    tmp_path: Path, linkerd: LinkerdMesh
) -> None:
    with serve(tmp_path, linkerd.world, linkerd.config, gateway_namespace=GATEWAY_NS) as s:
        wait_for(
            lambda: answer(s.gateway_port, "/cart") == (200, GATEWAY_ID),
            timeout=DEADLINE,
            what=f"the Linkerd route to answer with the gateway's identity (log: {s.log()})",
        )
        debug = s.admin("/debug")
    calls = linkerd.lt.do(lambda: list(linkerd.li.calls))
    assert calls and all(c.status == "OK" for c in calls), calls
    assert {c.identity for c in calls} == {GATEWAY_ID}
    # /debug shows the identity the gateway presents, and no refusal.
    assert GATEWAY_ID in debug and "refused" not in debug


def test_resolve_shows_the_linkerd_upstream_tls_and_identity(
    tmp_path: Path, linkerd: LinkerdMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "meshbridge.yaml"
    config.write_text(f"gateway:\n  namespace: {GATEWAY_NS}\n" + linkerd.config)
    doc = resolve_json(capsys, "--config", str(config), "--source", f"dir:{linkerd.world}")
    (row,) = doc["services"]
    assert row["routes"] == ["*/cart"] and row["mesh"] == "linkerd"
    assert row["sni"] == [CART_ID]
    assert row["verify_san"] == [f"DNS:{CART_ID}"]
    assert row["alpn"] == []
    (identity,) = row["identity"]
    assert identity.startswith("identity/linkerd (expires ")
    assert not row["diagnostics"], row["diagnostics"]


def refused_token_is_shown_then_healed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    world: Path,
    config: str,
    token_file: Path,
    good_token: str,
    mesh_name: str,
    refused: str,
    audience: str,
    route: str,
    peer: str,
) -> None:
    """``token_file`` holds a token the CA refuses: ``resolve`` and ``/debug`` say so, naming
    the audience and the service account; once the file holds ``good_token`` the route works.
    """
    account = f"{GATEWAY_NS}/{GATEWAY_SA}"
    path = tmp_path / "meshbridge.yaml"
    path.write_text(f"gateway:\n  namespace: {GATEWAY_NS}\n" + config)
    doc = resolve_json(capsys, "--config", str(path), "--source", f"dir:{world}", "--timeout", "5")
    (row,) = doc["services"]
    assert row["routes"] == [] and row["left_out"]
    (diag,) = [d for d in doc["other_diagnostics"] if d["code"] == f"{mesh_name}.token_rejected"]
    assert diag["object"] == f"Identity {mesh_name}" and diag["message"].startswith(refused)
    assert f"audience {audience}" in diag["fix"] and account in diag["fix"]

    with serve(tmp_path, world, config, gateway_namespace=GATEWAY_NS) as s:
        wait_for(
            lambda: refused in s.admin("/debug"),
            timeout=DEADLINE,
            what=f"/debug to show the refused token (log: {s.log()})",
        )
        assert answer(s.gateway_port, route)[0] == 404  # left out, never sent in plaintext
        # A token the CA accepts (kubelet refreshes the file): the retry succeeds.
        token_file.write_text(good_token)
        wait_for(
            lambda: answer(s.gateway_port, route) == (200, peer),
            timeout=DEADLINE,
            what=f"the route once the token is accepted (log: {s.log()})",
        )
        wait_for(
            lambda: refused not in s.admin("/debug"),
            timeout=DEADLINE,
            what="/debug to drop the refusal",
        )


def test_linkerd_refused_token_shows_in_resolve_and_debug_naming_audience_and_account(
    tmp_path: Path, linkerd: LinkerdMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    # A token projected for the wrong audience: Linkerd identity refuses it.
    linkerd.token_file.write_text(linkerd.tokens.issue(GATEWAY_NS, GATEWAY_SA, ["istio-ca"]))
    refused_token_is_shown_then_healed(
        tmp_path,
        capsys,
        world=linkerd.world,
        config=linkerd.config,
        token_file=linkerd.token_file,
        good_token=linkerd.tokens.issue(GATEWAY_NS, GATEWAY_SA, ["identity.l5d.io"]),
        mesh_name="linkerd",
        refused=(
            f"Linkerd identity refused the service-account token of {GATEWAY_NS}/{GATEWAY_SA} "
            "(audience identity.l5d.io)"
        ),
        audience="identity.l5d.io",
        route="/cart",
        peer=GATEWAY_ID,
    )


def test_istio_refused_token_shows_in_resolve_and_debug_naming_audience_and_account(
    tmp_path: Path, mesh: IstioMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Istio mesh of tests.wiring.test_istio, its token file replaced by one from an
    # issuer istiod does not trust.
    token_file = tmp_path / "istio-token"
    good = token_file.read_text()
    token_file.write_text(FakeTokenRequest().issue(GATEWAY_NS, GATEWAY_SA, ["istio-ca"]))
    refused_token_is_shown_then_healed(
        tmp_path,
        capsys,
        world=mesh.world,
        config=mesh.config,
        token_file=token_file,
        good_token=good,
        mesh_name="istio",
        refused=(
            f"istiod rejected the service-account token of {GATEWAY_NS}/{GATEWAY_SA} "
            "(audience istio-ca)"
        ),
        audience="istio-ca",
        route="/reviews",
        peer=f"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}",
    )
