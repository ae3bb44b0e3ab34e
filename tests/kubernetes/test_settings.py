"""Which objects the adapter watches for a config: only what the configured meshes read."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.istio.ca import ROOT_CONFIG_MAP as ISTIO_PROVIDER_CM
from adapters.kubernetes.source import (
    ISTIO_ROOT_CERT,
    LINKERD_TRUST_ROOTS,
    KubernetesSourceSettings,
)
from adapters.linkerd.identity import TRUST_ROOTS_CONFIG_MAP as LINKERD_PROVIDER_CM
from bridge.config import config_from_dict
from bridge.model.k8s import Kind


def config_maps(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    settings = KubernetesSourceSettings.from_config(config_from_dict(raw, env={}))
    assert settings.config_maps == tuple(
        (s.namespace, s.name) for s in settings.specs() if s.kind is Kind.CONFIG_MAP
    )
    return settings.config_maps


def test_names_are_the_ones_the_identity_providers_read() -> None:
    assert ISTIO_ROOT_CERT == ISTIO_PROVIDER_CM
    assert LINKERD_TRUST_ROOTS == LINKERD_PROVIDER_CM


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, (), id="no-mesh-identity"),
        pytest.param(
            {"istio": {"identity": "ca"}, "gateway": {"namespace": "edge"}},
            (("edge", "istio-ca-root-cert"),),
            id="istio-ca-reads-the-gateway-namespace-copy",
        ),
        pytest.param(
            {"istio": {"identity": "ca", "roots_file": "/etc/istio/root-cert.pem"}},
            (),
            id="istio-ca-roots-from-a-file",
        ),
        pytest.param({"istio": {"identity": "files:/etc/istio-certs"}}, (), id="istio-files"),
        pytest.param(
            {"linkerd": {"mode": "ca", "namespace": "l5d"}},
            (("l5d", "linkerd-identity-trust-roots"),),
            id="linkerd-ca",
        ),
        pytest.param({"linkerd": {"mode": "sidecar"}}, (), id="linkerd-sidecar"),
        pytest.param(
            {"linkerd": {"mode": "ca", "roots_file": "/etc/l5d/ca-bundle.crt"}},
            (),
            id="linkerd-ca-roots-from-a-file",
        ),
        pytest.param(
            {"istio": {"identity": "ca"}, "linkerd": {"mode": "ca"}},
            (("linkerd", "linkerd-identity-trust-roots"), ("meshbridge", "istio-ca-root-cert")),
            id="both",
        ),
    ],
)
def test_trust_root_config_maps_only_for_ca_modes_reading_them(
    raw: dict[str, Any], expected: tuple[tuple[str, str], ...]
) -> None:
    assert config_maps(raw) == expected


def test_configured_secrets_are_watched_each_by_name() -> None:
    config = config_from_dict(
        {"kubernetes": {"secrets": ["meshbridge/consul-ca", "edge/tls", "meshbridge/consul-ca"]}},
        env={},
    )
    settings = KubernetesSourceSettings.from_config(config, secrets=(("edge", "extra"),))
    assert settings.secrets == (
        ("edge", "extra"),
        ("edge", "tls"),
        ("meshbridge", "consul-ca"),
    )
    secret_specs = {(s.namespace, s.name) for s in settings.specs() if s.kind is Kind.SECRET}
    assert secret_specs == set(settings.secrets), "one named watch per Secret, never all"
    assert KubernetesSourceSettings.from_config(config_from_dict({}, env={})).secrets == ()
