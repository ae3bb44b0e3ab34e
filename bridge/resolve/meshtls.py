"""How the gateway talks to a meshed upstream: each mesh's mTLS, as IR values.

Pure functions used by ``resolve``: from the mesh, the target (Service, port,
the service accounts of its pods), the settings and the mesh secrets the
identity providers put in the World, they make the :class:`UpstreamTls` and
the route headers exactly as DESIGN.md §5 says:

- Istio: SNI ``outbound_.<port>_._.<svc>.<ns>.svc.<cluster-domain>``, one
  exact URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>`` per distinct service account
  of the target pods, ALPN ``istio-http/1.1, istio, http/1.1`` (``istio-h2,
  istio, h2`` for HTTP/2) and never ``istio-peer-exchange`` (a TCP chain would
  then write metadata-exchange bytes into the stream), TLS 1.2 to 1.3.
- Linkerd, direct: TLS 1.3 only (Envoy's upstream maximum defaults to 1.2),
  SNI = the target's identity name (the proxy passes any other SNI through as
  opaque TCP), that DNS SAN verified, no ALPN.
- Linkerd, sidecar mode: no TLS here (the gateway's own proxy originates it);
  the route sets ``l5d-dst-override: <svc>.<ns>.svc.<cluster-domain>:<port>``.
  Every route at the edge strips a client-supplied ``l5d-dst-override``
  (:data:`EDGE_HEADERS_TO_REMOVE`), or the gateway is an open relay.
- Consul: SNI ``<svc>.<ns>.<dc>.internal.<td>`` (partition form
  ``<svc>.<ns>.<ap>.<dc>.internal-v1.<td>``), exact URI SAN
  ``spiffe://<td>[/ap/<ap>]/ns/<ns>/dc/<dc>/svc/<svc>``; the trust domain is
  the one the Connect roots carry (:attr:`TrustSecret.trust_domain`).

Problems (no identity yet, no service account known, several Linkerd
identities behind one Service) come back as diagnostics; an ERROR means "no
TLS could be made: leave this upstream out" — never silent plaintext.

No I/O, no clocks; nothing here reads certificates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.identity.names import identity_secret, trust_secret
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import (
    Mesh,
    Protocol,
    SanMatch,
    Secret,
    SecretName,
    TrustSecret,
    UpstreamTls,
)
from bridge.model.k8s import ObjectRef
from bridge.model.settings import ConsulSettings, LinkerdSettings, ResolveSettings

L5D_DST_OVERRIDE = "l5d-dst-override"
# Headers every route at the edge removes from the client's request.
EDGE_HEADERS_TO_REMOVE: tuple[str, ...] = (L5D_DST_OVERRIDE,)

ISTIO_ALPN_HTTP1: tuple[str, ...] = ("istio-http/1.1", "istio", "http/1.1")
ISTIO_ALPN_HTTP2: tuple[str, ...] = ("istio-h2", "istio", "h2")

TLS12 = "TLSv1_2"
TLS13 = "TLSv1_3"

_FIELD = "mesh"


@dataclass(frozen=True, slots=True)
class MeshTarget:
    """The upstream as the mesh sees it."""

    ref: ObjectRef  # the Service diagnostics are attached to
    namespace: str
    service: str
    port: int  # the Service port number
    # The service account of each target pod (repeats allowed: counts matter
    # for Linkerd). Empty when no pod is known.
    service_accounts: tuple[str, ...] = ()
    protocol: Protocol = Protocol.HTTP1
    # Consul: "" = the Service name / settings.
    consul_service: str = ""
    consul_datacenter: str = ""
    consul_namespace: str = ""
    consul_partition: str = ""


@dataclass(frozen=True, slots=True)
class MeshTls:
    """What a mesh asks of an upstream and its routes."""

    tls: UpstreamTls | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()  # set on the target's routes
    diagnostics: tuple[Diagnostic, ...] = ()

    @property
    def ok(self) -> bool:
        """False when an error means the upstream must be left out."""
        return all(d.severity is not Severity.ERROR for d in self.diagnostics)


def mesh_tls(
    mesh: Mesh,
    target: MeshTarget,
    settings: ResolveSettings,
    secrets: Mapping[SecretName, Secret],
) -> MeshTls:
    """The TLS and headers for ``target`` in ``mesh`` (``none`` → plaintext, nothing to add)."""
    if mesh is Mesh.NONE:
        return MeshTls()
    if mesh is Mesh.ISTIO:
        return istio_tls(target, settings, secrets)
    if mesh is Mesh.LINKERD:
        if settings.linkerd.mode == "sidecar":
            return linkerd_sidecar(target, settings)
        return linkerd_tls(target, settings, secrets)
    if mesh is Mesh.CONSUL:
        return consul_tls(target, settings, secrets)
    raise ValueError(f"mesh {mesh.value!r} must be resolved to a concrete mesh first")


# -- names ----------------------------------------------------------------------


def istio_sni(port: int, service: str, namespace: str, cluster_domain: str) -> str:
    return f"outbound_.{port}_._.{service}.{namespace}.svc.{cluster_domain}"


def istio_spiffe(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def linkerd_identity(service_account: str, namespace: str, linkerd: LinkerdSettings) -> str:
    """``<sa>.<ns>.serviceaccount.identity.<linkerd-ns>.<trust-domain>``."""
    return (
        f"{service_account}.{namespace}.serviceaccount.identity."
        f"{linkerd.namespace}.{linkerd.trust_domain}"
    )


def linkerd_dst_override(service: str, namespace: str, cluster_domain: str, port: int) -> str:
    return f"{service}.{namespace}.svc.{cluster_domain}:{port}"


def consul_sni(
    service: str, namespace: str, datacenter: str, trust_domain: str, partition: str = ""
) -> str:
    ns = namespace or "default"
    if partition and partition != "default":
        return f"{service}.{ns}.{partition}.{datacenter}.internal-v1.{trust_domain}"
    return f"{service}.{ns}.{datacenter}.internal.{trust_domain}"


def consul_spiffe(
    trust_domain: str, namespace: str, datacenter: str, service: str, partition: str = ""
) -> str:
    ns = namespace or "default"
    ap = f"/ap/{partition}" if partition and partition != "default" else ""
    return f"spiffe://{trust_domain}{ap}/ns/{ns}/dc/{datacenter}/svc/{service}"


def consul_gateway_spiffe(trust_domain: str, consul: ConsulSettings) -> str:
    """The gateway's own SPIFFE ID in Consul (the source of the intentions it needs)."""
    return consul_spiffe(
        trust_domain,
        consul.namespace,
        consul.datacenter,
        consul.identity_service,
        consul.partition,
    )


