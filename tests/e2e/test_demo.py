"""``meshbridge demo``: prints its table, exits 0, and leaves nothing running — Ctrl-C too."""

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


def test_demo_routes_every_route_and_cleans_up(tmp_path: Path) -> None:
    proc = demo(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    header = next(line for line in out.splitlines() if line.startswith("ROUTE"))
    assert header.split()[:3] == ["ROUTE", "MESH", "RESOLVER"]
    rows = [line for line in out.splitlines() if re.match(r"^\S+/\S*\s+none\s", line)]
    assert {r.split()[0] for r in rows} >= {
        "shop.example.com/",
        "shop.example.com/api/v1/",
        "*/api/health",
        "*/blog",
    }
    assert all(" 200 " in r and "ok (" in r for r in rows), out
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
