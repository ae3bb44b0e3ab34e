"""End to end against a real Kubernetes cluster: skipped unless one is given.

Set ``MESHBRIDGE_E2E_KUBECONFIG`` to a kubeconfig (its current context is
used) to run it, e.g. against a local kind cluster::

    kind create cluster --config kind-config.yaml
    MESHBRIDGE_E2E_KUBECONFIG=$HOME/.kube/config .venv/bin/python -m pytest tests/realcluster

Through the real ``kubernetes`` client the test creates a namespace of its
own (``meshbridge-e2e-<random>``) holding a Service without a selector and an
EndpointSlice for it (no Deployment: nothing has to be pulled or scheduled),
annotated with ``meshbridge.io/prefix``. It runs ``meshbridge serve --source
kubernetes`` on this machine against the cluster, scoped to that namespace
(its Lease lives there too), and a real Envoy from ``meshbridge bootstrap``.
It checks the route, the cluster and the endpoint appear in Envoy's
``/config_dump`` and ``/clusters``, then removes the annotation and checks
the route goes away. The namespace is deleted at the end, whatever happened.

The endpoint's address is from TEST-NET-1 (192.0.2.0/24): the API server
refuses loopback addresses in EndpointSlices, and the test looks at Envoy's
configuration, not at traffic, so nothing has to answer there.

The object builders and the readiness probe are those of the stand-in
end-to-end test (``tests/kubernetes``); only the cluster differs.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.conftest import endpoint_slice, namespace, service
from tests.kubernetes.test_e2e import _ready
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

KUBECONFIG_ENV = "MESHBRIDGE_E2E_KUBECONFIG"
KUBECONFIG = os.environ.get(KUBECONFIG_ENV, "")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not KUBECONFIG,
        reason=f"no real cluster: set {KUBECONFIG_ENV} to a kubeconfig to run this "
        "(e.g. after `kind create cluster --config kind-config.yaml`, "
        f"{KUBECONFIG_ENV}=$HOME/.kube/config)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "realcluster-e2e-gateway"
DEADLINE = 60.0  # a real API server and watch are slower than the stand-in
ENDPOINT_IP = "192.0.2.10"  # TEST-NET-1: valid in an EndpointSlice, never routed
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Cluster:
    """The real cluster through the ``kubernetes`` client, and the test's namespace."""

    core: Any  # kubernetes.client.CoreV1Api
    discovery: Any  # kubernetes.client.DiscoveryV1Api
    namespace: str
    kubeconfig: Path


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    from kubernetes import client, config

    kubeconfig = Path(KUBECONFIG).expanduser()
    if not kubeconfig.is_file():
        pytest.fail(f"{KUBECONFIG_ENV}={KUBECONFIG!r} is not a file: point it at a kubeconfig")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    name = f"meshbridge-e2e-{secrets.token_hex(3)}"
    core.create_namespace(body=namespace(name, {"app.kubernetes.io/created-by": "meshbridge-e2e"}))
    try:
        yield Cluster(core, client.DiscoveryV1Api(api), name, kubeconfig)
    finally:
        try:
            core.delete_namespace(name)
        finally:
            api.close()


@dataclass
class Gateway:
    envoy: EnvoyProcess
    bridge_log: Path

    def wait(self, cond: Callable[[], object], what: str) -> None:
        wait_for(
            cond,
            timeout=DEADLINE,
            what=f"{what} (bridge log: {self.bridge_log.read_text()[-3000:]})",
        )

    def route_prefixes(self) -> set[str]:
        """Every route prefix in Envoy's dynamic route configurations."""
        out: set[str] = set()
        for cfg in self.envoy.config_dump().get("configs", []):
            for rc in cfg.get("dynamic_route_configs", []):
                for vh in rc.get("route_config", {}).get("virtual_hosts", []):
                    out.update(r.get("match", {}).get("prefix", "") for r in vh.get("routes", []))
        return out - {""}

    def clusters(self) -> set[str]:
        """The names of Envoy's dynamic active clusters."""
        return {
            c["cluster"]["name"]
            for cfg in self.envoy.config_dump().get("configs", [])
            for c in cfg.get("dynamic_active_clusters", [])
        }

    def endpoints(self, cluster: str) -> str:
        """Envoy's ``/clusters`` lines for one cluster (host:port of each endpoint)."""
        text = self.envoy.admin_get("/clusters") or ""
        return "\n".join(line for line in text.splitlines() if line.startswith(f"{cluster}::"))


