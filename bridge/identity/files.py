"""The ``files:DIR`` identity provider: certificates another agent writes to disk.

The directory has istio-agent's ``OUTPUT_CERTS`` layout (Emissary reads the
same): ``cert-chain.pem`` (leaf first), ``key.pem`` and ``root-cert.pem``.
The agent renews them; this provider notices, checks and publishes:

- files are polled by stat (mtime, size, inode), never read when unchanged;
- a new identity is loaded only once BOTH ``cert-chain.pem`` and ``key.pem``
  have changed since the last load, so a pair caught half-way through being
  rewritten never reaches Envoy;
- what is loaded must hold together (the key matches the leaf, the chain
  leads to ``root-cert.pem``, the leaf is valid now); if not, the previous
  identity stays live and a diagnostic names the file and the problem;
- ``root-cert.pem`` changing alone updates the trust bundle only (a root
  rotation adds the new root before removing the old one);
- an identity nearing expiry without being replaced gets a warning, an
  expired one an error: the agent has stopped renewing.

It only reads files; it never writes, and never logs key material.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import IdentityError
from bridge.identity import pki
from bridge.identity.provider import IdentityMaterial, IdentityProvider
from bridge.identity.rotation import Clock
from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.ir import Mesh
from bridge.model.secrets import PrivateKey
from bridge.store import Store

log = logging.getLogger("bridge.identity")

CERT_CHAIN = "cert-chain.pem"
KEY = "key.pem"
ROOT_CERT = "root-cert.pem"

# Less than this fraction of the lifetime left and no new files: warn.
_WARN_REMAINING = 0.25


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class FilesProvider(IdentityProvider):
    """Publishes the identity found in ``directory`` and follows its changes."""

    def __init__(
        self,
        mesh: Mesh,
        store: Store,
        directory: str | Path,
        *,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        trust_domain: str = "",
    ) -> None:
        super().__init__(mesh, store, clock=clock)
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self._trust_domain = trust_domain
        # Stamps of what is live, and of the last attempt (so a bad pair is
        # reported once, and retried only when a file changes again).
        self._loaded: dict[str, _Stamp | None] = {}
        self._attempted: dict[str, _Stamp | None] = {}
        self._load_diags: tuple[Diagnostic, ...] = ()
        self._expiry_diags: tuple[Diagnostic, ...] = ()
        self.reloads = 0  # identities published
        self.trust_reloads = 0  # trust bundles published alone

    @property
    def spec(self) -> str:
        return f"files:{self.directory}"

    async def run(self) -> None:
        while True:
            # Reading three small files is quick; a thread would buy nothing.
            self.poll()
            await self.clock.sleep(self.poll_interval)

    def poll(self) -> bool:
        """Look at the files once; returns whether anything new was published."""
        stamps = {n: _stamp(self.directory / n) for n in (CERT_CHAIN, KEY, ROOT_CERT)}
        published = False
        if self.current is None:
            if stamps != self._attempted:
                self._attempted = stamps
                published = self._load_all(stamps)
        elif self._changed(stamps, CERT_CHAIN) and self._changed(stamps, KEY):
            pair = {n: stamps[n] for n in (CERT_CHAIN, KEY, ROOT_CERT)}
            if pair != self._attempted:
                self._attempted = pair
                published = self._load_all(stamps)
        elif self._changed(stamps, ROOT_CERT) and stamps[ROOT_CERT] != self._attempted.get(
            ROOT_CERT
        ):
            self._attempted = {**self._attempted, ROOT_CERT: stamps[ROOT_CERT]}
            published = self._load_root(stamps)
        self._check_expiry()
        self.mark_synced()
        return published

    # -- loading ---------------------------------------------------------------

    def _changed(self, stamps: dict[str, _Stamp | None], name: str) -> bool:
        return stamps[name] is not None and stamps[name] != self._loaded.get(name)

    def _read(self, name: str) -> str:
        path = self.directory / name
        try:
            return path.read_text()
        except FileNotFoundError as exc:
            raise _FileProblem(name, f"{path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise _FileProblem(name, f"cannot read {path}: {exc}") from exc

    def _load_all(self, stamps: dict[str, _Stamp | None]) -> bool:
        try:
            chain = self._read(CERT_CHAIN)
            key = PrivateKey(self._read(KEY))
            roots = self._read(ROOT_CERT)
            try:
                material = IdentityMaterial.checked(
                    cert_chain_pem=chain,
                    private_key=key,
                    trust_bundle_pem=roots,
                    trust_domain=self._trust_domain,
                    now=self.clock.now(),
                )
                if not self._trust_domain:
                    material = dataclasses.replace(
                        material, trust_domain=spiffe_trust_domain(material.leaf)
                    )
            except IdentityError as exc:
                raise _FileProblem(CERT_CHAIN, str(exc)) from exc
        except _FileProblem as problem:
            self._report(problem)
            return False
        self._loaded = dict(stamps)
        self.publish(material)
        self.reloads += 1
        self._report(None)
        log.info(
            "%s: loaded identity %s from %s, valid until %s",
            self.ref,
            material.identity,
            self.spec,
            material.not_after.isoformat(),
        )
        return True

    def _load_root(self, stamps: dict[str, _Stamp | None]) -> bool:
        assert self.current is not None
        try:
            roots = self._read(ROOT_CERT)
            try:
                pki.load_pem_chain(roots, ROOT_CERT)
                pki.validate_chain(self.current.cert_chain_pem, roots, self.clock.now())
            except IdentityError as exc:
                # A bundle that no longer covers our own chain would make the
                # mesh refuse us as soon as peers pick it up: keep the old one.
                raise _FileProblem(ROOT_CERT, str(exc)) from exc
        except _FileProblem as problem:
            self._report(problem)
            return False
        self._loaded[ROOT_CERT] = stamps[ROOT_CERT]
        self.current = IdentityMaterial(
            cert_chain_pem=self.current.cert_chain_pem,
            private_key=self.current.private_key,
            trust_bundle_pem=roots,
            leaf=self.current.leaf,
            trust_domain=self.current.trust_domain,
        )
        self.publish_trust(roots, self.current.trust_domain)
        self.trust_reloads += 1
        self._report(None)
        log.info("%s: loaded trust bundle from %s", self.ref, self.spec)
        return True

    # -- diagnostics -----------------------------------------------------------

    def _report(self, problem: _FileProblem | None) -> None:
        if problem is None:
            self.last_error = ""
            self._load_diags = ()
        else:
            self.last_error = problem.message
            kept = " (the previous identity stays in use)" if self.current else ""
            self._load_diags = (
                Diagnostic(
                    ref=self.ref,
                    field=f"{self.spec}/{problem.file}",
                    message=problem.message + kept,
                    fix=(
                        f"make {self.directory} hold {CERT_CHAIN}, {KEY} and {ROOT_CERT} "
                        "as an istio-agent with OUTPUT_CERTS writes them"
                    ),
                    severity=Severity.ERROR,
                    code="identity.files.invalid",
                ),
            )
            log.warning("%s: %s: %s", self.ref, self.spec, problem.message)
        self._update_diagnostics()

    def _check_expiry(self) -> None:
        cur = self.current
        diags: tuple[Diagnostic, ...] = ()
        if cur is not None:
            now = self.clock.now()
            left = cur.not_after - now
            if left <= dt.timedelta(0):
                diags = (self._expiry_diag(cur, "expired at", Severity.ERROR, "identity.expired"),)
            elif left < (cur.not_after - cur.not_before) * _WARN_REMAINING:
                diags = (
                    self._expiry_diag(cur, "expires at", Severity.WARNING, "identity.expiring"),
                )
        if diags != self._expiry_diags:
            self._expiry_diags = diags
            self._update_diagnostics()

    def _expiry_diag(
        self, cur: IdentityMaterial, verb: str, severity: Severity, code: str
    ) -> Diagnostic:
        return Diagnostic(
            ref=self.ref,
            field=f"{self.spec}/{CERT_CHAIN}",
            message=f"certificate {verb} {cur.not_after.isoformat()} and no newer one was written",
            fix=f"check the agent that renews the certificates in {self.directory}",
            severity=severity,
            code=code,
        )

    def _update_diagnostics(self) -> None:
        diags = tuple(sorted(self._load_diags + self._expiry_diags))
        if diags != self.diagnostics:
            self.set_diagnostics(diags)


class _FileProblem(Exception):
    def __init__(self, file: str, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.message = message


def spiffe_trust_domain(leaf: pki.CertInfo) -> str:
    """The trust domain of the leaf's SPIFFE ID (``spiffe://DOMAIN/...``), or ""."""
    for uri in leaf.uri_sans:
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").partition("/")[0]
    return ""


def files_dir(mode: str) -> Path | None:
    """The directory of a ``files:DIR`` identity mode, or None for any other mode."""
    if not mode.startswith("files:"):
        return None
    directory = mode.removeprefix("files:")
    if not directory:
        raise IdentityError("identity mode files:DIR needs a directory after 'files:'")
    return Path(directory)
