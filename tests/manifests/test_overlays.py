"""Every overlay builds with ``kubectl kustomize``, validates against Kubernetes' schema,
and deploys what the config file it carries expects (ports, paths, identities)."""

from __future__ import annotations

import pytest
import yaml
from kubernetes_validate import validate  # type: ignore[import-untyped]

from bridge.config import config_from_dict, parse_address
from tests.manifests.build import (
    MANIFESTS,
    OVERLAYS,
    ROOT,
    build,
    config_of,
    container,
    find,
    pod_spec,
)

# A current Kubernetes release whose schema kubernetes-validate ships.
KUBERNETES_VERSION = "1.37.0"
# Custom resources: their schemas come from CRDs installed with the mesh, not
# from Kubernetes' own OpenAPI, so kubernetes-validate cannot check them; their
# shape is checked by the tests below instead.
CUSTOM_GROUPS = ("consul.hashicorp.com/",)

TARGETS = ("base", *(f"overlays/{o}" for o in OVERLAYS))
OWN_WORKLOADS = (
    ("Deployment", "meshbridge"),
    ("Deployment", "meshbridge-gateway"),
    ("Job", "meshbridge-xds-certs"),
)


def test_every_overlay_directory_is_tested() -> None:
    on_disk = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
    assert on_disk == sorted(OVERLAYS)


@pytest.mark.parametrize("target", TARGETS)
def test_builds_and_validates_against_kubernetes_schema(target: str) -> None:
    docs = build(target)
    assert docs
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        # strict: a misspelt or misplaced field is an error, not silently dropped.
        validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("target", TARGETS)
def test_config_file_loads_with_the_real_loader(target: str) -> None:
    config_from_dict(config_of(build(target)), env={})


