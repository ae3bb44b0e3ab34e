"""The config file: one YAML document for everything global.

This module defines the configuration as frozen dataclasses and loads it
strictly: an unknown key, a value of the wrong type or a malformed value
stops start-up with a :class:`bridge.errors.ConfigError` whose message names
the key's path (``consul.tls.ca_fiel: unknown key (did you mean ca_file?)``).
The CLI turns that into exit code 2.

Every key is optional; an empty file (or no file) gives the defaults below.
Consul's standard environment variables (``CONSUL_HTTP_ADDR``,
``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_HTTP_SSL``,
``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT``,
``CONSUL_CLIENT_KEY``, ``CONSUL_NAMESPACE``, ``CONSUL_PARTITION``) supply
defaults for the ``consul`` section, as Consul's own tools do; the file
overrides them. This is the one place they are read: the Consul adapter is
given explicit values.

A mesh is *configured* when its identity mode is set (``istio.identity``,
``linkerd.mode``, ``consul.connect``); only then does ``serve`` obtain an
identity for it. A Service that needs the identity of a mesh that is not
configured is left out with a diagnostic naming the key to set — never sent
plaintext.

Secrets (the Consul token) are held as :class:`SecretBytes` so they never
print. This module reads the config file, a token file and the environment;
it opens no sockets and starts nothing. :meth:`Config.resolve_settings`
hands the pure core the part it needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from bridge.errors import ConfigError
from bridge.model.ir import Listener, Mesh, Resolver
from bridge.model.secrets import SecretBytes
from bridge.model.settings import (
    ConsulSettings,
    IstioSettings,
    LinkerdSettings,
    ResolveSettings,
)

T = TypeVar("T")

# -- value checks (return an error message, or None when the value is fine) ----


def parse_address(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:18000`` for IPv6) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:18000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range 0-65535")
    return host, port


def _check_address(value: Any) -> str | None:
    try:
        parse_address(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_optional_address(value: Any) -> str | None:
    return None if value == "" else _check_address(value)


def _check_port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a port (1-65535)"


def _check_positive(value: Any) -> str | None:
    return None if value > 0 else f"{value} must be greater than 0"


def _modes(*fixed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in fixed or value == "":  # "": not configured (no identity for this mesh)
            return None
        if value.startswith("files:") and len(value) > len("files:"):
            return None
        choices = ", ".join([*fixed, "files:DIR"])
        return f"{value!r} is not one of {choices}"

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


def _check_source(value: Any) -> str | None:
    if value == "kubernetes" or (value.startswith("dir:") and len(value) > len("dir:")):
        return None
    return f"{value!r} is not 'kubernetes' or 'dir:PATH'"


def _check_object_names(value: Any) -> str | None:
    for i, item in enumerate(value):
        ns, sep, name = item.partition("/")
        if not sep or not ns or not name or "/" in name:
            return f"item {i} {item!r} is not NAMESPACE/NAME (e.g. meshbridge/consul-ca)"
    return None


def _checked(default: T, check: Callable[[Any], str | None]) -> T:
    return field(default=default, metadata={"check": check})


# -- the configuration ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS connection (paths; read by whoever dials or listens)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""  # the name to verify when dialing, if not the host


@dataclass(frozen=True, slots=True)
class XdsConfig:
    address: str = _checked("127.0.0.1:18000", _check_optional_address)
    # Also (or instead, with address "") listen on this Unix socket.
    unix_socket: str = ""
    # Node ids the server serves; secrets (SDS) go to these only. Empty: any node
    # id may fetch non-secret resources and none receives secrets.
    allowed_node_ids: tuple[str, ...] = ()
    # Server certificate and key plus the CA clients must chain to: mTLS on address.
    tls: TlsFiles = TlsFiles()


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str = "http"
    port: int = _checked(8080, _check_port)
    address: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The edge Envoy: its listeners, and the workload it is in the meshes."""

    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    namespace: str = "meshbridge"
    service_account: str = "meshbridge"