@pytest.fixture
def gateway(cluster: Cluster, tmp_path: Path) -> Iterator[Gateway]:
    """``meshbridge serve --source kubernetes`` against the cluster, and an Envoy it feeds."""
    xds_port, admin_port, gateway_port = free_port(), free_port(), free_port()
    config = tmp_path / "meshbridge.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            xds:
              address: 127.0.0.1:{xds_port}
              allowed_node_ids: [{NODE_ID}]
            admin:
              address: 127.0.0.1:{admin_port}
            gateway:
              namespace: {cluster.namespace}
              listeners:
              - name: http
                port: {gateway_port}
                address: 127.0.0.1
            kubernetes:
              kubeconfig: {cluster.kubeconfig}
              namespaces: [{cluster.namespace}]
            debounce:
              hold_off_ms: 20
              max_delay_ms: 200
            """
        )
    )
    # The bridge runs on this machine, not in a pod: never the in-cluster config.
    environ = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "serve"),
                *("--config", str(config), "--source", "kubernetes"),
            ],
            cwd=REPO,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: proc.poll() is None and _ready(admin_port),
            timeout=DEADLINE,
            what=f"the bridge to be ready ({log_path.read_text()[-3000:]})",
        )
        boot = subprocess.run(
            [
                *(sys.executable, "-m", "bridge", "bootstrap"),
                *("--xds", f"127.0.0.1:{xds_port}", "--node-id", NODE_ID),
                *("--listen-port", str(gateway_port), "--admin-port", str(free_port())),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        with EnvoyProcess(boot.stdout) as envoy:
            yield Gateway(envoy, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_annotated_service_gets_a_route_that_goes_when_the_annotation_does(
    cluster: Cluster, gateway: Gateway
) -> None:
    ns = cluster.namespace
    prefix = f"/{ns}/"
    # No selector: the EndpointSlice below is this Service's only one, and its
    # managed-by label keeps the cluster's EndpointSlice controller off it.
    svc = service(ns, "web", {"meshbridge.io/prefix": prefix, "meshbridge.io/mesh": "none"})
    del svc["spec"]["selector"]
    cluster.core.create_namespaced_service(ns, svc)
    eps = endpoint_slice(ns, "web-manual", "web", [ENDPOINT_IP], port=8080)
    eps["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "meshbridge-e2e"
    cluster.discovery.create_namespaced_endpoint_slice(ns, eps)

    cluster_name = f"{ns}/web/http"
    gateway.wait(lambda: prefix in gateway.route_prefixes(), f"the route {prefix} in Envoy")
    gateway.wait(lambda: cluster_name in gateway.clusters(), f"the cluster {cluster_name}")
    gateway.wait(
        lambda: f"{ENDPOINT_IP}:8080" in gateway.endpoints(cluster_name),
        f"the endpoint {ENDPOINT_IP}:8080 of {cluster_name}",
    )

    # Remove the annotation (a JSON merge patch: null deletes the key).
    cluster.core.patch_namespaced_service(
        "web",
        ns,
        {"metadata": {"annotations": {"meshbridge.io/prefix": None}}},
        _content_type=MERGE_PATCH,
    )
    gateway.wait(lambda: prefix not in gateway.route_prefixes(), f"the route {prefix} to go")
    gateway.wait(lambda: cluster_name not in gateway.clusters(), f"{cluster_name} to go")
