"""Certificate rotation under steady load, through real Envoys: zero failed requests.

The gateway's Istio identity comes from the ``files:DIR`` provider (an
istio-agent ``OUTPUT_CERTS`` directory written by a local CA), goes through
the store, meshbridge's translation and ADS server, and reaches the gateway
Envoy as SDS secrets. While a steady load runs through the gateway to an
Istio-style sidecar (which closes connections every few requests, so the
gateway handshakes over and over), the test performs:

1. an identity rotation (same root);
2. a trust-bundle rotation, first half: the new root is added (R1+R2);
3. the sidecar's server certificate moves to the new root, and the gateway's
   identity is re-issued by the new root (identity rotation 2);
4. identity rotation 3;
5. trust-bundle rotation, second half: the old root is removed (R2 only).

Every request must succeed, every gateway certificate must be seen by the
sidecar, and the gateway's cluster must never change (a rotation is a Secret
update only).

``MESHBRIDGE_ROTATION_SECONDS`` (default 5) and ``MESHBRIDGE_ROTATION_RATE``
(default 200 requests/s) size the load; the full run is
``MESHBRIDGE_ROTATION_SECONDS=20``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.demo.meshes import DemoMeshCa, SdsFile, istio_sidecar
from bridge.identity import pki
from bridge.identity.files import FilesProvider
from bridge.identity.rotation import SystemClock
from bridge.model.ir import Ir, Mesh, Secret, SecretName
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.resolve.meshtls import EDGE_HEADERS_TO_REMOVE, MeshTarget, mesh_tls
from bridge.store import Store
from tests.meshes.harness import BridgeThread, gateway_bootstrap, get
from tests.meshes.load import Load
from tests.meshes.world import make_ir, route, upstream
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("MESHBRIDGE_ROTATION_SECONDS", "5"))
RATE = float(os.environ.get("MESHBRIDGE_ROTATION_RATE", "200"))
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def write_sds(path: Path, name: str, issued: pki.Issued) -> None:
    """A Secret for Envoy's file-based SDS, replaced by rename (Envoy watches for moves)."""
    doc = {
        "resources": [
            {
                "@type": SECRET_TYPE,
                "name": name,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": issued.cert_chain_pem},
                    "private_key": {"inline_string": issued.private_key.reveal().decode()},
                },
            }
        ]
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


def write_root(directory: Path, pem: str) -> None:
    tmp = directory / ".root-cert.pem.tmp"
    tmp.write_text(pem)
    tmp.replace(directory / "root-cert.pem")


def active_secret(envoy: EnvoyProcess, name: str) -> dict[str, Any]:
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_active_secrets") or "{}")
    for entry in dump.get("configs", []):
        if entry.get("name") == name:
            return dict(entry.get("secret", {}))
    return {}


def serving_serials(envoy: EnvoyProcess) -> set[int]:
    certs = json.loads(envoy.admin_get("/certs") or "{}")
    return {
        int(c["serial_number"], 16)
        for item in certs.get("certificates", [])
        for c in item.get("cert_chain", [])
    }


def cluster_versions(envoy: EnvoyProcess) -> dict[str, str]:
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_active_clusters") or "{}")
    return {c["cluster"]["name"]: c.get("version_info", "") for c in dump.get("configs", [])}


