"""Trust roots read from the cluster, and the CA provider that watches them.

Istio's CA and Linkerd's identity service work alike on the gateway's side:
the mesh's roots are a PEM bundle in a ConfigMap (``istio-ca-root-cert`` /
``linkerd-identity-trust-roots``) or a file; they verify the CA's own
serving certificate, they are the trust bundle served to Envoy, and every
issued chain must lead to one of them. Both CAs authenticate the gateway by
a service-account token and may refuse it. This module holds what the two
providers share:

- :class:`TrustRoots` — where a mesh's roots come from (a ConfigMap key as
  the store holds it, or a file) and how they are read and checked; a mesh
  names its ConfigMap, key and wording in a subclass.
- :class:`RootsWatchingCaProvider` — a :class:`CaIdentityProvider` that
  re-reads the roots every ``roots_poll_s``. A changed bundle is published
  at once (a new root is added before the old one goes, so peers under
  either root keep verifying); when the current leaf no longer chains to it
  the renewal starts at once instead of waiting its turn, and so does a
  retry when there is no leaf yet (the roots may be what was missing). It
  also keeps the "CA refused the token" diagnostic beside the rotator's
  until a certificate is issued again.

What stays in each mesh's adapter: the key, the CSR and the call to its CA.
Nothing here logs a token or a key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import ClassVar, Self

from bridge.errors import IdentityError
from bridge.identity import pki
from bridge.identity.provider import CaIdentityProvider, IdentityMaterial
from bridge.identity.rotation import Clock, RenewalPolicy
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh
from bridge.model.k8s import K8sConfigMap, Kind, ObjectRef
from bridge.store import Store

log = logging.getLogger(__name__)


class TrustRoots:
    """Where a mesh's roots come from: a ConfigMap held in the store, or a file.

    A subclass names the ConfigMap, its key, and what the roots are called in
    messages (``"Istio roots"``, ``"Linkerd trust anchors"``).
    """

    CONFIG_MAP: ClassVar[str] = ""
    KEY: ClassVar[str] = ""
    WHAT: ClassVar[str] = "trust roots"

    def __init__(self, *, store: Store | None = None, namespace: str = "", path: str = "") -> None:
        if (store is None) == (not path):
            raise ValueError("give either a store and namespace, or a path")
        self._store = store
        self.namespace = namespace
        self.path = path

    @classmethod
    def config_map(cls, store: Store, namespace: str) -> Self:
        """The mesh's roots ConfigMap in ``namespace``, as the store holds it."""
        return cls(store=store, namespace=namespace)

    @classmethod
    def file(cls, path: str | Path) -> Self:
        return cls(path=str(path))

    def __str__(self) -> str:
        if self.path:
            return f"file {self.path}"
        return f"ConfigMap {self.namespace}/{self.CONFIG_MAP} key {self.KEY}"

    def read(self) -> str:
        """The PEM bundle; :class:`IdentityError` naming the source when absent or unreadable."""
        if self.path:
            try:
                text = Path(self.path).read_text()
            except OSError as exc:
                raise IdentityError(f"cannot read {self.WHAT} {self}: {exc.strerror}") from exc
        else:
            assert self._store is not None
            cm = self._store.get(ObjectRef(Kind.CONFIG_MAP, self.namespace, self.CONFIG_MAP))
            if not isinstance(cm, K8sConfigMap):
                raise IdentityError(f"no {self.WHAT} yet: {self} not found")
            text = cm.data.get(self.KEY, "")
            if not text.strip():
                raise IdentityError(f"no {self.WHAT} yet: {self} is missing or empty")
        pki.load_pem_chain(text, f"{self.WHAT} ({self})")
        return text


class RootsWatchingCaProvider(CaIdentityProvider):
    """A CA provider whose roots are watched: see the module docstring.

    A subclass implements :meth:`fetch` (reading ``self.roots`` for the
    bundle) and calls :meth:`token_rejected` when the CA refuses the token.
    """

    def __init__(
        self,
        mesh: Mesh,
        store: Store,
        roots: TrustRoots,
        *,
        trust_domain: str,
        roots_poll_s: float,
        policy: RenewalPolicy,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        super().__init__(mesh, store, policy=policy, clock=clock, rand=rand)
        self.roots = roots
        self.roots_poll_s = roots_poll_s
        self.mesh_trust_domain = trust_domain
        self._label = f"{mesh.value.capitalize()} identity"
        self._renew_now = asyncio.Event()
        self._rotator_diags: tuple[Diagnostic, ...] = ()
        self._rejected: Diagnostic | None = None
        self._roots_error = ""

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Renew on schedule, and at once when the roots no longer cover the leaf."""
        mesh = self.mesh.value
        watch = asyncio.create_task(self._watch_roots(), name=f"{mesh}-roots")
        try:
            while True:
                self._renew_now.clear()
                rotate = asyncio.create_task(self.rotator.run(), name=f"{mesh}-rotator")
                wake = asyncio.create_task(self._renew_now.wait())
                try:
                    await asyncio.wait({rotate, wake}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (rotate, wake):
                        t.cancel()
                    await asyncio.gather(rotate, wake, return_exceptions=True)
                if not rotate.cancelled() and rotate.exception() is not None:
                    raise IdentityError(f"{self._label}: renewal loop stopped") from (
                        rotate.exception()
                    )
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _watch_roots(self) -> None:
        while True:
            await asyncio.sleep(self.roots_poll_s)
            self.check_roots()

    def check_roots(self) -> None:
        """Publish a changed bundle; ask for a renewal if the leaf no longer chains to it."""
        try:
            bundle = self.roots.read()
        except IdentityError as exc:
            if str(exc) != self._roots_error:
                self._roots_error = str(exc)
                log.warning("%s: %s", self._label, exc)
            return
        self._roots_error = ""
        cur = self.current
        if cur is None:
            if self.rotator.failures:
                self._renew_now.set()  # the roots may be what was missing: retry now
            return
        if bundle == self.trust_pem:
            return
        log.info("%s: %s changed in %s", self._label, self.roots.WHAT, self.roots)
        self.publish_trust(bundle, self.mesh_trust_domain)
        try:
            pki.validate_chain(cur.cert_chain_pem, bundle, self.clock.now())
        except IdentityError as exc:
            log.info("%s: current certificate no longer chains (%s): renewing", self._label, exc)
            self._renew_now.set()

    # -- diagnostics -------------------------------------------------------------

    def token_rejected(self, *, message: str, fix: str, code: str) -> None:
        """The CA refused the token: a diagnostic now, kept until a certificate is issued.

        ``message`` names the audience and the service account; the base adds
        until when the current certificate stays in use. An error while there
        is no certificate, a warning while one is still served.
        """
        cur = self.current
        until = (
            f"; the current certificate stays in use until {cur.not_after.isoformat()}"
            if cur is not None
            else ""
        )
        self._rejected = Diagnostic(
            ref=self.ref,
            field="identity.token",
            message=message + until,
            fix=fix,
            severity=Severity.ERROR if cur is None else Severity.WARNING,
            code=code,
        )
        self._show_diagnostics()

    def set_diagnostics(self, diags: tuple[Diagnostic, ...]) -> None:
        self._rotator_diags = diags
        self._show_diagnostics()

    def publish(self, material: IdentityMaterial) -> None:
        super().publish(material)
        if self._rejected is not None:
            self._rejected = None
            self._show_diagnostics()

    def _show_diagnostics(self) -> None:
        extra = (self._rejected,) if self._rejected is not None else ()
        super().set_diagnostics(self._rotator_diags + extra)
