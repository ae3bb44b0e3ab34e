"""``meshbridge serve --source kubernetes``, no token file: the mesh CAs get TokenRequest tokens.

The cluster is the Kubernetes API server stand-in, reached through a
kubeconfig; the bridge is the ``meshbridge`` command in a subprocess. With
``istio.identity: ca`` and ``linkerd.mode: ca`` and no ``token_file``, the
bridge asks the API server for its own service account's tokens
(TokenRequest, audiences ``istio-ca`` and ``identity.l5d.io``). The istiod
and Linkerd identity stand-ins authenticate them as the real ones do in a
cluster: a TokenReview to the same API server (:class:`ApiServerTokenReview`),
then the identity taken from the reviewed user. The roots ConfigMaps come
through the Kubernetes source's watch. Each backend sits behind a real Envoy
enforcing its mesh's inbound rules; the gateway is a real Envoy fed over ADS.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.istio.ca import ROOT_CONFIG_MAP, ROOT_KEY
from adapters.linkerd.identity import TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY
from bridge.demo.meshes import Backend, InlineCert, istio_sidecar, linkerd_sidecar
from tests.e2e.backends import NamedBackend
from tests.meshes.harness import gateway_bootstrap
from tests.standins.istiod_ca import IstiodCa
from tests.standins.kube_api import KubeApiServer
from tests.standins.linkerd_identity import LinkerdIdentity
from tests.standins.sa_tokens import ApiServerTokenReview, FakeTokenRequest, TokenError
from tests.support.envoy import EnvoyProcess
from tests.wiring.support import (
    DEADLINE,
    NODE_ID,
    REPO,
    Serve,
    admin_status,
    base_config,
    config_map,
    endpoint_slice,
    free_port,
    loop_thread,
    namespace,
    pod,
    service,
    wait_for,
)
from tests.wiring.test_istio import answer

pytestmark = pytest.mark.e2e

GATEWAY_NS = "edge"
GATEWAY_SA = "meshbridge"
GATEWAY_SPIFFE = f"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}"
GATEWAY_L5D = f"{GATEWAY_SA}.{GATEWAY_NS}.serviceaccount.identity.linkerd.cluster.local"
CART_L5D = "cart.shop.serviceaccount.identity.linkerd.cluster.local"


@contextmanager
def serve_kubernetes(tmp_path: Path, kube: KubeApiServer, extra_config: str) -> Iterator[Serve]:
    """``meshbridge serve --source kubernetes`` against ``kube``, and the gateway Envoy."""
    xds_port, admin_port, gateway_port = free_port(), free_port(), free_port()
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "meshbridge.yaml"
    config.write_text(
        base_config(xds_port, admin_port, gateway_port, GATEWAY_NS)
        + f"kubernetes:\n  kubeconfig: {kubeconfig}\n"
        + textwrap.dedent(extra_config)
    )
    # Not in a pod: the kubeconfig, never an in-cluster configuration.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "serve", "--log-level", "debug"),
                *("--config", str(config), "--source", "kubernetes", "--drain", "0"),
            ],
            cwd=REPO,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Serve(proc, log_path, tmp_path, config, xds_port, admin_port, gateway_port)
    try:
        wait_for(
            lambda: proc.poll() is None and admin_status(admin_port, "/readyz") == 200,
            timeout=DEADLINE,
            what=f"the bridge to be ready (log: {log_path})",
        )
        with EnvoyProcess(gateway_bootstrap(xds_port, NODE_ID)) as envoy:
            running.envoy = envoy
            yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def token_requests(kube: KubeApiServer) -> list[list[str]]:
    """The audiences of each TokenRequest for the gateway's service account."""
    path = f"/api/v1/namespaces/{GATEWAY_NS}/serviceaccounts/{GATEWAY_SA}/token"
    return [
        list((r.body or {}).get("spec", {}).get("audiences", []))
        for r in kube.requests_matching("POST", path)
    ]