# -- per mesh -----------------------------------------------------------------------


def istio_tls(
    target: MeshTarget, settings: ResolveSettings, secrets: Mapping[SecretName, Secret]
) -> MeshTls:
    diags = list(_secret_diags(Mesh.ISTIO, target.ref, secrets))
    accounts = sorted(set(target.service_accounts))
    if not accounts:
        diags.append(
            _diag(
                target.ref,
                "mesh.istio.no-service-account",
                f"no service account known for the pods of {target.namespace}/{target.service}, "
                "so the identity to verify is unknown",
                "wait for ready endpoints whose pods are known (EndpointSlice targetRef → Pod)",
            )
        )
    if _has_error(diags):
        return MeshTls(diagnostics=tuple(diags))
    td = settings.istio.trust_domain
    tls = UpstreamTls(
        sni=istio_sni(target.port, target.service, target.namespace, settings.cluster_domain),
        verify_sans=tuple(
            SanMatch("URI", istio_spiffe(td, target.namespace, sa)) for sa in accounts
        ),
        alpn=ISTIO_ALPN_HTTP2 if target.protocol is Protocol.HTTP2 else ISTIO_ALPN_HTTP1,
        min_version=TLS12,
        max_version=TLS13,
        client_identity=identity_secret(Mesh.ISTIO),
        trust_bundle=trust_secret(Mesh.ISTIO),
    )
    return MeshTls(tls=tls, diagnostics=tuple(diags))


