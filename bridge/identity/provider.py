"""The identity-provider interface, and the store plumbing every provider shares.

A provider obtains the gateway's certificate for one mesh and that mesh's
trust bundle, and keeps both current in the :class:`bridge.store.Store` as
:class:`IdentitySecret` / :class:`TrustSecret` under the names of
:mod:`bridge.identity.names`. Translation serves them to Envoy over SDS, so a
rotation is a secret update only: clusters do not change.

Two kinds plug in here:

- :class:`IdentityProvider` — the base: ``run()`` until cancelled, and
  ``publish``/``publish_trust``/``set_diagnostics`` to reach the store. The
  ``files:DIR`` provider (:mod:`bridge.identity.files`) derives from it.
- :class:`CaIdentityProvider` — a CA-backed provider (Istio CA, Linkerd
  identity, Consul Connect) implements only :meth:`CaIdentityProvider.fetch`;
  the base validates what comes back and renews it on the mesh's schedule
  (:mod:`bridge.identity.rotation`).

Every provider is a store source named ``identity/<mesh>``: it counts as
synced after its first attempt, good or bad, so a mesh whose CA is down never
holds back the routes of the others. Problems are diagnostics on the ref
``Identity <mesh>``. Keys stay in memory (:class:`PrivateKey`); nothing here
writes them anywhere or logs them.
"""

from __future__ import annotations

import abc
import datetime as dt
import random
from dataclasses import dataclass

from bridge.errors import IdentityError
from bridge.identity import names, pki
from bridge.identity.rotation import Clock, RenewalPolicy, Rotator, SystemClock
from bridge.model.diagnostics import Diagnostic
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.secrets import PrivateKey
from bridge.store import Store


def identity_ref(mesh: Mesh) -> ObjectRef:
    """The object identity diagnostics are attached to: ``Identity istio``."""
    return ObjectRef(Kind.IDENTITY, "", mesh.value)


def identity_fix(mesh: Mesh) -> str:
    """What to tell the user when a mesh has no identity."""
    if mesh is Mesh.CONSUL:
        return (
            "set consul.connect: true and consul.address in the config file (and check "
            "that the token may write service consul.identity_service), or "
            "consul.identity: files:DIR"
        )
    if mesh is Mesh.LINKERD:
        return "configure linkerd.mode (ca, sidecar or files:DIR) in the config file"
    return f"configure {mesh.value}.identity (ca or files:DIR) in the config file"


@dataclass(frozen=True, slots=True)
class IdentityMaterial:
    """A validated certificate, its key and the trust bundle it chains to."""

    cert_chain_pem: str  # leaf first
    private_key: PrivateKey
    trust_bundle_pem: str
    leaf: pki.CertInfo
    trust_domain: str = ""

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_before

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_after

    @property
    def identity(self) -> str:
        """The leaf's first URI SAN (SPIFFE), else its first DNS SAN (Linkerd)."""
        sans = self.leaf.uri_sans + self.leaf.dns_sans
        return sans[0] if sans else ""

    @classmethod
    def checked(
        cls,
        *,
        cert_chain_pem: str,
        private_key: PrivateKey,
        trust_bundle_pem: str,
        now: dt.datetime,
        trust_domain: str = "",
    ) -> IdentityMaterial:
        """Build after checking: the key certifies the leaf, the chain leads to the bundle."""
        leaf = pki.load_pem_chain(cert_chain_pem, "certificate chain")[0]
        if not pki.key_matches_cert(private_key, leaf):
            raise IdentityError("the private key does not match the certificate")
        info = pki.validate_chain(cert_chain_pem, trust_bundle_pem, now)
        return cls(
            cert_chain_pem=cert_chain_pem,
            private_key=private_key,
            trust_bundle_pem=trust_bundle_pem,
            leaf=info,
            trust_domain=trust_domain,
        )


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """What ``/debug`` and ``meshbridge resolve`` show about one mesh identity."""

    mesh: Mesh
    source: str
    synced: bool
    healthy: bool
    identity: str = ""
    not_after: dt.datetime | None = None
    trust_domain: str = ""
    last_error: str = ""
    next_renewal: dt.datetime | None = None
    diagnostics: tuple[Diagnostic, ...] = ()


