"""The files:DIR provider: load, validate, follow rotations, never half a pair."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest

from bridge.errors import IdentityError
from bridge.identity import pki
from bridge.identity.files import CERT_CHAIN, KEY, ROOT_CERT, FilesProvider, files_dir
from bridge.model.diagnostics import Severity
from bridge.model.ir import IdentitySecret, Mesh, SecretName, TrustSecret
from bridge.store import Store
from tests.identity.fakeclock import FakeClock
from tests.support.wait import async_wait_for

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SPIFFE = "spiffe://cluster.local/ns/edge/sa/meshbridge"
_tick = [0]


def write(directory: Path, name: str, text: str) -> None:
    """Write like an agent would (atomic rename), with a distinct mtime each time."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    _tick[0] += 1
    stamp = 1_900_000_000_000_000_000 + _tick[0] * 1_000_000
    os.utime(tmp, ns=(stamp, stamp))
    tmp.replace(directory / name)


def write_identity(directory: Path, issued: pki.Issued, root_pem: str | None = None) -> None:
    write(directory, CERT_CHAIN, issued.cert_chain_pem)
    write(directory, KEY, issued.private_key.reveal().decode())
    if root_pem is not None:
        write(directory, ROOT_CERT, root_pem)


@pytest.fixture
def ca() -> pki.LocalCA:
    return pki.LocalCA(now=NOW - dt.timedelta(days=1))


def make(tmp_path: Path, clock: FakeClock | None = None) -> tuple[FilesProvider, Store]:
    store = Store()
    return (
        FilesProvider(Mesh.ISTIO, store, tmp_path, clock=clock or FakeClock(NOW)),
        store,
    )


def secrets(store: Store) -> dict[SecretName, object]:
    return dict(store.take()[0].mesh_secrets)


def test_loads_and_pushes_identity_and_trust(tmp_path: Path, ca: pki.LocalCA) -> None:
    issued = ca.issue(now=NOW, uri_sans=[SPIFFE])
    write_identity(tmp_path, issued, ca.root_pem)
    prov, store = make(tmp_path)
    assert not store.synced
    assert prov.poll()
    assert store.synced
    got = secrets(store)
    ident = got[SecretName("identity/istio")]
    assert isinstance(ident, IdentitySecret)
    assert ident.cert_chain_pem == issued.cert_chain_pem
    assert ident.private_key == issued.private_key
    assert ident.not_after == pki.rfc3339(issued.info.not_after)
    trust = got[SecretName("trust/istio")]
    assert isinstance(trust, TrustSecret) and trust.ca_bundle_pem == ca.root_pem
    st = prov.status()
    assert st.healthy and st.identity == SPIFFE and st.not_after == issued.info.not_after
    assert not prov.poll()  # nothing changed: nothing published


def test_reloads_only_once_both_cert_and_key_changed(tmp_path: Path, ca: pki.LocalCA) -> None:
    first = ca.issue(now=NOW, uri_sans=[SPIFFE])
    write_identity(tmp_path, first, ca.root_pem)
    prov, store = make(tmp_path)
    prov.poll()
    store.take()
    second = ca.issue(now=NOW, uri_sans=[SPIFFE])
    # The agent has written the new chain but not yet the key: keep the old pair.
    write(tmp_path, CERT_CHAIN, second.cert_chain_pem)
    assert not prov.poll()
    assert prov.diagnostics == ()
    assert not store.pending
    write(tmp_path, KEY, second.private_key.reveal().decode())
    assert prov.poll()
    ident = secrets(store)[SecretName("identity/istio")]
    assert isinstance(ident, IdentitySecret) and ident.private_key == second.private_key
    assert prov.reloads == 2


def test_mismatched_pair_keeps_previous_identity(tmp_path: Path, ca: pki.LocalCA) -> None:
    first = ca.issue(now=NOW, uri_sans=[SPIFFE])
    write_identity(tmp_path, first, ca.root_pem)
    prov, store = make(tmp_path)
    prov.poll()
    store.take()
    second, third = ca.issue(now=NOW, uri_sans=[SPIFFE]), ca.issue(now=NOW, uri_sans=[SPIFFE])
    write(tmp_path, CERT_CHAIN, second.cert_chain_pem)
    write(tmp_path, KEY, third.private_key.reveal().decode())
    assert not prov.poll()
    (diag,) = prov.diagnostics
    assert diag.severity is Severity.ERROR
    assert diag.field == f"files:{tmp_path}/{CERT_CHAIN}"
    assert "does not match" in diag.message and "previous identity stays" in diag.message
    assert "PRIVATE KEY" not in str(diag)
    world, _ = store.take()
    assert world.source_diagnostics == (diag,)
    ident = world.mesh_secrets[SecretName("identity/istio")]
    assert isinstance(ident, IdentitySecret) and ident.private_key == first.private_key
    # Reported once, not on every poll.
    assert not prov.poll() and not store.pending
    # The agent finishes writing the key: the new identity goes live, the error clears.
    write(tmp_path, KEY, second.private_key.reveal().decode())
    assert prov.poll()
    assert prov.diagnostics == ()


