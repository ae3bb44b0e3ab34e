"""Wiring mistakes stop ``serve`` at start-up with exit 2 and the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            "istio:\n  identity: ca\n",
            "istio.token_file: set a projected service-account token file (audience istio-ca)",
            id="istio-token",
        ),
        pytest.param(
            "linkerd:\n  mode: ca\n",
            "linkerd.token_file: set a projected service-account token file "
            "(audience identity.l5d.io)",
            id="linkerd-token",
        ),
        pytest.param(
            "consul:\n  tls:\n    server_name: consul.example\n",
            "consul.tls.server_name: not supported for Consul",
            id="consul-server-name",
        ),
        pytest.param(
            "catalog_sync:\n  to_kubernetes:\n    enabled: true\n",
            "catalog_sync.to_kubernetes.enabled: writing ExternalName Services needs a cluster",
            id="to-kubernetes-needs-a-cluster",
        ),
    ],
)
def test_serve_refuses_a_config_it_cannot_wire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    path = tmp_path / "meshbridge.yaml"
    path.write_text(config)
    world = tmp_path / "world"
    world.mkdir()
    code = main(["serve", "--config", str(path), "--source", f"dir:{world}", "--admin", ""])
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