@dataclass(frozen=True, slots=True)
class DefaultsConfig:
    resolver: Resolver = Resolver.ENDPOINTS
    mesh: Mesh = Mesh.AUTO


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    kubeconfig: str = ""  # empty: in-cluster, else $KUBECONFIG, else ~/.kube/config
    context: str = ""
    # Secrets to read, each by name ("namespace/name"): never all Secrets, so
    # RBAC can grant exactly these.
    secrets: tuple[str, ...] = _checked((), _check_object_names)

    def secret_refs(self) -> tuple[tuple[str, str], ...]:
        """``secrets`` as sorted, distinct (namespace, name) pairs."""
        return tuple(
            sorted({(ns, name) for ns, _, name in (s.partition("/") for s in self.secrets)})
        )


# Consul's own default datacenter name: used for Connect names (SNI, SPIFFE)
# when consul.datacenter is not set.
CONSUL_DEFAULT_DATACENTER = "dc1"


@dataclass(frozen=True, slots=True)
class ConsulConfig:
    address: str = _checked("127.0.0.1:8500", _check_address)
    scheme: str = _checked("http", _one_of("http", "https"))
    # "": the agent's own datacenter (no ?dc= on agent-wide queries); Connect
    # names then use dc1, Consul's default. Set it when the datacenter is not dc1.
    datacenter: str = ""
    token: SecretBytes | None = None
    token_file: str = ""
    tls: TlsFiles = TlsFiles()
    # Verify the agent's certificate (https); CONSUL_HTTP_SSL_VERIFY=false turns it off.
    tls_verify: bool = True
    namespace: str = ""  # Consul Enterprise only; "" = not sent
    partition: str = ""  # Consul Enterprise only; "" = not sent
    # Obtain the gateway's Connect identity (leaf for identity_service) and check
    # intentions: needed for Services with mesh consul.
    connect: bool = False
    identity_service: str = "meshbridge"
    # Instead of ``connect``: "files:DIR", the gateway's Connect certificate,
    # key and CA roots as files kept current by something else (cert-chain.pem,
    # key.pem, root-cert.pem, like the other meshes' files mode).
    identity: str = _checked("", _modes())
    # The Connect trust domain ("<cluster id>.consul") for files:DIR; "" = the
    # host of the SPIFFE ID in that certificate. (With ``connect`` it comes from
    # the CA roots.)
    trust_domain: str = ""
    # How often the intention check asks Consul again (intentions change
    # without touching the catalog).
    intention_check_interval_ms: int = _checked(60_000, _check_positive)


@dataclass(frozen=True, slots=True)
class IstioConfig:
    ca_address: str = _checked("istiod.istio-system.svc:15012", _check_address)
    # istiod's serving certificate names the .svc name without the cluster domain.
    ca_server_name: str = "istiod.istio-system.svc"
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    # "" (not configured) | ca (a CSR to istiod) | files:DIR (istio-agent OUTPUT_CERTS).
    identity: str = _checked("", _modes("ca"))
    # ca mode: a projected service-account token (audience istio-ca) read on each
    # request; "" = a TokenRequest through the Kubernetes API.
    token_file: str = ""
    # ca mode: istiod's roots as a PEM file; "" = ConfigMap istio-ca-root-cert
    # (key root-cert.pem) in gateway.namespace.
    roots_file: str = ""


@dataclass(frozen=True, slots=True)
class LinkerdConfig:
    # Empty: linkerd-identity-headless.<namespace>.svc.<cluster_domain>:8080.
    identity_address: str = _checked("", _check_optional_address)
    namespace: str = "linkerd"
    trust_domain: str = "cluster.local"
    # "" (not configured) | ca (Certify to Linkerd identity) | sidecar (the gateway
    # pod is meshed) | files:DIR.
    mode: str = _checked("", _modes("ca", "sidecar"))
    # ca mode: a projected service-account token (audience identity.l5d.io);
    # "" = a TokenRequest through the Kubernetes API.
    token_file: str = ""
    # ca mode: the trust anchors as a PEM file; "" = ConfigMap
    # linkerd-identity-trust-roots (key ca-bundle.crt) in linkerd.namespace.
    roots_file: str = ""


@dataclass(frozen=True, slots=True)
class ToConsulConfig:
    """Kubernetes Services → Consul catalog (consul-k8s compatible shapes).

    Registrations live on the synthetic node ``node_name`` and carry ``tag``;
    meshbridge only ever changes or removes services on its own node with its
    own tag. Each cluster syncing into one Consul needs its own node name.
    """

    enabled: bool = False
    node_name: str = "k8s-sync"
    tag: str = "k8s"
    prefix: str = ""
    namespace_suffix: bool = False  # register "<name>-<namespace>"
    default_sync: bool = True  # sync Services without consul.hashicorp.com/service-sync
    allow_namespaces: tuple[str, ...] = ("*",)
    deny_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    sync_cluster_ip_services: bool = True
    node_port_sync_type: str = _checked(
        "ExternalOnly", _one_of("ExternalOnly", "InternalOnly", "ExternalFirst")
    )


