"""The demo's mesh CAs: the identities they issue, and the OUTPUT_CERTS files they write."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from bridge.demo.meshes import DemoMeshCa
from bridge.identity import pki
from bridge.identity.files import FilesProvider
from bridge.model.ir import Mesh
from bridge.store import Store
from tests.identity.fakeclock import FakeClock

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("mesh", "uris", "dns"),
    [
        pytest.param(Mesh.ISTIO, ("spiffe://cluster.local/ns/edge/sa/meshbridge",), (), id="istio"),
        pytest.param(
            Mesh.LINKERD,
            (),
            ("meshbridge.edge.serviceaccount.identity.linkerd.cluster.local",),
            id="linkerd",
        ),
        pytest.param(
            Mesh.CONSUL,
            ("spiffe://5f3c1e2a-7d4b-4c1e-9a60-2b8f0c7d1e55.consul/ns/edge/dc/dc1/svc/meshbridge",),
            (),
            id="consul",
        ),
    ],
)
def test_identities_per_mesh(mesh: Mesh, uris: tuple[str, ...], dns: tuple[str, ...]) -> None:
    ca = DemoMeshCa(mesh, now=NOW)
    issued = ca.issue("edge", "meshbridge", now=NOW)
    assert (issued.info.uri_sans, issued.info.dns_sans) == (uris, dns)
    pki.validate_chain(issued.cert_chain_pem, ca.root_pem, NOW)
    if mesh is Mesh.CONSUL:  # Connect roots name the trust domain
        assert pki.cert_info(ca.ca.root).uri_sans == (f"spiffe://{ca.trust_domain}",)


def test_output_certs_are_private_and_load(tmp_path: Path) -> None:
    ca = DemoMeshCa(Mesh.ISTIO, now=NOW)
    out = tmp_path / "certs"
    ca.write_output_certs(out, ca.issue("edge", "meshbridge", now=NOW))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert not list(out.glob(".*.tmp"))
    prov = FilesProvider(Mesh.ISTIO, Store(), out, clock=FakeClock(NOW))
    assert prov.poll()
    assert prov.status().identity == "spiffe://cluster.local/ns/edge/sa/meshbridge"
