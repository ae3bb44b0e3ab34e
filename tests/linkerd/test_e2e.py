"""End to end through real Envoys: the gateway's Linkerd identity from the identity stand-in.

The backend is a Linkerd-style proxy (TLS 1.3 only, SNI must be its
identity, client certificate from the trust anchors required, no ALPN)
holding a certificate from the same issuer; the gateway reaches it with the
certificate the provider obtained over TLS 1.3 without ALPN, through an
identity-service outage and a full trust-anchor rotation, without a failed
request.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters.linkerd.identity import (
    LinkerdIdentityProvider,
    LinkerdIdentitySettings,
    LinkerdRoots,
)
from bridge.demo.meshes import linkerd_sidecar
from bridge.identity.rotation import RenewalPolicy
from bridge.model.ir import Mesh
from bridge.model.k8s import Kind, ObjectRef
from bridge.resolve.meshtls import MeshTarget
from bridge.store import Store
from tests.istio.scenario import CaControls, run_scenario
from tests.linkerd.conftest import GATEWAY_ID, GATEWAY_NS, GATEWAY_SA, anchors_config_map
from tests.standins.linkerd_identity import LinkerdIdentity
from tests.standins.sa_tokens import FakeTokenRequest

pytestmark = pytest.mark.e2e


def test_gateway_through_outage_and_anchor_rotation_fails_no_request(tmp_path: Path) -> None:
    tokens = FakeTokenRequest(namespace=GATEWAY_NS, service_account=GATEWAY_SA)
    li = LinkerdIdentity(tokens, lifetime=dt.timedelta(seconds=6))

    async def outage() -> None:
        await li.outage("unavailable")

    controls = CaControls(
        start=li.start,
        stop=li.stop,
        outage=outage,
        recover=li.recover,
        roots_pem=lambda: li.bundle_pem,
        config_map=anchors_config_map,
        add_root=li.add_anchor,
        sign_with_newest=li.issue_from_newest,
        drop_oldest_root=li.drop_oldest_anchor,
        issue_backend=lambda: li.issue_workload("shop", "cart", dt.timedelta(hours=1)),
        issued_serials_since=lambda n: {c.issued_serial for c in li.calls[n:] if c.issued_serial},
        calls=lambda: len(li.calls),
    )
    providers: list[LinkerdIdentityProvider] = []

    def make_provider(store: Store) -> LinkerdIdentityProvider:
        p = LinkerdIdentityProvider(
            store,
            tokens,
            LinkerdRoots.config_map(store, li.namespace),
            LinkerdIdentitySettings(
                address=li.address,
                gateway_namespace=GATEWAY_NS,
                service_account=GATEWAY_SA,
                timeout_s=2.0,
                roots_poll_s=0.05,
            ),
            policy=RenewalPolicy(
                fraction=0.7, of_remaining=True, backoff_initial=0.2, backoff_max=0.5
            ),
        )
        providers.append(p)
        return p

    outcome = run_scenario(
        mesh=Mesh.LINKERD,
        ca=controls,
        make_provider=make_provider,
        target=MeshTarget(
            ref=ObjectRef(Kind.SERVICE, "shop", "cart"),
            namespace="shop",
            service="cart",
            port=8080,
            service_accounts=("cart",),
        ),
        sidecar=lambda port, cert, trust: linkerd_sidecar(
            name="cart",
            port=port,
            identity=li.identity_name("shop", "cart"),
            cert=cert,
            trust=trust,
            max_requests_per_connection=10,
        ),
        workdir=tmp_path,
    )
    result = outcome.load
    print(f"\nlinkerd identity end to end: {result.summary()}; steps at {outcome.steps_at}")
    assert result.done > 0
    assert result.failed == 0, f"{result.summary()}; first errors: {result.errors[:5]}"
    assert outcome.failures_in_outage >= 1
    issued = {c.issued_serial for c in li.calls if c.status == "OK"}
    assert result.peer_serials and result.peer_serials <= issued
    ok = [c for c in li.calls if c.status == "OK"]
    assert {c.identity for c in ok} == {GATEWAY_ID}
    assert all(c.csr_common_name == "" and c.csr_dns_sans == (GATEWAY_ID,) for c in ok)
    assert providers[0].diagnostics == ()
