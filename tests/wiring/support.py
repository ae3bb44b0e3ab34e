"""Helpers for the wiring tests: ``meshbridge serve`` as a subprocess, stand-ins in a thread.

The bridge under test is the real ``meshbridge`` command (``python -m bridge``)
in its own process group, fed by the directory source and talking to the
stand-ins over loopback; the gateway is a real Envoy fed over ADS. The
stand-ins (Consul agent, istiod CA) are asyncio servers: they run on an event
loop in a background thread (:class:`LoopThread`) so the tests stay
synchronous and may block on HTTP requests. Every process and server is
stopped by the context manager that started it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.meshes.harness import gateway_bootstrap
from tests.support.envoy import EnvoyProcess
from tests.support.wait import free_port, wait_for

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
NODE_ID = "gateway"  # what tests.meshes.harness.gateway_bootstrap names the gateway
DEADLINE = 20.0


class LoopThread:
    """An asyncio event loop in a daemon thread, for stand-ins the tests drive synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine on the loop and wait for its result."""

        async def run() -> T:
            return await make()

        fut: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return fut.result(timeout)

    def do(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop (stand-in state is the loop's)."""

        async def run() -> T:
            return fn()

        return self.call(run)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


# -- the world as Kubernetes YAML ------------------------------------------------------


def namespace(name: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": dict(annotations or {})},
    }


def service(
    ns: str, name: str, annotations: Mapping[str, str], port: int = 80, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": dict(annotations), **meta},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]},
    }


def endpoint_slice(
    ns: str, svc: str, address: str, port: int, *, pod: str = "", node: str = ""
) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}}
    if pod:
        endpoint["targetRef"] = {"kind": "Pod", "namespace": ns, "name": pod}
    if node:
        endpoint["nodeName"] = node
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "endpoints": [endpoint],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def pod(ns: str, name: str, service_account: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"serviceAccountName": service_account, "containers": [{"name": "app"}]},
        "status": {"podIP": address, "phase": "Running"},
    }


def config_map(ns: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": dict(data),
    }


def write_docs(path: Path, docs: Sequence[Mapping[str, Any]]) -> None:
    """Write objects as one multi-document YAML file, replaced in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all([dict(d) for d in docs]))
    tmp.replace(path)


# -- meshbridge serve ----------------------------------------------------------------------


def base_config(
    xds_port: int, admin_port: int, gateway_port: int, gateway_namespace: str = "meshbridge"
) -> str:
    """Ports, the gateway's node id and namespace, fast debounce and polling (YAML text)."""
    return textwrap.dedent(
        f"""\
        xds:
          address: 127.0.0.1:{xds_port}
          allowed_node_ids: [{NODE_ID}]
        admin:
          address: 127.0.0.1:{admin_port}
        gateway:
          namespace: {gateway_namespace}
          listeners:
          - name: http
            port: {gateway_port}
            address: 127.0.0.1
        debounce:
          hold_off_ms: 20
          max_delay_ms: 200
        dir_source:
          poll_interval_ms: 50
        """
    )


def admin_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@dataclass
class Serve:
    """A running ``meshbridge serve`` and the gateway Envoy it feeds."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    world: Path
    config: Path
    xds_port: int
    admin_port: int
    gateway_port: int
    envoy: EnvoyProcess | None = None

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())


@contextmanager
def serve(
    tmp_path: Path, world: Path, extra_config: str = "", gateway_namespace: str = "meshbridge"
) -> Iterator[Serve]:
    """Start ``meshbridge serve --source dir:<world>``, wait for /readyz, start the gateway."""
    xds_port, admin_port, gateway_port = free_port(), free_port(), free_port()
    config = tmp_path / "meshbridge.yaml"
    config.write_text(
        base_config(xds_port, admin_port, gateway_port, gateway_namespace)
        + textwrap.dedent(extra_config)
    )
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "serve", "--log-level", "debug"),
                *("--config", str(config), "--source", f"dir:{world}", "--drain", "0"),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Serve(proc, log_path, world, config, xds_port, admin_port, gateway_port)
    try:
        wait_for(
            lambda: proc.poll() is None and admin_status(admin_port, "/readyz") == 200,
            timeout=DEADLINE,
            what=f"the bridge to be ready (log: {running.log_path})",
        )
        with EnvoyProcess(gateway_bootstrap(xds_port, NODE_ID)) as envoy:
            running.envoy = envoy
            yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def run_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGV`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


__all__ = ["DEADLINE", "free_port", "wait_for"]
