"""The meshbridge command: exit codes, resolve output, bootstrap, serve's start and stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import yaml

from bridge.cli import main
from tests.support.wait import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "examples" / "world"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_config_key_stops_serve_with_exit_2_and_the_path(tmp_path: Path) -> None:
    config = tmp_path / "meshbridge.yaml"
    config.write_text("consul:\n  tls:\n    ca_fiel: /etc/ca.pem\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "consul.tls.ca_fiel: unknown key (did you mean ca_file?)" in proc.stderr


def test_resolve_table_shows_the_bad_service_and_resolves_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "resolve", "--source", f"dir:{WORLD}")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "ROUTES", "RESOLVER"]
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith(" ")}
    assert set(rows) == {
        "blog/blog",
        "shop/api",
        "shop/legacy",
        "shop/web",
        "bookstore/reviews",
        "emojivoto/voting",
        "payments/payments",
    }  # not shop/db
    assert (
        "shop.example.com/" in rows["shop/web"]
        and "2: 10.244.1.12:8080, 10.244.2.7:8080" in (rows["shop/web"])
    )
    assert "annotation meshbridge.io/mesh=none on namespace shop" in rows["shop/api"]
    assert "(left out" in rows["shop/legacy"]
    legacy_at = lines.index(rows["shop/legacy"])
    assert "meshbridge.io/timeout" in lines[legacy_at + 1] and "soon" in lines[legacy_at + 1]


def test_resolve_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "resolve", "--source", f"dir:{WORLD}", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    by_name = {s["service"]: s for s in doc["services"]}
    web = by_name["shop/web"]
    assert web["exposed"] and web["routes"] == ["shop.example.com/"]
    assert web["resolver"] == "endpoints" and web["mesh"] == "none"
    assert web["endpoints"] == ["10.244.1.12:8080", "10.244.2.7:8080"]  # terminating left out
    assert by_name["shop/api"]["routes"] == ["shop.example.com/api/v1/", "*/api/health"]
    legacy = by_name["shop/legacy"]
    assert legacy["left_out"] and legacy["routes"] == [] and legacy["endpoints"] == []
    assert not web["left_out"]
    (diag,) = legacy["diagnostics"]
    assert diag["field"] == "metadata.annotations[meshbridge.io/timeout]"
    assert diag["severity"] == "error" and "soon" in diag["message"] and diag["fix"]
    assert doc["other_diagnostics"] == []


def test_resolve_selects_services_and_reports_file_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for f in WORLD.glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    code, out, _ = run(capsys, "resolve", "--source", f"dir:{tmp_path}", "-o", "json", "blog")
    assert code == 0
    doc = json.loads(out)
    assert [s["service"] for s in doc["services"]] == ["blog/blog"]
    (problem,) = doc["other_diagnostics"]
    assert problem["object"] == f"File {tmp_path / 'broken.yaml'}"
    assert "not valid YAML" in problem["message"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["resolve", "--source", "git:x"], "expected 'kubernetes' or 'dir:PATH'", id="src"
        ),
        pytest.param(["resolve", "--source", f"dir:{WORLD}", "a/b/c"], "expected NS/SVC", id="sel"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import bridge

    assert run(capsys, "version")[:2] == (0, f"meshbridge {bridge.__version__}\n")


def test_bootstrap_prints_an_ads_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "bootstrap", "--xds", "127.0.0.1:18000", "--node-id", "gw-1", "--delta"
    )
    assert code == 0
    boot = yaml.safe_load(out)
    assert boot["node"]["id"] == "gw-1"
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_serve_answers_health_and_stops_on_sigint(tmp_path: Path) -> None:
    admin = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "bridge", "serve", "--source", f"dir:{WORLD}"),
            *("--xds", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: proc.poll() is None and _get(f"http://127.0.0.1:{admin}/readyz") == 200,
            timeout=20,
            what="readyz",
        )
        assert _get(f"http://127.0.0.1:{admin}/healthz") == 200
        assert _get(f"http://127.0.0.1:{admin}/nope") == 404
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_resolve_shows_istio_tls_and_identity_expiry_from_files_mode(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import datetime as dt

    from bridge.demo.meshes import DemoMeshCa
    from bridge.model.ir import Mesh

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = DemoMeshCa(Mesh.ISTIO, now=now)
    ca.write_output_certs(tmp_path / "certs", ca.issue("meshbridge", "meshbridge", now=now))
    world = tmp_path / "world"
    world.mkdir()
    (world / "all.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: Namespace
            metadata: {name: pay, labels: {istio-injection: enabled}}
            ---
            apiVersion: v1
            kind: Service
            metadata:
              name: card
              namespace: pay
              annotations: {meshbridge.io/prefix: /pay}
            spec: {ports: [{name: http, port: 80}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: card-1
              namespace: pay
              labels: {kubernetes.io/service-name: card}
            addressType: IPv4
            ports: [{name: http, port: 8080}]
            endpoints:
            - addresses: [10.1.0.5]
              targetRef: {kind: Pod, name: card-0}
            ---
            apiVersion: v1
            kind: Pod
            metadata:
              name: card-0
              namespace: pay
              labels: {security.istio.io/tlsMode: istio}
            spec: {serviceAccountName: card-sa}
            status: {podIPs: [{ip: 10.1.0.5}]}
            """
        )
    )
    config = tmp_path / "meshbridge.yaml"
    config.write_text(f"istio:\n  identity: files:{tmp_path / 'certs'}\n")
    code, out, _ = run(
        capsys, "resolve", "--config", str(config), "--source", f"dir:{world}", "-o", "json"
    )
    assert code == 0
    (card,) = json.loads(out)["services"]
    assert card["mesh"] == "istio" and "security.istio.io/tlsMode" in card["mesh_reason"]
    assert card["verify_san"] == ["URI:spiffe://cluster.local/ns/pay/sa/card-sa"]
    assert card["sni"] == ["outbound_.80_._.card.pay.svc.cluster.local"]
    assert "istio-peer-exchange" not in card["alpn"] and "istio" in card["alpn"]
    (identity,) = card["identity"]
    assert "expires" in identity
    assert card["diagnostics"] == []