def linkerd_tls(
    target: MeshTarget, settings: ResolveSettings, secrets: Mapping[SecretName, Secret]
) -> MeshTls:
    diags = list(_secret_diags(Mesh.LINKERD, target.ref, secrets))
    counts = Counter(target.service_accounts)
    if not counts:
        diags.append(
            _diag(
                target.ref,
                "mesh.linkerd.no-service-account",
                f"no service account known for the pods of {target.namespace}/{target.service}, "
                "so the identity name (SNI) is unknown",
                "wait for ready endpoints whose pods are known (EndpointSlice targetRef → Pod)",
            )
        )
    if _has_error(diags):
        return MeshTls(diagnostics=tuple(diags))
    # SNI is one name: pick the account most pods run as (ties: by name).
    chosen = min(counts, key=lambda sa: (-counts[sa], sa))
    if len(counts) > 1:
        others = ", ".join(sorted(sa for sa in counts if sa != chosen))
        diags.append(
            _diag(
                target.ref,
                "mesh.linkerd.several-service-accounts",
                f"pods of {target.namespace}/{target.service} run as several service accounts; "
                f"Linkerd's SNI names one identity, so {chosen} is used and pods running as "
                f"{others} will refuse the gateway",
                "run every pod behind the Service under one service account",
                Severity.WARNING,
            )
        )
    name = linkerd_identity(chosen, target.namespace, settings.linkerd)
    tls = UpstreamTls(
        sni=name,
        verify_sans=(SanMatch("DNS", name),),
        alpn=(),
        min_version=TLS13,
        max_version=TLS13,
        client_identity=identity_secret(Mesh.LINKERD),
        trust_bundle=trust_secret(Mesh.LINKERD),
    )
    return MeshTls(tls=tls, diagnostics=tuple(diags))


def linkerd_sidecar(target: MeshTarget, settings: ResolveSettings) -> MeshTls:
    """Sidecar mode: plaintext to the Service; the gateway pod's proxy does the mTLS."""
    value = linkerd_dst_override(
        target.service, target.namespace, settings.cluster_domain, target.port
    )
    return MeshTls(headers_to_add=((L5D_DST_OVERRIDE, value),))


def consul_tls(
    target: MeshTarget, settings: ResolveSettings, secrets: Mapping[SecretName, Secret]
) -> MeshTls:
    diags = list(_secret_diags(Mesh.CONSUL, target.ref, secrets))
    trust = secrets.get(trust_secret(Mesh.CONSUL))
    td = trust.trust_domain if isinstance(trust, TrustSecret) else ""
    if isinstance(trust, TrustSecret) and not td:
        diags.append(
            _diag(
                target.ref,
                "mesh.consul.no-trust-domain",
                "the Consul Connect roots carry no trust domain, so SNI and SPIFFE ID "
                "cannot be made",
                "check that Connect is enabled in Consul (GET /v1/agent/connect/ca/roots)",
            )
        )
    if _has_error(diags):
        return MeshTls(diagnostics=tuple(diags))
    consul = settings.consul
    service = target.consul_service or target.service
    dc = target.consul_datacenter or consul.datacenter
    ns = target.consul_namespace or consul.namespace
    ap = target.consul_partition or consul.partition
    tls = UpstreamTls(
        sni=consul_sni(service, ns, dc, td, ap),
        verify_sans=(SanMatch("URI", consul_spiffe(td, ns, dc, service, ap)),),
        alpn=(),
        min_version=TLS12,
        max_version=TLS13,
        client_identity=identity_secret(Mesh.CONSUL),
        trust_bundle=trust_secret(Mesh.CONSUL),
    )
    return MeshTls(tls=tls, diagnostics=tuple(diags))


# -- helpers ----------------------------------------------------------------------------


def _secret_diags(
    mesh: Mesh, ref: ObjectRef, secrets: Mapping[SecretName, Secret]
) -> tuple[Diagnostic, ...]:
    out: list[Diagnostic] = []
    config = {
        Mesh.ISTIO: "istio.identity (ca or files:DIR)",
        Mesh.LINKERD: "linkerd.mode (ca, sidecar or files:DIR)",
    }.get(mesh, "consul.connect: true with consul.address, or consul.identity: files:DIR")
    if identity_secret(mesh) not in secrets:
        out.append(
            _diag(
                ref,
                "mesh.identity.missing",
                f"no identity for mesh {mesh.value} yet (SDS secret {identity_secret(mesh)})",
                f"configure {config} in the config file, and see the diagnostics of "
                f"Identity {mesh.value}",
            )
        )
    if trust_secret(mesh) not in secrets:
        out.append(
            _diag(
                ref,
                "mesh.trust.missing",
                f"no trust bundle for mesh {mesh.value} yet (SDS secret {trust_secret(mesh)})",
                f"configure {config} in the config file, and see the diagnostics of "
                f"Identity {mesh.value}",
            )
        )
    return tuple(out)


def _diag(
    ref: ObjectRef, code: str, message: str, fix: str, severity: Severity = Severity.ERROR
) -> Diagnostic:
    return Diagnostic(ref=ref, field=_FIELD, message=message, fix=fix, severity=severity, code=code)


def _has_error(diags: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diags)
