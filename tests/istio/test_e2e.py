"""End to end through real Envoys: the gateway's Istio identity from the istiod stand-in.

The backend is an Istio-style sidecar (client certificate from the mesh
root required, Istio ALPN only) holding a certificate from the same CA; the
gateway reaches it with the certificate the provider obtained, through a CA
outage and a full root rotation, without a failed request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from adapters.istio.ca import IstioCaProvider, IstioCaSettings, IstioRoots
from bridge.demo.meshes import istio_sidecar
from bridge.identity.rotation import RenewalPolicy
from bridge.model.ir import Mesh
from bridge.model.k8s import Kind, ObjectRef
from bridge.resolve.meshtls import MeshTarget
from bridge.store import Store
from tests.istio.conftest import GATEWAY_NS, GATEWAY_SA, root_config_map
from tests.istio.scenario import CaControls, run_scenario
from tests.standins.istiod_ca import IstiodCa
from tests.standins.sa_tokens import FakeTokenRequest

pytestmark = pytest.mark.e2e

TTL_S = 6  # renewal every ~3 s: several renewals in one short run


def test_gateway_through_outage_and_root_rotation_fails_no_request(tmp_path: Path) -> None:
    tokens = FakeTokenRequest(namespace=GATEWAY_NS, service_account=GATEWAY_SA)
    ca = IstiodCa(tokens)
    controls = CaControls(
        start=ca.start,
        stop=ca.stop,
        outage=ca.outage,
        recover=ca.recover,
        roots_pem=lambda: ca.roots_pem,
        config_map=root_config_map,
        add_root=ca.add_root,
        sign_with_newest=ca.sign_with_newest,
        drop_oldest_root=ca.drop_oldest_root,
        issue_backend=lambda: ca.issue_workload("shop", "cart", dt.timedelta(hours=1)),
        issued_serials_since=lambda n: {c.issued_serial for c in ca.calls[n:] if c.issued_serial},
        calls=lambda: len(ca.calls),
    )
    providers: list[IstioCaProvider] = []

    def make_provider(store: Store) -> IstioCaProvider:
        settings = IstioCaSettings(
            address=ca.address,
            namespace=GATEWAY_NS,
            service_account=GATEWAY_SA,
            validity_s=TTL_S,
            timeout_s=2.0,
            roots_poll_s=0.05,
        )
        p = IstioCaProvider(
            store,
            tokens,
            IstioRoots.config_map(store, GATEWAY_NS),
            dataclasses.replace(settings),
            policy=RenewalPolicy(fraction=0.5, backoff_initial=0.2, backoff_max=0.5),
        )
        providers.append(p)
        return p

    outcome = run_scenario(
        mesh=Mesh.ISTIO,
        ca=controls,
        make_provider=make_provider,
        target=MeshTarget(
            ref=ObjectRef(Kind.SERVICE, "shop", "cart"),
            namespace="shop",
            service="cart",
            port=8080,
            service_accounts=("cart",),
        ),
        sidecar=lambda port, cert, trust: istio_sidecar(
            name="cart", port=port, cert=cert, trust=trust, max_requests_per_connection=10
        ),
        workdir=tmp_path,
    )
    result = outcome.load
    print(f"\nistio CA end to end: {result.summary()}; steps at {outcome.steps_at}")
    assert result.done > 0
    assert result.failed == 0, f"{result.summary()}; first errors: {result.errors[:5]}"
    assert outcome.failures_in_outage >= 1  # the outage really hit a renewal
    # Every certificate the gateway showed came from istiod, for the token's identity.
    issued = {c.issued_serial for c in ca.calls if c.status == "OK"}
    assert result.peer_serials and result.peer_serials <= issued
    assert {c.issued_san for c in ca.calls if c.status == "OK"} == {
        f"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}"
    }
    assert all(c.metadata.get("clusterid") == "Kubernetes" for c in ca.calls)
    assert providers[0].diagnostics == ()
