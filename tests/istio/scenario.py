"""End-to-end scenario shared by the Istio and Linkerd CA tests (real Envoys, under load).

The gateway's identity comes from a mesh CA stand-in through the provider
under test, the store, meshbridge's translation and ADS server, to a real
gateway Envoy over SDS. The backend is a real Envoy that enforces the mesh's
inbound rules (:mod:`bridge.demo.meshes`) with a certificate from the same
CA; its certificate and trust bundle come from SDS files so they can rotate.

While a steady load runs (the sidecar closes connections every few
requests, so the gateway handshakes again and again), the scenario:

1. takes the CA down across a renewal and brings it back before the
   certificate expires;
2. adds a new root (ConfigMap and sidecar trust hold both);
3. switches the CA to the new root and re-issues the sidecar's certificate;
   waits for a gateway certificate from the new root to reach the sidecar;
4. removes the old root everywhere.

Every request must succeed, and the gateway's cluster must never change.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.demo.meshes import SdsFile
from bridge.identity import pki
from bridge.identity.provider import CaIdentityProvider
from bridge.model.ir import Ir, Mesh, Secret, SecretName
from bridge.model.k8s import K8sConfigMap
from bridge.model.settings import ResolveSettings
from bridge.resolve.meshtls import EDGE_HEADERS_TO_REMOVE, MeshTarget, mesh_tls
from bridge.store import Store
from tests.meshes.harness import BridgeThread, gateway_bootstrap, get
from tests.meshes.load import Load, LoadResult
from tests.meshes.world import make_ir, route, upstream
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def write_cert(sds: SdsFile, issued: pki.Issued) -> None:
    _write(
        sds,
        {
            "tls_certificate": {
                "certificate_chain": {"inline_string": issued.cert_chain_pem},
                # A throwaway key of the test CA, handed to the sidecar's own Envoy.
                "private_key": {"inline_string": issued.private_key.reveal().decode()},
            }
        },
    )


def write_trust(sds: SdsFile, bundle_pem: str) -> None:
    _write(sds, {"validation_context": {"trusted_ca": {"inline_string": bundle_pem}}})


def _write(sds: SdsFile, body: dict[str, Any]) -> None:
    path = Path(sds.path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"resources": [{"@type": TYPE, "name": sds.name, **body}]}))
    tmp.replace(path)  # Envoy watches the directory for moves


def active_trust(envoy: EnvoyProcess, name: str) -> str:
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_active_secrets") or "{}")
    for entry in dump.get("configs", []):
        if entry.get("name") == name:
            ctx = entry.get("secret", {}).get("validation_context", {})
            return str(ctx.get("trusted_ca", {}).get("inline_string", ""))
    return ""


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


@dataclass
class CaControls:
    """The mesh-specific parts: what the scenario does to the CA stand-in."""

    start: Callable[[], Awaitable[Any]]
    stop: Callable[[], Awaitable[None]]
    outage: Callable[[], Awaitable[None]]
    recover: Callable[[], Awaitable[None]]
    roots_pem: Callable[[], str]
    config_map: Callable[[str], K8sConfigMap]  # the roots ConfigMap holding this bundle
    add_root: Callable[[], pki.LocalCA]
    sign_with_newest: Callable[[], None]
    drop_oldest_root: Callable[[], None]
    issue_backend: Callable[[], pki.Issued]  # the sidecar's certificate, current root
    issued_serials_since: Callable[[int], set[int]]  # gateway serials after call N
    calls: Callable[[], int]


@dataclass
class Outcome:
    load: LoadResult
    steps_at: list[int]
    failures_in_outage: int


def run_scenario(
    *,
    mesh: Mesh,
    ca: CaControls,
    make_provider: Callable[[Store], CaIdentityProvider],
    target: MeshTarget,
    sidecar: Callable[[int, SdsFile, SdsFile], dict[str, Any]],
    workdir: Path,
    rate: float = 100.0,
) -> Outcome:
    settings = ResolveSettings()
    sds_dir = workdir / "sidecar-sds"
    sds_dir.mkdir()
    cert_sds = SdsFile(name="server", path=str(sds_dir / "server.yaml"))
    trust_sds = SdsFile(name="trust", path=str(sds_dir / "trust.yaml"))
    sidecar_port, gw_port = free_port(), free_port()
    store = Store()
    bridge = BridgeThread().start()
    tasks: list[Any] = []
    procs: list[EnvoyProcess] = []
    load: Load | None = None

    def ir_for(secrets: dict[SecretName, Secret]) -> Ir | None:
        tls = mesh_tls(mesh, target, settings, secrets)
        if not tls.ok:
            return None  # no identity yet: nothing to publish
        up = upstream(target.service, sidecar_port, tls.tls, mesh)
        return make_ir(gw_port, [route("/", up, remove=EDGE_HEADERS_TO_REMOVE)], [up], secrets)

    async def follow() -> None:
        while True:
            await store.wait()
            world, _ = store.take()
            ir = ir_for(dict(world.mesh_secrets))
            if ir is not None:
                bridge._publish(ir)

    def put_roots() -> None:
        async def go() -> None:
            store.upsert("kubernetes", ca.config_map(ca.roots_pem()))

        bridge.call(go)

    try:
        bridge.call(ca.start)
        put_roots()
        provider = make_provider(store)
        tasks = [bridge.spawn(follow), bridge.spawn(provider.run)]
        write_cert(cert_sds, ca.issue_backend())
        write_trust(trust_sds, ca.roots_pem())
        side = EnvoyProcess(sidecar(sidecar_port, cert_sds, trust_sds))
        procs.append(side)
        side.start()
        gateway = EnvoyProcess(gateway_bootstrap(bridge.port))
        procs.append(gateway)
        gateway.start()
        wait_for(lambda: get(gw_port, "/").status == 200, timeout=20, what="first request")
        clusters_before = cluster_versions(gateway)

        load = Load(gw_port, "/", rate=rate, seconds=60).start()
        seen = load.result.peer_serials
        steps_at: list[int] = []

        def step_done() -> None:
            steps_at.append(load.result.done if load else 0)

        def gateway_cert_after(n: int, what: str) -> None:
            wait_for(
                lambda: ca.issued_serials_since(n) & seen,
                timeout=20,
                interval=0.02,
                what=what,
            )

        # 1. CA outage across a renewal, shorter than the certificate's remaining life.
        wait_for(lambda: seen, timeout=10, what="load to start")
        bridge.call(ca.outage)
        wait_for(lambda: provider.rotator.failures >= 1, timeout=20, what="a failed renewal")
        failures = provider.rotator.failures
        cur = provider.current
        assert cur is not None and dt.datetime.now(dt.UTC) < cur.not_after
        mark = ca.calls()
        bridge.call(ca.recover)
        gateway_cert_after(mark, "a certificate issued after the outage")
        step_done()

        # 2. A new root: trusted everywhere before anything is signed by it.
        new_root = ca.add_root()
        write_trust(trust_sds, ca.roots_pem())
        put_roots()
        wait_for(
            lambda: new_root.root_pem.strip() in active_trust(gateway, provider.trust_name),
            timeout=10,
            what="gateway to trust the new root",
        )
        step_done()

        # 3. The CA signs with the new root; the sidecar and the gateway move to it.
        mark = ca.calls()
        ca.sign_with_newest()
        backend = ca.issue_backend()
        write_cert(cert_sds, backend)
        wait_for(
            lambda: backend.info.serial in serving_serials(side),
            timeout=10,
            what="sidecar's new certificate",
        )
        gateway_cert_after(mark, "a gateway certificate from the new root")
        step_done()

        # 4. The old root goes.
        old_pem = ca.roots_pem()
        ca.drop_oldest_root()
        write_trust(trust_sds, ca.roots_pem())
        put_roots()
        wait_for(
            lambda: (
                active_trust(gateway, provider.trust_name).strip() == ca.roots_pem().strip()
                and active_trust(gateway, provider.trust_name) != old_pem
            ),
            timeout=10,
            what="gateway to drop the old root",
        )
        mark = ca.calls()
        gateway_cert_after(mark, "a renewal under the new root alone")
        step_done()

        load.stop()
        result = load.join(timeout=30)
        assert cluster_versions(gateway) == clusters_before
        assert gateway.stats().get("cluster_manager.cluster_modified", 0) == 0
        return Outcome(load=result, steps_at=steps_at, failures_in_outage=failures)
    finally:
        if load is not None:
            load.stop()
            load.join(timeout=15)
        for fut in tasks:
            fut.cancel()
        for p in reversed(procs):
            p.stop()
        try:
            bridge.call(ca.stop)
        finally:
            bridge.stop()