@dataclass(frozen=True, slots=True)
class ToKubernetesConfig:
    """Consul catalog → Kubernetes ExternalName Services."""

    enabled: bool = False
    namespace: str = "default"
    prefix: str = ""
    consul_domain: str = "consul"


@dataclass(frozen=True, slots=True)
class CatalogSyncConfig:
    to_consul: ToConsulConfig = ToConsulConfig()
    to_kubernetes: ToKubernetesConfig = ToKubernetesConfig()
    debounce_ms: int = _checked(200, _check_positive)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: str = _checked("127.0.0.1:8877", _check_optional_address)


@dataclass(frozen=True, slots=True)
class DebounceConfig:
    """The pipeline waits ``hold_off_ms`` of quiet after a change, at most ``max_delay_ms``."""

    hold_off_ms: int = _checked(50, _check_positive)
    max_delay_ms: int = _checked(500, _check_positive)


@dataclass(frozen=True, slots=True)
class DirSourceConfig:
    # How often files are checked for changes (see bridge.sources.dir for why polling).
    poll_interval_ms: int = _checked(250, _check_positive)


@dataclass(frozen=True, slots=True)
class Config:
    # Where Kubernetes objects come from: "kubernetes" or "dir:PATH".
    source: str = _checked("kubernetes", _check_source)
    xds: XdsConfig = XdsConfig()
    gateway: GatewayConfig = GatewayConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    cluster_domain: str = "cluster.local"
    kubernetes: KubernetesConfig = KubernetesConfig()
    consul: ConsulConfig = ConsulConfig()
    istio: IstioConfig = IstioConfig()
    linkerd: LinkerdConfig = LinkerdConfig()
    catalog_sync: CatalogSyncConfig = CatalogSyncConfig()
    admin: AdminConfig = AdminConfig()
    debounce: DebounceConfig = DebounceConfig()
    dir_source: DirSourceConfig = DirSourceConfig()

    def mesh_configured(self, mesh: Mesh) -> bool:
        """Whether the config sets an identity mode for ``mesh`` (``none`` always is)."""
        if mesh is Mesh.ISTIO:
            return bool(self.istio.identity)
        if mesh is Mesh.LINKERD:
            return bool(self.linkerd.mode)
        if mesh is Mesh.CONSUL:
            return self.consul.connect
        return mesh is Mesh.NONE

    def resolve_settings(self) -> ResolveSettings:
        """The settings the pure core (``resolve``) needs."""
        return ResolveSettings(
            cluster_domain=self.cluster_domain,
            default_resolver=self.defaults.resolver,
            default_mesh=self.defaults.mesh,
            listeners=tuple(
                Listener(name=lc.name, port=lc.port, address=lc.address)
                for lc in self.gateway.listeners
            ),
            # Every mesh's upstream TLS is built; a mesh whose identity is not
            # (yet) available — or not configured — gets a diagnostic per
            # Service naming the key to set, never plaintext.
            supported_meshes=frozenset({Mesh.NONE, Mesh.ISTIO, Mesh.LINKERD, Mesh.CONSUL}),
            istio=IstioSettings(trust_domain=self.istio.trust_domain),
            linkerd=LinkerdSettings(
                namespace=self.linkerd.namespace,
                trust_domain=self.linkerd.trust_domain,
                mode=self.linkerd.mode,
            ),
            consul=ConsulSettings(
                datacenter=self.consul.datacenter or CONSUL_DEFAULT_DATACENTER,
                namespace=self.consul.namespace,
                partition=self.consul.partition,
                identity_service=self.consul.identity_service,
            ),
        )


# -- loading ------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """Read and check the config file (``None``: defaults); raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if raw is None:
            raw = {}
    return config_from_dict(raw, env)


