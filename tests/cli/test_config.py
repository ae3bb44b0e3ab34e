"""The config file: strict loading with the key's path in every error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import Config, config_from_dict, load_config
from bridge.errors import ConfigError
from bridge.model.ir import Listener, Mesh, Resolver
from bridge.model.secrets import SecretBytes

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"consul": {"tls": {"ca_fiel": "x"}}},
            "consul.tls.ca_fiel: unknown key (did you mean ca_file?)",
            id="typo-nested",
        ),
        pytest.param({"xdss": {}}, "xdss: unknown key (did you mean xds?)", id="typo-top"),
        pytest.param({"frobnicate": 1}, "frobnicate: unknown key", id="unknown-no-hint"),
        pytest.param(
            {"gateway": {"listeners": [{"port": 8080}, {"port": "80"}]}},
            "gateway.listeners[1].port: expected an integer, got a string",
            id="wrong-type-in-list",
        ),
        pytest.param(
            {"gateway": {"listeners": [{"port": 70000}]}},
            "gateway.listeners[0].port: 70000 is not a port (1-65535)",
            id="port-range",
        ),
        pytest.param(
            {"xds": {"address": "localhost"}},
            "xds.address: 'localhost' is not HOST:PORT",
            id="address",
        ),
        pytest.param(
            {"defaults": {"mesh": "istoi"}},
            "defaults.mesh: 'istoi' is not one of auto, none, istio, linkerd, consul",
            id="enum",
        ),
        pytest.param(
            {"linkerd": {"mode": "files:"}},
            "linkerd.mode: 'files:' is not one of ca, sidecar, files:DIR",
            id="mode",
        ),
        pytest.param(
            {"catalog_sync": {"to_consul": {"enabled": "yes"}}},
            "catalog_sync.to_consul.enabled: expected true or false, got a string",
            id="bool",
        ),
        pytest.param({"xds": []}, "xds: expected a mapping, got a list", id="section-type"),
        pytest.param(
            {"debounce": {"hold_off_ms": 100, "max_delay_ms": 50}},
            "debounce.max_delay_ms: 50 is less than hold_off_ms",
            id="debounce-cap",
        ),
        pytest.param({"source": "git:repo"}, "source: 'git:repo' is not", id="source"),
        pytest.param(
            {"kubernetes": {"secrets": ["meshbridge/ca", "consul-ca"]}},
            "kubernetes.secrets: item 1 'consul-ca' is not NAMESPACE/NAME",
            id="secret-without-namespace",
        ),
        pytest.param(["a"], "must be a mapping of keys, not a list", id="not-a-mapping"),
    ],
)
def test_bad_config_names_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, env={})
    assert str(info.value).startswith(message) or message in str(info.value)


def test_settings_for_the_core() -> None:
    config = config_from_dict(
        {
            "cluster_domain": "corp.local",
            "defaults": {"resolver": "service", "mesh": "none"},
            "gateway": {"listeners": [{"name": "web", "port": 80, "address": "127.0.0.1"}]},
            "linkerd": {"mode": "sidecar", "trust_domain": "td"},
            "consul": {"datacenter": "east", "partition": "p1"},
            "istio": {"trust_domain": "mesh.example"},
        },
        env={},
    )
    s = config.resolve_settings()
    assert s.cluster_domain == "corp.local"
    assert (s.default_resolver, s.default_mesh) == (Resolver.SERVICE, Mesh.NONE)
    assert s.listeners == (Listener("web", 80, "127.0.0.1"),)
    assert (s.linkerd.mode, s.linkerd.trust_domain) == ("sidecar", "td")
    assert (s.consul.datacenter, s.consul.partition) == ("east", "p1")
    assert s.istio.trust_domain == "mesh.example"


def test_consul_environment_gives_defaults_and_the_file_wins(tmp_path: Path) -> None:
    env = {
        "CONSUL_HTTP_ADDR": "https://consul.example:8501",
        "CONSUL_HTTP_TOKEN": "env-token",
        "CONSUL_CACERT": "/etc/consul/ca.pem",
    }
    c = config_from_dict({}, env=env).consul
    assert (c.address, c.scheme, c.tls.ca_file) == (
        "consul.example:8501",
        "https",
        "/etc/consul/ca.pem",
    )
    assert c.token == SecretBytes("env-token")
    c = config_from_dict({"consul": {"address": "10.0.0.1:8500", "token": "file"}}, env=env).consul
    assert (c.address, c.token) == ("10.0.0.1:8500", SecretBytes("file"))
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    c = config_from_dict({"consul": {"token_file": str(token_file)}}, env=env).consul
    assert c.token == SecretBytes("from-file")


def test_the_token_never_prints(tmp_path: Path) -> None:
    config = config_from_dict({"consul": {"token": "s3cr3t-t0ken"}}, env={})
    assert "s3cr3t-t0ken" not in repr(config) and "s3cr3t-t0ken" not in str(config)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"consul": {"token": "s3cr3t-t0ken", "tokn": 1}}, env={})
    assert "s3cr3t-t0ken" not in str(info.value)


def test_empty_or_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, env={}) == Config()
    assert load_config(None, env={}) == Config()
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("xds: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})


def _paths(cls: type, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default
        if dataclasses.is_dataclass(default):
            out |= _paths(type(default), path + ".")
        else:
            out.add(path)
    return out


def _yaml_paths(d: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _yaml_paths(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_the_example_config_documents_every_key_with_its_default() -> None:
    example = REPO / "examples" / "meshbridge.yaml"
    assert load_config(example, env={}) == Config()
    documented = _yaml_paths(yaml.safe_load(example.read_text())) | {"consul.token"}
    assert documented == _paths(Config)


def test_more_consul_environment_and_the_agents_datacenter() -> None:
    env = {
        "CONSUL_HTTP_ADDR": "https://consul.example:8501",
        "CONSUL_HTTP_SSL": "false",  # decides over the address's scheme, as in Consul's CLI
        "CONSUL_HTTP_SSL_VERIFY": "false",
        "CONSUL_NAMESPACE": "team-a",
        "CONSUL_PARTITION": "p1",
    }
    config = config_from_dict({}, env=env)
    c = config.consul
    assert (c.scheme, c.tls_verify, c.namespace, c.partition) == ("http", False, "team-a", "p1")
    assert config_from_dict({"consul": {"scheme": "https"}}, env=env).consul.scheme == "https"
    # No datacenter set: no ?dc= for agent-wide queries; Connect names use Consul's default.
    assert c.datacenter == ""
    assert config.resolve_settings().consul.datacenter == "dc1"


def test_a_mesh_is_configured_only_when_its_identity_mode_is_set() -> None:
    assert [m for m in Mesh if Config().mesh_configured(m)] == [Mesh.NONE]
    config = config_from_dict(
        {
            "istio": {"identity": "ca", "token_file": "/t", "roots_file": "/r"},
            "linkerd": {"mode": "sidecar"},
            "consul": {"connect": True},
        },
        env={},
    )
    assert all(config.mesh_configured(m) for m in Mesh if m is not Mesh.AUTO)
    # Unconfigured meshes are still resolved (and diagnosed), never sent plaintext.
    assert Mesh.ISTIO in Config().resolve_settings().supported_meshes