@pytest.mark.parametrize("target", TARGETS)
def test_bridge_runs_serve_with_the_mounted_config(target: str) -> None:
    docs = build(target)
    bridge = container(docs, "meshbridge", "meshbridge")
    assert bridge["args"] == [
        "serve",
        "--source",
        "kubernetes",
        "--config",
        "/etc/meshbridge/config.yaml",
    ]
    mount = {m["name"]: m["mountPath"] for m in bridge["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs, "meshbridge")["volumes"]}
    config_volume = volumes[next(n for n, p in mount.items() if p == "/etc/meshbridge")]
    projected = {
        f"/etc/meshbridge/{item['path']}"
        for source in config_volume["projected"]["sources"]
        for item in next(iter(source.values()))["items"]
    }
    config = config_from_dict(config_of(docs), env={})
    # Every file the config names is mounted where the config looks for it.
    for path in (config.xds.tls.ca_file, config.xds.tls.cert_file, config.xds.tls.key_file):
        assert path in projected, path
    assert "/etc/meshbridge/config.yaml" in projected
    for mode in (config.istio.identity, config.linkerd.mode):
        if mode.startswith("files:"):
            assert mode.removeprefix("files:") in mount.values(), mode


@pytest.mark.parametrize("target", TARGETS)
def test_ports_probes_and_services_agree_with_the_config(target: str) -> None:
    docs = build(target)
    config = config_from_dict(config_of(docs), env={})
    bridge = container(docs, "meshbridge", "meshbridge")
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    xds_host, xds_port = parse_address(config.xds.address)
    admin_host, admin_port = parse_address(config.admin.address)
    # Inside a pod the servers must listen on the pod's address, not loopback.
    assert xds_host == admin_host == "0.0.0.0"
    assert ports == {"xds": xds_port, "admin": admin_port}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert config.xds.allowed_node_ids == ("meshbridge-gateway",)

    svc = find(docs, "Service", "meshbridge")
    assert {p["port"] for p in svc["spec"]["ports"]} == {xds_port, admin_port}

    envoy = container(docs, "meshbridge-gateway", "envoy")
    assert envoy["image"].startswith("envoyproxy/envoy:") and "v1.40." in envoy["image"]
    listener_ports = {lc.port for lc in config.gateway.listeners}
    assert {p["containerPort"] for p in envoy["ports"] if p["name"] == "http"} == listener_ports
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}

    gw_svc = find(docs, "Service", "meshbridge-gateway")
    (gw_port,) = gw_svc["spec"]["ports"]
    assert gw_port["targetPort"] == "http"
    kind_cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    mapped = {
        m["containerPort"]: m["hostPort"]
        for node in kind_cfg["nodes"]
        for m in node.get("extraPortMappings", [])
    }
    assert mapped[gw_port["nodePort"]] == 8080


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_match_their_pods(target: str) -> None:
    docs = build(target)
    labels = {
        name: find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for name in ("meshbridge", "meshbridge-gateway")
    }
    for name, pod_labels in labels.items():
        dep = find(docs, "Deployment", name)
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        pdb = find(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        svc = find(docs, "Service", name)
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for tsc in pod_spec(docs, name)["topologySpreadConstraints"]:
            assert tsc["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    # Only the gateway may open xDS streams.
    policy = find(docs, "NetworkPolicy", "meshbridge-xds")
    (xds_rule,) = [r for r in policy["spec"]["ingress"] if r.get("from")]
    (peer,) = xds_rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= labels["meshbridge-gateway"].items()
    assert xds_rule["ports"] == [{"port": 18000, "protocol": "TCP"}]


@pytest.mark.parametrize("target", TARGETS)
def test_workloads_are_locked_down(target: str) -> None:
    docs = build(target)
    for kind, name in OWN_WORKLOADS:
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}, (name, c["name"])
            assert set(c["resources"]["limits"]) == {"cpu", "memory"}, (name, c["name"])
    gateway = pod_spec(docs, "meshbridge-gateway")
    assert gateway["serviceAccountName"] == "meshbridge-gateway"
    assert gateway["automountServiceAccountToken"] is False
    assert (
        find(docs, "ServiceAccount", "meshbridge-gateway")["automountServiceAccountToken"] is False
    )
    assert pod_spec(docs, "meshbridge")["serviceAccountName"] == "meshbridge"
    # The gateway mounts the client half of the xDS certificates, never the server key.
    (tls,) = [v for v in gateway["volumes"] if "secret" in v]
    assert {i["key"] for i in tls["secret"]["items"]} == {"ca.crt", "client.crt", "client.key"}
    bridge_sources = next(v for v in pod_spec(docs, "meshbridge")["volumes"] if "projected" in v)
    (secret,) = [s["secret"] for s in bridge_sources["projected"]["sources"] if "secret" in s]
    assert {i["key"] for i in secret["items"]} == {"ca.crt", "server.crt", "server.key"}


def _pod_meta(target: str, deployment: str) -> dict[str, dict[str, str]]:
    meta = find(build(target), "Deployment", deployment)["spec"]["template"]["metadata"]
    return {"labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})}


def test_istio_ca_mode_keeps_sidecars_out() -> None:
    for name in ("meshbridge", "meshbridge-gateway"):
        assert _pod_meta("overlays/istio-ca", name)["labels"]["sidecar.istio.io/inject"] == "false"
    config = config_from_dict(config_of(build("overlays/istio-ca")), env={})
    assert config.istio.identity == "ca"


def test_istio_files_mode_agent_writes_certs_and_intercepts_nothing() -> None:
    docs = build("overlays/istio-files")
    bridge = _pod_meta("overlays/istio-files", "meshbridge")
    assert bridge["labels"]["sidecar.istio.io/inject"] == "true"
    ann = bridge["annotations"]
    out_dir = yaml.safe_load(ann["proxy.istio.io/config"])["proxyMetadata"]["OUTPUT_CERTS"]
    (user_mount,) = yaml.safe_load(ann["sidecar.istio.io/userVolumeMount"])
    assert user_mount["mountPath"] == out_dir
    assert ann["traffic.sidecar.istio.io/includeInboundPorts"] == ""
    assert ann["traffic.sidecar.istio.io/includeOutboundIPRanges"] == ""
    # The bridge reads the same volume at the directory its config names.
    config = config_from_dict(config_of(docs), env={})
    cert_dir = config.istio.identity.removeprefix("files:")
    mounts = {
        m["mountPath"]: m["name"]
        for m in container(docs, "meshbridge", "meshbridge")["volumeMounts"]
    }
    assert mounts[cert_dir] == user_mount["name"]
    gateway = _pod_meta("overlays/istio-files", "meshbridge-gateway")
    assert gateway["labels"]["sidecar.istio.io/inject"] == "false"


def test_linkerd_direct_mode_injects_nothing() -> None:
    for name in ("meshbridge", "meshbridge-gateway"):
        assert (
            _pod_meta("overlays/linkerd-direct", name)["annotations"]["linkerd.io/inject"]
            == "disabled"
        )
    config = config_from_dict(config_of(build("overlays/linkerd-direct")), env={})
    assert config.linkerd.mode == "ca"


def test_linkerd_sidecar_mode_meshes_the_gateway_but_not_its_xds() -> None:
    docs = build("overlays/linkerd-sidecar")
    gateway = _pod_meta("overlays/linkerd-sidecar", "meshbridge-gateway")["annotations"]
    assert gateway["linkerd.io/inject"] == "enabled"
    config = config_from_dict(config_of(docs), env={})
    _, xds_port = parse_address(config.xds.address)
    assert gateway["config.linkerd.io/skip-outbound-ports"] == str(xds_port)
    assert (
        _pod_meta("overlays/linkerd-sidecar", "meshbridge")["annotations"]["linkerd.io/inject"]
        == "disabled"
    )
    assert config.linkerd.mode == "sidecar"
    # In sidecar mode the mesh identity is the gateway pod's own.
    assert (
        config.gateway.service_account == pod_spec(docs, "meshbridge-gateway")["serviceAccountName"]
    )


def test_consul_token_intentions_and_catalog_sync() -> None:
    docs = build("overlays/consul")
    for name in ("meshbridge", "meshbridge-gateway"):
        ann = _pod_meta("overlays/consul", name)["annotations"]
        assert ann["consul.hashicorp.com/connect-inject"] == "false"
    env = {e["name"]: e for e in container(docs, "meshbridge", "meshbridge")["env"]}
    ref = env["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "meshbridge-consul-token" and ref["key"] == "token"
    raw = config_of(docs)
    # The token must not be written into the ConfigMap.
    assert "token" not in raw["consul"]
    config = config_from_dict(raw, env={"CONSUL_HTTP_TOKEN": "t0ken"})
    assert config.consul.token is not None
    assert config.catalog_sync.to_consul.enabled and config.catalog_sync.to_kubernetes.enabled

    (intention,) = [d for d in docs if d["kind"] == "ServiceIntentions"]
    assert intention["apiVersion"] == "consul.hashicorp.com/v1alpha1"
    assert intention["spec"]["destination"]["name"]
    assert {"name": config.consul.identity_service, "action": "allow"} in intention["spec"][
        "sources"
    ]

    # The ExternalName Services go to a namespace that exists and where (only)
    # the bridge may write Services.
    ns = config.catalog_sync.to_kubernetes.namespace
    find(docs, "Namespace", ns)
    role = find(docs, "Role", "meshbridge-catalog-sync", namespace=ns)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["services"],
            "verbs": ["get", "create", "update", "delete"],
        }
    ]
    # NodePort Services register node addresses: Nodes are read, never written.
    nodes = find(docs, "ClusterRole", "meshbridge-catalog-sync-nodes")
    assert nodes["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}
    ]
    assert ns in config.catalog_sync.to_consul.deny_namespaces


DEMOS = ("demo/istio", "demo/linkerd", "demo/consul")


@pytest.mark.parametrize("target", DEMOS)
def test_demo_builds_validates_and_its_annotations_parse(target: str) -> None:
    from bridge.resolve.annotations import parse_service
    from bridge.sources.convert import parse_object

    docs = build(target)
    for doc in docs:
        validate(doc, KUBERNETES_VERSION, strict=True)
    svc = parse_object(find(docs, "Service", "demo"), target)
    spec, diagnostics = parse_service(svc)  # type: ignore[arg-type]
    assert diagnostics == ()
    assert spec.routes