@pytest.mark.parametrize(
    ("case", "want"),
    [
        pytest.param("missing-key", "key.pem does not exist", id="missing-key"),
        pytest.param("wrong-root", "does not lead to any root", id="wrong-root"),
        pytest.param("expired", "leaf expired", id="expired"),
        pytest.param("garbage-key", "not a readable", id="garbage-key"),
    ],
)
def test_bad_initial_files_are_a_diagnostic(
    tmp_path: Path, ca: pki.LocalCA, case: str, want: str
) -> None:
    issued = ca.issue(now=NOW - dt.timedelta(days=3) if case == "expired" else NOW, dns_sans=["x"])
    write_identity(tmp_path, issued, ca.root_pem)
    if case == "missing-key":
        (tmp_path / KEY).unlink()
    elif case == "wrong-root":
        write(tmp_path, ROOT_CERT, pki.LocalCA(now=NOW).root_pem)
    elif case == "garbage-key":
        write(tmp_path, KEY, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    prov, store = make(tmp_path)
    assert not prov.poll()
    assert store.synced  # a broken mesh identity never holds back the other routes
    (diag,) = prov.diagnostics
    assert want in diag.message
    assert "AAAA" not in diag.message
    assert diag.code == "identity.files.invalid"
    assert SecretName("identity/istio") not in secrets(store)
    assert not prov.status().healthy


def test_root_rotation_alone_updates_trust_only(tmp_path: Path, ca: pki.LocalCA) -> None:
    issued = ca.issue(now=NOW, uri_sans=[SPIFFE])
    write_identity(tmp_path, issued, ca.root_pem)
    prov, store = make(tmp_path)
    prov.poll()
    store.take()
    new_root = pki.LocalCA(now=NOW, name="new root")
    write(tmp_path, ROOT_CERT, ca.root_pem + new_root.root_pem)
    assert prov.poll()
    trust = secrets(store)[SecretName("trust/istio")]
    assert isinstance(trust, TrustSecret) and new_root.root_pem in trust.ca_bundle_pem
    assert prov.trust_reloads == 1 and prov.reloads == 1
    # A bundle that no longer covers our own chain is refused (keep the old one).
    write(tmp_path, ROOT_CERT, new_root.root_pem)
    assert not prov.poll()
    assert "does not lead" in prov.diagnostics[0].message
    trust = secrets(store)[SecretName("trust/istio")]
    assert isinstance(trust, TrustSecret)
    assert trust.ca_bundle_pem == ca.root_pem + new_root.root_pem


def test_expiry_without_new_files_warns_then_errors(tmp_path: Path, ca: pki.LocalCA) -> None:
    clock = FakeClock(NOW)
    issued = ca.issue(now=NOW, validity=dt.timedelta(hours=24), uri_sans=[SPIFFE])
    write_identity(tmp_path, issued, ca.root_pem)
    prov, _ = make(tmp_path, clock)
    prov.poll()
    assert prov.diagnostics == ()
    clock.advance(19 * 3600)
    prov.poll()
    assert [d.code for d in prov.diagnostics] == ["identity.expiring"]
    clock.advance(6 * 3600)
    prov.poll()
    assert [d.code for d in prov.diagnostics] == ["identity.expired"]
    assert not prov.status().healthy


async def test_run_polls_on_the_clock(tmp_path: Path, ca: pki.LocalCA) -> None:
    clock = FakeClock(NOW)
    write_identity(tmp_path, ca.issue(now=NOW, uri_sans=[SPIFFE]), ca.root_pem)
    prov, _ = make(tmp_path, clock)
    task = asyncio.create_task(prov.run())
    try:
        await async_wait_for(lambda: prov.reloads == 1 and clock.sleeping == 1, timeout=5)
        write_identity(tmp_path, ca.issue(now=NOW, uri_sans=[SPIFFE]))
        clock.advance(1)
        await async_wait_for(lambda: prov.reloads == 2, timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_files_dir_parses_mode() -> None:
    assert files_dir("files:/var/run/secrets/istio") == Path("/var/run/secrets/istio")
    assert files_dir("ca") is None
    with pytest.raises(IdentityError, match="needs a directory"):
        files_dir("files:")
