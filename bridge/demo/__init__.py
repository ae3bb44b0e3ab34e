"""``meshbridge demo``: the whole path on one machine, no cluster needed.

The bundled example world (``bridge/demo/world``, also ``examples/world`` in
the repository) has plain Services and one Service per mesh — Istio, Linkerd
and Consul — whose pods carry the marks each mesh's injector leaves. The demo
(:mod:`bridge.demo.flow`) plays the cluster and the meshes:

- a local CA per mesh (:class:`bridge.demo.meshes.DemoMeshCa`) writes the
  gateway's identity into an istio-agent style ``OUTPUT_CERTS`` directory,
  which meshbridge reads with its ``files:DIR`` identity providers;
- each meshed Service gets a real "sidecar" Envoy enforcing that mesh's
  inbound mTLS rules (:mod:`bridge.demo.meshes`) in front of a small backend;
- an in-process meshbridge (directory source, pipeline, xDS server) feeds a
  real Envoy gateway started from :mod:`bridge.bootstrap`.

Requests go through the gateway to every route while the gateway's
identities are rotated once; one table row per route is printed. The exit
code is 0 only if every route answered from the backend it should, with no
failed request, and every sidecar verified the gateway's identity before and
after the rotation.

Private keys are written only into the temporary directories standing for the
mesh agents (0700 directories, 0600 files). Every process and server the demo
starts is stopped on the way out, Ctrl-C included; the temporary directory is
removed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def world_files() -> list[Path]:
    """The bundled example world's YAML files (package data, not the repository)."""
    root = resources.files("bridge.demo") / "world"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def run_demo() -> int:
    """Run the demo; returns the process exit code."""
    from bridge.demo.flow import main

    return main()