def config_from_dict(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed YAML; raises :class:`ConfigError` naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config file must be a mapping of keys, not {_type_name(raw)}")
    raw = dict(raw)
    raw["consul"] = _consul_env_defaults(raw.get("consul"), env or {})
    config = _build(Config, raw, "")
    if config.debounce.max_delay_ms < config.debounce.hold_off_ms:
        raise ConfigError(
            f"{config.debounce.max_delay_ms} is less than hold_off_ms "
            f"({config.debounce.hold_off_ms}); the cap must be at least the hold-off",
            "debounce.max_delay_ms",
        )
    if config.consul.connect and config.consul.identity:
        raise ConfigError(
            "consul.connect obtains the gateway's Connect identity from Consul and "
            f"consul.identity {config.consul.identity!r} reads it from files: choose one",
            "consul.identity",
        )
    return _with_token_file(config)


def _consul_env_defaults(section: Any, env: Mapping[str, str]) -> Any:
    """Fill keys the file leaves out from Consul's standard environment variables."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return section  # the strict build reports the wrong type
    out = dict(section)
    addr = env.get("CONSUL_HTTP_ADDR", "")
    if addr and "address" not in out:
        for scheme in ("http", "https"):
            if addr.startswith(f"{scheme}://"):
                addr = addr[len(scheme) + 3 :]
                out.setdefault("scheme", scheme)
        out["address"] = addr.rstrip("/")
    # As in Consul's CLI, CONSUL_HTTP_SSL decides the scheme over the address's.
    ssl_flag = env.get("CONSUL_HTTP_SSL", "").strip().lower()
    if "scheme" not in section and ssl_flag in ("1", "t", "true", "yes"):
        out["scheme"] = "https"
    elif "scheme" not in section and ssl_flag in ("0", "f", "false", "no"):
        out["scheme"] = "http"
    if env.get("CONSUL_HTTP_SSL_VERIFY", "").strip().lower() in ("0", "f", "false", "no"):
        out.setdefault("tls_verify", False)
    for var, key in (("CONSUL_NAMESPACE", "namespace"), ("CONSUL_PARTITION", "partition")):
        if env.get(var, "").strip():
            out.setdefault(key, env[var].strip())
    if env.get("CONSUL_HTTP_TOKEN") and "token" not in out and "token_file" not in out:
        out["token"] = env["CONSUL_HTTP_TOKEN"]
    if env.get("CONSUL_HTTP_TOKEN_FILE") and "token" not in out:
        out.setdefault("token_file", env["CONSUL_HTTP_TOKEN_FILE"])
    tls_env = {
        "ca_file": env.get("CONSUL_CACERT", ""),
        "cert_file": env.get("CONSUL_CLIENT_CERT", ""),
        "key_file": env.get("CONSUL_CLIENT_KEY", ""),
    }
    if any(tls_env.values()):
        tls = out.get("tls") or {}
        if isinstance(tls, dict):
            tls = dict(tls)
            for k, v in tls_env.items():
                if v:
                    tls.setdefault(k, v)
            out["tls"] = tls
    return out


def _with_token_file(config: Config) -> Config:
    consul = config.consul
    if consul.token is not None and consul.token_file:
        raise ConfigError("set either token or token_file, not both", "consul.token_file")
    if consul.token_file:
        try:
            token = Path(consul.token_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {consul.token_file}: {exc.strerror}", "consul.token_file"
            ) from exc
        consul = dataclasses.replace(consul, token=SecretBytes(token))
        config = dataclasses.replace(config, consul=consul)
    return config


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type[T], raw: Any, path: str) -> T:
    """Make dataclass ``cls`` from mapping ``raw``; every error names its key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {_type_name(raw)}", path)
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            also = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"unknown key{also}", _join(path, str(key)))
        kpath = _join(path, key)
        converted = _convert(hints[key], value, kpath)
        check = fields[key].metadata.get("check")
        if check is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(problem, kpath)
        kwargs[key] = converted
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {_type_name(value)}", path)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, Enum):
        choices = [m.value for m in tp]
        if value not in choices:
            raise ConfigError(f"{value!r} is not one of {', '.join(choices)}", path)
        return tp(value)
    if tp is SecretBytes:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"expected a non-empty string, got {_type_name(value)}", path)
        return SecretBytes(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_type_name(value)}", path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_type_name(value)}", path)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_type_name(value)}", path)
        return value
    raise TypeError(f"config type {tp!r} at {path} has no loader")  # a bug in this module
