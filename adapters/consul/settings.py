"""How to reach Consul: address, TLS, token, datacenter, namespace/partition.

The values come from the config file's ``consul`` section, turned into these
settings by the CLI wiring with :meth:`ConsulClientSettings.with_overrides`.
Consul's standard environment variables (``CONSUL_HTTP_ADDR``,
``CONSUL_HTTP_TOKEN``, ...) are read in one place only, :mod:`bridge.config`,
which fills the section's unset keys from them. This module reads no
environment and no files (the CA and client certificate paths are opened by
:mod:`adapters.consul.client` when it builds its TLS context). Its errors name
the config key to fix.
"""

from __future__ import annotations

import dataclasses
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
                raise ConfigError(f"unknown Consul setting {key!r}", path=config_key(key))
        return dataclasses.replace(self, **updates).validated()

    def validated(self) -> ConsulClientSettings:
        if self.scheme not in ("http", "https"):
            raise ConfigError(
                f"scheme must be http or https, not {self.scheme!r}", path="consul.address"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "a client certificate needs both consul.tls.cert_file and "
                "consul.tls.key_file (or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)",
                path="consul.tls.key_file" if self.cert_file else "consul.tls.cert_file",
            )
        if self.wait_s <= 0 or self.min_interval_s < 0:
            # Not config keys: only code sets these, so the error names the fields.
            raise ValueError("ConsulClientSettings: wait_s must be > 0 and min_interval_s >= 0")
        return self

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


# The config file's key for each setting that comes from it (errors name these).
CONFIG_KEYS = {
    "ca_file": "consul.tls.ca_file",
    "cert_file": "consul.tls.cert_file",
    "key_file": "consul.tls.key_file",
    "verify": "consul.tls_verify",
    "host": "consul.address",
    "port": "consul.address",
}


def config_key(field_name: str) -> str:
    """``consul.tls.cert_file`` for ``cert_file``: where a user sets this setting."""
    return CONFIG_KEYS.get(field_name, f"consul.{field_name}")


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