def test_serve_gets_both_identities_with_tokenrequest_tokens_reviewed_by_the_api_server(
    tmp_path: Path,
) -> None:
    with (
        KubeApiServer(bookmark_interval=0.5) as kube,
        loop_thread() as lt,
        NamedBackend("reviews") as reviews,
        NamedBackend("cart") as cart,
    ):
        reviewer = ApiServerTokenReview(kube.url)
        ca = lt.call(IstiodCa(reviewer).start)
        li = LinkerdIdentity(reviewer)
        try:
            lt.call(li.start)
            istio_port, linkerd_port = free_port(), free_port()
            istio_proxy = istio_sidecar(
                name="reviews",
                port=istio_port,
                cert=InlineCert.of(ca.issue_workload("shop", "reviews", dt.timedelta(hours=1))),
                trust=ca.roots_pem,
                backend=Backend("127.0.0.1", reviews.port),
            )
            linkerd_proxy = linkerd_sidecar(
                name="cart",
                port=linkerd_port,
                identity=CART_L5D,
                cert=InlineCert.of(li.issue_workload("shop", "cart", dt.timedelta(hours=1))),
                trust=li.bundle_pem,
                backend=Backend("127.0.0.1", cart.port),
            )
            kube.apply(namespace(GATEWAY_NS))
            kube.add_service_account(GATEWAY_NS, GATEWAY_SA)
            kube.apply(config_map(GATEWAY_NS, ROOT_CONFIG_MAP, {ROOT_KEY: ca.roots_pem}))
            kube.apply(namespace(li.namespace))
            kube.apply(
                config_map(li.namespace, TRUST_ROOTS_CONFIG_MAP, {TRUST_ROOTS_KEY: li.bundle_pem})
            )
            kube.apply(namespace("shop"))
            for name, mesh, port, sa in (
                ("reviews", "istio", istio_port, "reviews"),
                ("cart", "linkerd", linkerd_port, "cart"),
            ):
                ann = {"meshbridge.io/prefix": f"/{name}", "meshbridge.io/mesh": mesh}
                kube.apply(service("shop", name, ann))
                kube.apply(endpoint_slice("shop", name, "127.0.0.1", port, pod=f"{name}-1"))
                kube.apply(pod("shop", f"{name}-1", sa, "127.0.0.1"))
            config = (
                f"istio:\n  identity: ca\n  ca_address: {ca.address}\n"
                f"linkerd:\n  mode: ca\n  identity_address: {li.address}\n"
            )
            with (
                EnvoyProcess(istio_proxy),
                EnvoyProcess(linkerd_proxy),
                serve_kubernetes(tmp_path, kube, config) as s,
            ):
                wait_for(
                    lambda: answer(s.gateway_port, "/reviews") == (200, GATEWAY_SPIFFE),
                    timeout=DEADLINE,
                    what=f"the Istio route with the gateway's SPIFFE ID (log: {s.log()})",
                )
                wait_for(
                    lambda: answer(s.gateway_port, "/cart") == (200, GATEWAY_L5D),
                    timeout=DEADLINE,
                    what=f"the Linkerd route with the gateway's identity (log: {s.log()})",
                )
            istio_calls = lt.do(lambda: list(ca.calls))
            linkerd_calls = lt.do(lambda: list(li.calls))
        finally:
            lt.call(li.stop)
            lt.call(ca.stop)

        # The tokens came from TokenRequest, one audience each, and were reviewed by the API
        # server (the CAs hold no key of their own to check them with).
        assert sorted(map(tuple, token_requests(kube))) == [("identity.l5d.io",), ("istio-ca",)]
        reviews_sent = kube.requests_matching("POST", "/tokenreviews")
        audiences = {tuple(r.body["spec"]["audiences"]) for r in reviews_sent if r.body}
        assert audiences == {("istio-ca",), ("identity.l5d.io",)}
        assert istio_calls and all(c.status == "OK" for c in istio_calls), istio_calls
        assert {c.issued_san for c in istio_calls} == {GATEWAY_SPIFFE}
        assert linkerd_calls and all(c.status == "OK" for c in linkerd_calls), linkerd_calls
        assert {c.identity for c in linkerd_calls} == {GATEWAY_L5D}

        # What the CAs accept through the review: this API server's tokens for their audience
        # only; a token it did not sign, or one for the other mesh's audience, is refused.
        own = kube.issue_token(GATEWAY_NS, GATEWAY_SA, ["istio-ca"], 600)
        assert reviewer.review(own, "istio-ca") == (GATEWAY_NS, GATEWAY_SA)
        with pytest.raises(TokenError, match=r"not authenticated|returns an error"):
            reviewer.review(own, "identity.l5d.io")
        foreign = FakeTokenRequest().issue(GATEWAY_NS, GATEWAY_SA, ["istio-ca"])
        with pytest.raises(TokenError, match=r"not authenticated|returns an error"):
            reviewer.review(foreign, "istio-ca")
