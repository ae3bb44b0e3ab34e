"""``meshbridge demo``: prints its table, exits 0, and leaves nothing running — Ctrl-C too.

Every route of the bundled world answers, the meshed ones through a real
sidecar Envoy per mesh (Istio, Linkerd, Consul) that verified the gateway's
identity, with no failed request across one rotation of the gateway's
identities. The negative case (a sidecar holding the wrong identity fails
the demo) is in ``test_demo_meshes.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (the demo's Envoy names its temp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def demo(tmp_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the demo's work dir goes under tmp_path
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo"],
        cwd=tmp_path,  # not the repository: the demo runs from package data
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


GATEWAY = {
    "istio": "spiffe://cluster.local/ns/meshbridge/sa/meshbridge",
    "linkerd": "meshbridge.meshbridge.serviceaccount.identity.linkerd.cluster.local",
    "consul": "spiffe://5f3c1e2a-7d4b-4c1e-9a60-2b8f0c7d1e55.consul/ns/default/dc/dc1/svc/meshbridge",
}
SERVER = {
    "istio": "URI:spiffe://cluster.local/ns/bookstore/sa/bookstore-reviews",
    "linkerd": "DNS:voting.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "consul": "URI:spiffe://5f3c1e2a-7d4b-4c1e-9a60-2b8f0c7d1e55.consul/ns/default/dc/dc1/svc/payments",
}


def table(out: str) -> dict[str, list[str]]:
    """The demo's table: route → its cells.

    Cells: route, mesh, resolver, status, latency, requests, result, peer verified.
    """
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ROUTE"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line or line.startswith(" "):
            break
        cells = re.split(r"\s{2,}", line)
        rows[cells[0]] = cells
    return rows


def test_demo_routes_every_route_and_cleans_up(tmp_path: Path) -> None:
    proc = demo(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    header = next(line for line in out.splitlines() if line.startswith("ROUTE"))
    assert header.split()[:3] == ["ROUTE", "MESH", "RESOLVER"]
    rows = table(out)
    plain = {r for r, cells in rows.items() if cells[1] == "none"}
    assert plain >= {"shop.example.com/", "shop.example.com/api/v1/", "*/api/health", "*/blog"}
    meshed = {cells[1]: cells for cells in rows.values() if cells[1] != "none"}
    assert set(meshed) == {"istio", "linkerd", "consul"}, out
    for mesh, (_, _, resolver, status, _, _, result, peer) in meshed.items():
        # The SAN the gateway verified on the sidecar, and the gateway's identity
        # as the sidecar verified it (echoed back in x-mesh-peer).
        assert peer == f"{SERVER[mesh]} / {GATEWAY[mesh]}", (mesh, out)
        assert (resolver, status) == ("endpoints", "200"), (mesh, out)
        assert result.startswith("ok ("), (mesh, out)
    for cells in rows.values():
        ok, total = map(int, cells[5].split("/"))
        assert ok == total > 0, (cells, out)  # no request failed, rotation included
    assert "every sidecar saw the new certificate" in out
    assert "clusters modified by the rotation: 0" in out
    assert "identities loaded from OUTPUT_CERTS: istio 2, linkerd 2, consul 2" in out
    assert "shop/legacy" in out and "meshbridge.io/timeout" in out  # the bad Service, shown
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.glob("meshbridge-demo-*")) == []


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    proc = demo(tmp_path)
    try:
        # Interrupt once the gateway Envoy runs: the moment with the most to clean up.
        wait_for(
            lambda: processes_mentioning(str(tmp_path)) or proc.poll() is not None,
            timeout=60,
            interval=0.01,
            what="the demo's Envoy to start",
        )
        assert proc.poll() is None, "the demo finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.glob("meshbridge-demo-*")) == []
