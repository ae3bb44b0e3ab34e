"""The demo's meshes: it fails when a sidecar holds the wrong identity, and
``meshbridge resolve`` shows the mesh TLS of its world.

The failing case runs the real demo with ``MESHBRIDGE_DEMO_IMPOSTOR``: that
mesh's sidecar holds a certificate from the right mesh CA but for another
workload. The gateway must refuse it (its SAN check), so that one route fails,
the others keep working, and the demo exits 1 — and still cleans up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.cli import main as cli_main
from bridge.config import load_config
from bridge.demo.backends import NameServer
from bridge.demo.flow import Sidecar, demo_config, sidecar_bootstrap, sidecar_certificate
from bridge.demo.meshes import DemoMeshCa, SdsFile, write_sds_certificate
from bridge.demo.workloads import load_world, mesh_workloads
from bridge.errors import ConfigError
from bridge.model.ir import Mesh
from tests.e2e.test_demo import REPO, processes_mentioning, table
from tests.support.wait import free_port

pytestmark = pytest.mark.e2e

WORLD = REPO / "examples" / "world"


@pytest.mark.parametrize(
    ("mesh", "route"),
    [
        pytest.param("linkerd", "*/vote", id="linkerd"),
        pytest.param("consul", "*/payments", id="consul"),
    ],
)
def test_a_sidecar_with_the_wrong_identity_fails_the_demo(
    tmp_path: Path, mesh: str, route: str
) -> None:
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "MESHBRIDGE_DEMO_IMPOSTOR": mesh,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    rows = table(out)
    bad = rows[route]
    assert bad[1] == mesh and bad[3] == "503" and bad[6] == "FAIL", out
    ok, total = map(int, bad[5].split("/"))
    assert ok == 0 and total > 0
    # The gateway refused the impostor: its certificate does not carry the SAN.
    assert f"{route}: gateway ssl.fail_verify_san=" in out
    others = [cells for r, cells in rows.items() if r != route]
    assert len(others) == 6
    for cells in others:
        assert cells[3] == "200" and cells[6].startswith("ok ("), (cells, out)
        good, total = map(int, cells[5].split("/"))
        assert good == total > 0
    assert "1 of 7 routes failed" in out
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.glob("meshbridge-demo-*")) == []


def test_resolve_shows_sni_san_alpn_and_identity_expiry_of_the_demo_world(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expiry = {}
    for mesh in (Mesh.ISTIO, Mesh.LINKERD):
        ca = DemoMeshCa(mesh, now=now - dt.timedelta(minutes=5))
        issued = ca.issue("meshbridge", "meshbridge", now=now)
        ca.write_output_certs(tmp_path / mesh.value, issued)
        expiry[mesh.value] = issued.info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    config = tmp_path / "meshbridge.yaml"
    config.write_text(
        f"istio:\n  identity: files:{tmp_path / 'istio'}\n"
        f"linkerd:\n  mode: files:{tmp_path / 'linkerd'}\n"
    )
    code = cli_main(["resolve", "--config", str(config), "--source", f"dir:{WORLD}", "-o", "json"])
    out = capsys.readouterr().out
    assert code == 0
    by_name = {s["service"]: s for s in json.loads(out)["services"]}

    reviews = by_name["bookstore/reviews"]
    assert reviews["mesh"] == "istio" and reviews["routes"] == ["*/reviews"]
    assert reviews["sni"] == ["outbound_.9080_._.reviews.bookstore.svc.cluster.local"]
    assert reviews["verify_san"] == ["URI:spiffe://cluster.local/ns/bookstore/sa/bookstore-reviews"]
    assert reviews["alpn"] == ["istio-http/1.1", "istio", "http/1.1"]
    assert reviews["identity"] == [f"identity/istio (expires {expiry['istio']})"]
    assert reviews["diagnostics"] == []

    voting = by_name["emojivoto/voting"]
    name = "voting.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    assert voting["mesh"] == "linkerd" and voting["routes"] == ["*/vote"]
    assert voting["sni"] == [name] and voting["verify_san"] == [f"DNS:{name}"]
    assert voting["alpn"] == []  # Linkerd negotiates no ALPN
    assert voting["identity"] == [f"identity/linkerd (expires {expiry['linkerd']})"]
    assert voting["diagnostics"] == []

    # No Consul identity is configured here: the Service is left out, with the
    # reason, never sent plaintext.
    payments = by_name["payments/payments"]
    assert payments["mesh"] == "consul" and payments["left_out"]
    assert {d["code"] for d in payments["diagnostics"]} == {
        "mesh.identity.missing",
        "mesh.trust.missing",
    }


def test_sidecar_keys_stay_in_private_files_never_in_bootstraps(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    config = demo_config(8080, tmp_path / "mesh-agents")
    workloads = mesh_workloads(load_world())
    assert [(w.mesh, w.namespace, w.service, w.identity) for w in workloads] == [
        (Mesh.ISTIO, "bookstore", "reviews", "bookstore-reviews"),
        (Mesh.LINKERD, "emojivoto", "voting", "voting"),
        (Mesh.CONSUL, "payments", "payments", "payments"),
    ]
    for workload in workloads:
        ca = DemoMeshCa(workload.mesh, now=now)
        side = Sidecar(workload, NameServer(workload.service), port=free_port())
        cert = SdsFile("server", str(tmp_path / "mesh-agents" / workload.name / "server.json"))
        issued = sidecar_certificate(side, ca, config, now, impostor=False)
        write_sds_certificate(cert, issued)
        path = Path(cert.path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert "PRIVATE KEY" in path.read_text()
        boot = yaml.safe_dump(sidecar_bootstrap(side, ca, config, cert, admin_port=free_port()))
        assert "PRIVATE KEY" not in boot and cert.path in boot


def test_consul_identity_from_files_takes_the_trust_domain_from_the_certificate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = DemoMeshCa(Mesh.CONSUL, now=now - dt.timedelta(minutes=5))
    issued = ca.issue("meshbridge", "meshbridge", now=now)
    ca.write_output_certs(tmp_path / "consul", issued)
    config = tmp_path / "meshbridge.yaml"
    config.write_text(f"consul:\n  identity: files:{tmp_path / 'consul'}\n")
    code = cli_main(["resolve", "--config", str(config), "--source", f"dir:{WORLD}", "-o", "json"])
    out = capsys.readouterr().out
    assert code == 0
    payments = {s["service"]: s for s in json.loads(out)["services"]}["payments/payments"]
    td = ca.trust_domain
    assert td and issued.info.uri_sans[0].startswith(f"spiffe://{td}/")
    assert payments["mesh"] == "consul" and payments["routes"] == ["*/payments"]
    assert payments["sni"] == [f"payments.default.dc1.internal.{td}"]
    assert payments["verify_san"] == [f"URI:spiffe://{td}/ns/default/dc/dc1/svc/payments"]
    expiry = issued.info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert payments["identity"] == [f"identity/consul (expires {expiry})"]
    assert payments["diagnostics"] == []


def test_consul_connect_and_files_identity_together_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "meshbridge.yaml"
    config.write_text("consul:\n  connect: true\n  identity: files:/etc/consul-certs\n")
    with pytest.raises(ConfigError, match=r"consul\.identity.*choose one"):
        load_config(config)
