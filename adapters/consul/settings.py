"""How to reach Consul: address, TLS, token, datacenter, namespace/partition.

:meth:`ConsulClientSettings.from_env` reads Consul's standard environment
variables the way Consul's own CLI does; the config file's values are then
applied on top with :meth:`ConsulClientSettings.with_overrides`, so the file
wins over the environment. This module reads no files: the CA and client
certificate paths are only opened by :mod:`adapters.consul.client` when it
builds its TLS context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.model.secrets import SecretBytes


@dataclass(frozen=True, slots=True)
class ConsulClientSettings:
    """Everything the Consul adapter needs to talk to one agent."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"  # "http" or "https"
    token: SecretBytes | None = None  # sent only as the X-Consul-Token header
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True  # verify the agent's certificate (https only)
    datacenter: str = ""  # "" = the agent's own datacenter (no ?dc= sent)
    namespace: str = ""  # Enterprise only; "" = never sent (CE answers 400 to ?ns=)
    partition: str = ""  # Enterprise only; "" = never sent
    # Blocking queries: Consul's wait; the read timeout is wait + wait/16 + slack.
    wait_s: float = 300.0
    # Loops never call Consul more often than this, whatever it answers.
    min_interval_s: float = 0.2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsulClientSettings:
        """Defaults from ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_SSL``, ...

        Pass ``os.environ`` (the caller reads the environment; this function
        only parses the mapping it is given).
        """
        s = cls()
        updates: dict[str, Any] = {}
        addr = env.get("CONSUL_HTTP_ADDR", "").strip()
        if addr:
            updates.update(_parse_addr(addr, "CONSUL_HTTP_ADDR"))
        ssl_flag = env.get("CONSUL_HTTP_SSL", "").strip().lower()
        if ssl_flag:
            # As in Consul's CLI, CONSUL_HTTP_SSL decides the scheme over the address's.
            updates["scheme"] = "https" if _truthy(ssl_flag, "CONSUL_HTTP_SSL") else "http"
        verify = env.get("CONSUL_HTTP_SSL_VERIFY", "").strip().lower()
        if verify:
            updates["verify"] = _truthy(verify, "CONSUL_HTTP_SSL_VERIFY")
        token = env.get("CONSUL_HTTP_TOKEN", "").strip()
        if token:
            updates["token"] = SecretBytes(token)
        for var, fname in (
            ("CONSUL_CACERT", "ca_file"),
            ("CONSUL_CLIENT_CERT", "cert_file"),
            ("CONSUL_CLIENT_KEY", "key_file"),
            ("CONSUL_NAMESPACE", "namespace"),
            ("CONSUL_PARTITION", "partition"),
        ):
            value = env.get(var, "").strip()
            if value:
                updates[fname] = value
        return dataclasses.replace(s, **updates).validated()

    def with_overrides(self, **values: Any) -> ConsulClientSettings:
        """Apply the config file's values (``None`` = not set in the file, keep the default).

        ``address`` may be given as ``host:port`` or ``scheme://host:port``;
        ``token`` as a plain string (it is wrapped at once).
        """
        updates: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            if key == "address":
                updates.update(_parse_addr(str(value), "consul.address"))
            elif key == "token":
                updates["token"] = value if isinstance(value, SecretBytes) else SecretBytes(value)
            elif key in ConsulClientSettings.__dataclass_fields__:
                updates[key] = value
            else:
                raise ConfigError(f"unknown Consul setting {key!r}", path=f"consul.{key}")
        return dataclasses.replace(self, **updates).validated()

    def validated(self) -> ConsulClientSettings:
        if self.scheme not in ("http", "https"):
            raise ConfigError(
                f"scheme must be http or https, not {self.scheme!r}", path="consul.address"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "a client certificate needs both a certificate and a key file "
                "(CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY, "
                "or consul.cert_file and consul.key_file)",
                path="consul.cert_file",
            )
        if self.wait_s <= 0 or self.min_interval_s < 0:
            raise ConfigError("wait must be > 0 and min interval >= 0", path="consul.wait_s")
        return self

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _truthy(value: str, name: str) -> bool:
    if value in ("1", "true", "t", "yes"):
        return True
    if value in ("0", "false", "f", "no"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)", path=name)


def _parse_addr(addr: str, name: str) -> dict[str, Any]:
    if addr.startswith("unix://"):
        raise ConfigError("Unix socket addresses are not supported; use host:port", path=name)
    text = addr if "://" in addr else f"//{addr}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{addr!r} is not host:port or scheme://host:port", path=name) from exc
    if not parts.hostname:
        raise ConfigError(f"{addr!r} has no host", path=name)
    out: dict[str, Any] = {"host": parts.hostname}
    if parts.scheme:
        out["scheme"] = parts.scheme
    if port is not None:
        out["port"] = port
    elif parts.scheme == "https":
        out["port"] = 8501
    return out