def test_rotation_under_load_fails_no_request(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    r1 = DemoMeshCa(Mesh.ISTIO, now=now - dt.timedelta(days=1), name="istio root one")
    r2 = DemoMeshCa(Mesh.ISTIO, now=now - dt.timedelta(days=1), name="istio root two")
    both = r1.root_pem + r2.root_pem
    certs_dir = tmp_path / "istio-certs"
    sds_dir = tmp_path / "sidecar-sds"
    sds_dir.mkdir()
    server_sds = SdsFile(name="server", path=str(sds_dir / "server.yaml"))

    gw = [
        r1.issue("edge", "meshbridge", now=now),
        r1.issue("edge", "meshbridge", now=now),
        r2.issue("edge", "meshbridge", now=now),
        r2.issue("edge", "meshbridge", now=now),
    ]
    r1.write_output_certs(certs_dir, gw[0])
    write_sds(Path(server_sds.path), "server", r1.issue("shop", "cart", now=now))
    sidecar_port, gw_port = free_port(), free_port()

    store = Store()
    provider = FilesProvider(Mesh.ISTIO, store, certs_dir, clock=SystemClock(), poll_interval=0.05)
    settings = ResolveSettings()
    target = MeshTarget(
        ref=ObjectRef(Kind.SERVICE, "shop", "cart"),
        namespace="shop",
        service="cart",
        port=8080,
        service_accounts=("cart",),
    )

    def ir_for(secrets: dict[SecretName, Secret]) -> Ir:
        tls = mesh_tls(Mesh.ISTIO, target, settings, secrets)
        assert tls.ok, tls.diagnostics
        up = upstream("cart", sidecar_port, tls.tls, Mesh.ISTIO)
        return make_ir(gw_port, [route("/", up, remove=EDGE_HEADERS_TO_REMOVE)], [up], secrets)

    bridge = BridgeThread().start()

    async def follow() -> None:
        # What the pipeline does for a secrets-only change: take, translate, publish.
        while True:
            await store.wait()
            world, _ = store.take()
            bridge._publish(ir_for(dict(world.mesh_secrets)))

    async def first_poll() -> bool:
        return provider.poll()

    sidecar = EnvoyProcess(
        istio_sidecar(
            name="cart",
            port=sidecar_port,
            cert=server_sds,
            trust=both,
            max_requests_per_connection=10,
        )
    )
    gateway = EnvoyProcess(gateway_bootstrap(0))
    tasks = []
    load: Load | None = None
    try:
        assert bridge.call(first_poll)
        tasks = [bridge.spawn(follow), bridge.spawn(provider.run)]
        sidecar.start()
        gateway = EnvoyProcess(gateway_bootstrap(bridge.port)).start()
        wait_for(lambda: get(gw_port, "/").status == 200, timeout=20, what="first request")
        clusters_before = cluster_versions(gateway)
        assert clusters_before

        load = Load(gw_port, "/", rate=RATE, seconds=SECONDS).start()
        planned = load.result.planned
        seen = load.result.peer_serials
        step_done_at: list[int] = []

        def at(fraction: float) -> None:
            wait_for(
                lambda: load is not None and load.result.done >= fraction * planned,
                timeout=SECONDS * 3 + 10,
                what=f"load to reach {fraction:.0%}",
            )

        def settle(cond: Any, what: str) -> None:
            wait_for(cond, timeout=10, interval=0.01, what=what)
            step_done_at.append(load.result.done if load else 0)

        # 1. identity rotation, same root.
        at(1 / 6)
        r1.write_output_certs(certs_dir, gw[1])
        settle(lambda: gw[1].info.serial in seen, "sidecar to see gateway cert 2")
        # 2. trust rotation, first half: add the new root.
        at(2 / 6)
        write_root(certs_dir, both)
        settle(
            lambda: (
                r2.root_pem.strip()
                in active_secret(gateway, "trust/istio")
                .get("validation_context", {})
                .get("trusted_ca", {})
                .get("inline_string", "")
            ),
            "gateway to trust the new root",
        )
        # 3. the sidecar moves to the new root; the gateway's identity too.
        at(3 / 6)
        server2 = r2.issue("shop", "cart", now=now)
        write_sds(Path(server_sds.path), "server", server2)
        settle(lambda: server2.info.serial in serving_serials(sidecar), "sidecar's new cert")
        r2.write_output_certs(certs_dir, gw[2], roots_pem=both)
        settle(lambda: gw[2].info.serial in seen, "sidecar to see gateway cert 3")
        # 4. identity rotation 3.
        at(4 / 6)
        r2.write_output_certs(certs_dir, gw[3], roots_pem=both)
        settle(lambda: gw[3].info.serial in seen, "sidecar to see gateway cert 4")
        # 5. trust rotation, second half: drop the old root.
        at(5 / 6)
        write_root(certs_dir, r2.root_pem)
        settle(
            lambda: (
                r1.root_pem.strip()
                not in active_secret(gateway, "trust/istio")
                .get("validation_context", {})
                .get("trusted_ca", {})
                .get("inline_string", "x")
            ),
            "gateway to drop the old root",
        )
        result = load.join(timeout=SECONDS * 3 + 30)
        print(f"\nrotation under load: {result.summary()}")
        print(f"steps completed at request counts {step_done_at} of {planned}")

        assert result.done == planned
        assert result.failed == 0, f"{result.summary()}; first errors: {result.errors[:5]}"
        # Every step took effect while the load was still running.
        assert step_done_at[-1] < planned, (step_done_at, planned)
        assert {c.info.serial for c in gw} <= result.peer_serials
        assert provider.reloads == 4 and provider.trust_reloads == 2
        assert provider.diagnostics == ()
        # Rotation is a Secret update only: the cluster never changed.
        assert cluster_versions(gateway) == clusters_before
        assert gateway.stats().get("cluster_manager.cluster_modified", 0) == 0
    finally:
        if load is not None:
            load.stop()
            load.join(timeout=15)
        for fut in tasks:
            fut.cancel()
        gateway.stop()
        sidecar.stop()
        bridge.stop()
