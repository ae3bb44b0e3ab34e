"""``meshbridge demo``: the whole path on one machine, no cluster needed.

The plain flow (:mod:`bridge.demo.plain`): the bundled example world
(``bridge/demo/world``, also ``examples/world`` in the repository), with
its EndpointSlices rewritten to point at two local backends, is written to
a temporary directory and served by an in-process bridge (directory source,
pipeline, xDS server); a real Envoy gateway starts from
:mod:`bridge.bootstrap` and connects over ADS; a request goes through the
gateway to every route; one table row per route is printed. The exit code
is 0 only if every route answered from the backend it should.

Every process and server the demo starts is stopped on the way out,
Ctrl-C included; the temporary directory is removed.
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