class IdentityProvider(abc.ABC):
    """Keeps one mesh's identity and trust bundle current in the store."""

    def __init__(self, mesh: Mesh, store: Store, *, clock: Clock | None = None) -> None:
        self.mesh = mesh
        self.store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.ref = identity_ref(mesh)
        self.identity_name = names.identity_secret(mesh)
        self.trust_name = names.trust_secret(mesh)
        self.current: IdentityMaterial | None = None
        self.trust_pem = ""
        self.trust_domain = ""
        self.synced = False
        self.diagnostics: tuple[Diagnostic, ...] = ()
        self.last_error = ""
        store.register_source(self.source)

    @property
    def source(self) -> str:
        return f"identity/{self.mesh.value}"

    @abc.abstractmethod
    async def run(self) -> None:
        """Obtain the identity and keep it current until cancelled."""

    def status(self) -> ProviderStatus:
        cur = self.current
        now = self.clock.now()
        return ProviderStatus(
            mesh=self.mesh,
            source=self.source,
            synced=self.synced,
            healthy=cur is not None and now < cur.not_after and not self.error(),
            identity=cur.identity if cur else "",
            not_after=cur.not_after if cur else None,
            trust_domain=self.trust_domain,
            last_error=self.error(),
            next_renewal=self.next_renewal(),
            diagnostics=self.diagnostics,
        )

    def next_renewal(self) -> dt.datetime | None:
        return None

    def error(self) -> str:
        """The last failure to obtain or load the identity ("" once it worked again)."""
        return self.last_error

    # -- for subclasses --------------------------------------------------------

    def publish(self, material: IdentityMaterial) -> None:
        """Put a new identity (and its trust bundle) into the store."""
        self.current = material
        self.last_error = ""
        self.publish_trust(material.trust_bundle_pem, material.trust_domain)
        self.store.put_mesh_secret(
            IdentitySecret(
                name=self.identity_name,
                cert_chain_pem=material.cert_chain_pem,
                private_key=material.private_key,
                not_after=pki.rfc3339(material.not_after),
            ),
            source=self.source,
        )
        self.mark_synced()

    def publish_trust(self, bundle_pem: str, trust_domain: str = "") -> None:
        """Put a trust bundle alone into the store (a root rotation without a new leaf)."""
        self.trust_pem = bundle_pem
        self.trust_domain = trust_domain
        self.store.put_mesh_secret(
            TrustSecret(name=self.trust_name, ca_bundle_pem=bundle_pem, trust_domain=trust_domain),
            source=self.source,
        )

    def set_diagnostics(self, diags: tuple[Diagnostic, ...]) -> None:
        self.diagnostics = diags
        self.store.set_source_diagnostics(self.source, diags)

    def mark_synced(self) -> None:
        """The first attempt is over (good or bad): stop holding back publication."""
        if not self.synced:
            self.synced = True
            self.store.mark_synced(self.source)


class CaIdentityProvider(IdentityProvider):
    """A provider backed by a mesh CA: implement :meth:`fetch`; renewal is done here."""

    def __init__(
        self,
        mesh: Mesh,
        store: Store,
        *,
        policy: RenewalPolicy,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        super().__init__(mesh, store, clock=clock)
        self.rotator: Rotator[IdentityMaterial] = Rotator(
            ref=self.ref,
            fetch=self._fetch_checked,
            on_issued=self.publish,
            on_diagnostics=self._diagnostics,
            policy=policy,
            clock=self.clock,
            rand=rand,
            fix=identity_fix(mesh),
        )

    @abc.abstractmethod
    async def fetch(self) -> IdentityMaterial:
        """Obtain a new certificate from the CA (new key, CSR, call).

        Raise :class:`bridge.errors.IdentityUnavailable` when the CA cannot be
        reached and :class:`IdentityError` when its answer is unusable. Build
        the result with :meth:`IdentityMaterial.checked` (or let the base
        check it: it does so again before publishing).
        """

    async def run(self) -> None:
        await self.rotator.run()

    def next_renewal(self) -> dt.datetime | None:
        return self.rotator.next_attempt

    def error(self) -> str:
        return self.rotator.last_error

    async def _fetch_checked(self) -> IdentityMaterial:
        m = await self.fetch()
        return IdentityMaterial.checked(
            cert_chain_pem=m.cert_chain_pem,
            private_key=m.private_key,
            trust_bundle_pem=m.trust_bundle_pem,
            trust_domain=m.trust_domain,
            now=self.clock.now(),
        )

    def _diagnostics(self, diags: tuple[Diagnostic, ...]) -> None:
        self.set_diagnostics(diags)
        # A first attempt that failed still counts as synced: the other meshes'
        # routes must not wait for this CA.
        self.mark_synced()
