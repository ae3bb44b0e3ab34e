"""A CA-backed provider built on the interface: publish, renew, report, stay synced."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from cryptography import x509

from bridge.errors import IdentityUnavailable
from bridge.identity import pki
from bridge.identity.names import identity_secret, trust_secret
from bridge.identity.provider import CaIdentityProvider, IdentityMaterial, identity_ref
from bridge.identity.rotation import LINKERD_POLICY
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.store import Store
from tests.identity.fakeclock import FakeClock
from tests.support.wait import async_wait_for

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
LINKERD_ID = "meshbridge.edge.serviceaccount.identity.linkerd.cluster.local"


class LocalLinkerd(CaIdentityProvider):
    """A provider whose 'CA' is an in-memory LocalCA, following Linkerd's CSR rules."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        super().__init__(
            Mesh.LINKERD, store, policy=LINKERD_POLICY, clock=clock, rand=random.Random(1)
        )
        self.ca = pki.LocalCA(now=NOW - dt.timedelta(days=1), name="identity.linkerd")
        self.down = False
        self.calls = 0

    async def fetch(self) -> IdentityMaterial:
        self.calls += 1
        if self.down:
            raise IdentityUnavailable("linkerd-identity: connection refused")
        key = pki.generate_key()
        csr = x509.load_der_x509_csr(pki.linkerd_csr(key, LINKERD_ID))
        chain = self.ca.sign_csr(csr, now=self.clock.now(), validity=dt.timedelta(hours=24))
        return IdentityMaterial.checked(
            cert_chain_pem="".join(pki.cert_pem(c) for c in chain[:-1]),
            private_key=key,
            trust_bundle_pem=self.ca.root_pem,
            now=self.clock.now(),
        )


async def test_publishes_renews_and_reports() -> None:
    clock = FakeClock(NOW)
    store = Store()
    prov = LocalLinkerd(store, clock)
    assert not store.synced
    task = asyncio.create_task(prov.run())
    try:
        await async_wait_for(lambda: prov.calls == 1 and clock.sleeping == 1, timeout=5)
        assert store.synced
        world, _ = store.take()
        ident = world.mesh_secrets[identity_secret(Mesh.LINKERD)]
        trust = world.mesh_secrets[trust_secret(Mesh.LINKERD)]
        assert isinstance(ident, IdentitySecret) and isinstance(trust, TrustSecret)
        assert pki.leaf_info(ident.cert_chain_pem).dns_sans == (LINKERD_ID,)
        st = prov.status()
        assert st.healthy and st.identity == LINKERD_ID
        # Linkerd renews at 70% of the remaining time, minus jitter.
        assert st.next_renewal is not None
        delay = (st.next_renewal - NOW).total_seconds()
        assert 0.95 * 0.7 * 86400 <= delay <= 0.7 * 86400

        prov.down = True
        clock.advance(delay)
        await async_wait_for(lambda: prov.calls == 2 and clock.sleeping == 1, timeout=5)
        assert not prov.status().healthy  # the last renewal failed...
        assert store.take()[0].mesh_secrets[identity_secret(Mesh.LINKERD)] == ident  # ...cert kept
        clock.set(NOW + dt.timedelta(hours=20))
        await async_wait_for(lambda: prov.diagnostics != (), timeout=5)
        (diag,) = store.take()[0].source_diagnostics
        assert diag.ref == identity_ref(Mesh.LINKERD) and diag.code == "identity.expiring"
        prov.down = False
        clock.advance(120)
        await async_wait_for(lambda: prov.status().healthy, timeout=5)
        world, _ = store.take()
        assert world.source_diagnostics == ()
        assert world.mesh_secrets[identity_secret(Mesh.LINKERD)] != ident
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_first_failure_still_marks_synced() -> None:
    clock = FakeClock(NOW)
    store = Store()
    prov = LocalLinkerd(store, clock)
    prov.down = True
    task = asyncio.create_task(prov.run())
    try:
        await async_wait_for(lambda: clock.sleeping == 1, timeout=5)
        assert store.synced
        (diag,) = prov.status().diagnostics
        assert diag.code == "identity.unavailable"
        assert "linkerd.mode" in diag.fix
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
