"""A running bridge over a small test world, with known key and token bytes planted.

:func:`running_bridge` starts a real :class:`bridge.app.Bridge` (xDS and admin
servers on loopback ports) fed by the directory source over :data:`WORLD`
plus three mesh identities, each carrying material the tests know:

- Linkerd through the ``files:DIR`` provider (a real ECDSA key in ``key.pem``);
- Consul as an :class:`IdentitySecret` put straight into the store;
- Istio through the Istio CA provider against the istiod stand-in, with a
  bearer token: the first token offered is a forged one the CA rejects, the
  next a valid one, so both the failure path and the success path run.

The config carries a Consul token. :class:`Planted` lists every secret and
:func:`leaks` looks for any of them, in the encodings they could take on the
way out (raw, base64, hex, the lines of a PEM body, JSON-escaped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import re
import secrets
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.istio.ca import IstioCaProvider, IstioCaSettings, IstioRoots
from bridge.app import Bridge, Source, wait_ready
from bridge.config import Config, load_config
from bridge.identity import names, pki
from bridge.identity.files import FilesProvider
from bridge.identity.provider import IdentityProvider
from bridge.identity.rotation import RenewalPolicy
from bridge.model.ir import IdentitySecret, Mesh, TrustSecret
from bridge.model.secrets import PrivateKey, SecretBytes
from bridge.pipeline import ResolveFn
from bridge.sources.dir import DirSource
from bridge.store import Store
from tests.standins.istiod_ca import IstiodCa
from tests.standins.sa_tokens import FakeTokenRequest
from tests.support.wait import async_wait_for

CONSUL_TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"

WORLD = {
    "shop.yaml": """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
          annotations: {meshbridge.io/mesh: none}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: shop
          annotations: {meshbridge.io/prefix: /web}
        spec:
          ports: [{name: http, port: 80}]
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: legacy
          namespace: shop
          annotations: {meshbridge.io/prefix: /legacy, meshbridge.io/timeout: soon}
        spec:
          ports: [{name: http, port: 80}]
        """,
    "web-slice.yaml": """\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abcde
          namespace: shop
          labels: {kubernetes.io/service-name: web}
        addressType: IPv4
        ports: [{name: http, port: 8080}]
        endpoints:
        - addresses: ["127.0.0.1"]
          conditions: {ready: true}
        """,
    "bookstore.yaml": """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: bookstore
          labels: {istio-injection: enabled}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: reviews
          namespace: bookstore
          annotations: {meshbridge.io/prefix: /reviews}
        spec:
          ports: [{name: http, port: 9080}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: reviews-h6v2c
          namespace: bookstore
          labels: {kubernetes.io/service-name: reviews}
        addressType: IPv4
        ports: [{name: http, port: 9080}]
        endpoints:
        - addresses: ["10.244.4.10"]
          conditions: {ready: true}
          targetRef: {kind: Pod, name: reviews-v1}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: reviews-v1
          namespace: bookstore
          labels: {security.istio.io/tlsMode: istio}
        spec: {serviceAccountName: bookstore-reviews}
        status:
          podIPs: [{ip: 10.244.4.10}]
        """,
    "emojivoto.yaml": """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: emojivoto
          annotations: {linkerd.io/inject: enabled}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: voting
          namespace: emojivoto
          annotations: {meshbridge.io/prefix: /vote}
        spec:
          ports: [{name: http, port: 8080}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: voting-t8n3w
          namespace: emojivoto
          labels: {kubernetes.io/service-name: voting}
        addressType: IPv4
        ports: [{name: http, port: 8080}]
        endpoints:
        - addresses: ["10.244.5.21"]
          conditions: {ready: true}
          targetRef: {kind: Pod, name: voting-1}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: voting-1
          namespace: emojivoto
          labels: {linkerd.io/control-plane-ns: linkerd}
        spec: {serviceAccountName: voting}
        status:
          podIPs: [{ip: 10.244.5.21}]
        """,
    "payments.yaml": """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: payments
          annotations: {meshbridge.io/mesh: consul}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: payments
          namespace: payments
          annotations: {meshbridge.io/prefix: /payments}
        spec:
          ports: [{name: http, port: 8080}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: payments-x1
          namespace: payments
          labels: {kubernetes.io/service-name: payments}
        addressType: IPv4
        ports: [{name: http, port: 20000}]
        endpoints:
        - addresses: ["10.244.6.3"]
          conditions: {ready: true}
        """,
}
# The Services above: (namespace/name, a phrase of its diagnostic or "").
SERVICES = {
    "shop/web": "",
    "shop/legacy": "timeout 'soon' is not a duration",
    "bookstore/reviews": "",
    "emojivoto/voting": "",
    "payments/payments": "",
}


def write_world(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in WORLD.items():
        (root / name).write_text(textwrap.dedent(text))


# -- planted secrets ---------------------------------------------------------------


@dataclass
class Planted:
    """Every secret the test world carries, by where it was planted."""

    keys: dict[str, bytes] = field(default_factory=dict)  # PEM private keys
    tokens: dict[str, bytes] = field(default_factory=dict)

    def all(self) -> dict[str, bytes]:
        return {**{f"key {k}": v for k, v in self.keys.items()}, **self.tokens}


def _forms(secret: bytes) -> set[str]:
    """Text forms in which ``secret`` could leave the process."""
    text = secret.decode("latin-1")
    forms = {text, base64.b64encode(secret).decode(), secret.hex()}
    forms.add(base64.urlsafe_b64encode(secret).decode().rstrip("="))
    body = [line for line in text.splitlines() if line and not line.startswith("-----")]
    if (
        text.startswith("-----BEGIN") and body
    ):  # a PEM: its base64 lines, the DER in base64 and hex, JSON-escaped
        joined = "".join(body)
        forms.add(joined)
        forms.update(line for line in body if len(line) >= 16)
        with contextlib.suppress(ValueError):
            forms.add(base64.b64decode(joined).hex())
        forms.add(text.replace("\n", "\\n"))
    elif text.count(".") == 2:  # a JWT: its signature alone is enough to reuse it
        forms.add(text.rsplit(".", 1)[1])
    return {f for f in forms if len(f) >= 16}


def leaks(text: str | bytes, planted: Planted) -> list[str]:
    """Which planted secrets appear in ``text``, in any of their forms."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for what, secret in planted.all().items():
        if any(form in text for form in _forms(secret)):
            found.append(what)
    return found


# -- sources -------------------------------------------------------------------------


class IdentitySource:
    """An identity provider as a bridge source (as ``meshbridge serve`` wires them)."""

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider
        self.name = provider.source

    async def run(self) -> None:
        await self.provider.run()


class MeshSecretSource:
    """Puts a Consul identity and trust bundle into the store once (a CA provider would)."""

    name = "identity/consul"

    def __init__(self, store: Store, identity: IdentitySecret, trust: TrustSecret) -> None:
        self.store = store
        self.identity = identity
        self.trust = trust
        store.register_source(self.name)

    async def run(self) -> None:
        self.store.put_mesh_secret(self.trust, source=self.name)
        self.store.put_mesh_secret(self.identity, source=self.name)
        self.store.mark_synced(self.name)
        await asyncio.Event().wait()


class ForgedFirst:
    """A token source whose first token is forged (the CA rejects it), then valid ones."""

    def __init__(self, real: FakeTokenRequest, forged: bytes) -> None:
        self.real = real
        self.forged = forged
        self.given: list[bytes] = []

    async def token(self, audience: str) -> SecretBytes:
        tok = self.forged if not self.given else (await self.real.token(audience)).reveal()
        self.given.append(tok)
        return SecretBytes(tok)


# -- the bridge ------------------------------------------------------------------------


@dataclass
class Running:
    app: Bridge
    config: Config
    world: Path
    planted: Planted
    istio: IstioCaProvider
    tokens: ForgedFirst

    @property
    def admin(self) -> str:
        assert self.app.admin is not None
        return f"http://127.0.0.1:{self.app.admin.port}"

    async def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of an admin page, fetched off the event loop."""

        def fetch() -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(self.admin + path, timeout=5) as r:
                    return int(r.status), str(r.headers["Content-Type"]), bytes(r.read())
            except urllib.error.HTTPError as e:
                return int(e.code), str(e.headers["Content-Type"]), bytes(e.read())

        return await asyncio.to_thread(fetch)


FAST = RenewalPolicy(fraction=0.5, backoff_initial=0.05, backoff_max=0.2, min_interval=0.1)


def _config(tmp: Path, consul_token: str, extra: str = "") -> Config:
    path = tmp / "meshbridge.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            xds: {{address: "127.0.0.1:0"}}
            admin: {{address: "127.0.0.1:0"}}
            consul:
              token: {consul_token}
              datacenter: dc1
            debounce: {{hold_off_ms: 5, max_delay_ms: 50}}
            """
        )
        + extra
    )
    return load_config(path, env={})


@contextlib.asynccontextmanager
async def running_bridge(
    tmp: Path,
    *,
    resolve: ResolveFn | None = None,
    config_extra: str = "",
    wrap_resolve: Callable[[Config], ResolveFn] | None = None,
) -> AsyncIterator[Running]:
    """A started bridge over the test world with every identity issued; stopped after."""
    now = dt.datetime.now(dt.UTC)
    planted = Planted()
    world = tmp / "world"
    write_world(world)

    linkerd_ca = pki.LocalCA(name="linkerd trust anchor", now=now)
    linkerd_name = "meshbridge.meshbridge.serviceaccount.identity.linkerd.cluster.local"
    leaf = linkerd_ca.issue(now=now, dns_sans=[linkerd_name])
    files = tmp / "linkerd-identity"
    files.mkdir()
    (files / "cert-chain.pem").write_text(leaf.cert_chain_pem)
    (files / "key.pem").write_bytes(leaf.private_key.reveal())
    (files / "root-cert.pem").write_text(linkerd_ca.root_pem)
    planted.keys["linkerd files:DIR key.pem"] = leaf.private_key.reveal()

    consul_ca = pki.LocalCA(name="consul ca", now=now, trust_domain=CONSUL_TRUST_DOMAIN)
    consul_leaf = consul_ca.issue(
        now=now, uri_sans=[f"spiffe://{CONSUL_TRUST_DOMAIN}/ns/default/dc/dc1/svc/meshbridge"]
    )
    planted.keys["consul IdentitySecret in the store"] = consul_leaf.private_key.reveal()
    consul_identity = IdentitySecret(
        name=names.identity_secret(Mesh.CONSUL),
        cert_chain_pem=consul_leaf.cert_chain_pem,
        private_key=PrivateKey(consul_leaf.private_key.reveal()),
        not_after=pki.rfc3339(consul_leaf.info.not_after),
    )
    consul_trust = TrustSecret(
        name=names.trust_secret(Mesh.CONSUL),
        ca_bundle_pem=consul_ca.root_pem,
        trust_domain=CONSUL_TRUST_DOMAIN,
    )

    consul_token = "c0n5u1-" + secrets.token_hex(16)
    planted.tokens["consul token in the config"] = consul_token.encode()
    config = _config(tmp, consul_token, config_extra)

    sa_tokens = FakeTokenRequest(namespace="meshbridge", service_account="meshbridge")
    forged = sa_tokens.issue("meshbridge", "meshbridge", ["istio-ca"]).rsplit(".", 1)[0]
    forged += "." + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    planted.tokens["forged istio bearer token"] = forged.encode()
    tokens = ForgedFirst(sa_tokens, forged.encode())

    async with IstiodCa(sa_tokens) as ca:
        roots = tmp / "istio-root-cert.pem"
        roots.write_text(ca.roots_pem)
        holder: dict[str, Any] = {}

        def sources(store: Store) -> list[Source]:
            istio = IstioCaProvider(
                store,
                tokens,
                IstioRoots.file(roots),
                IstioCaSettings(
                    address=ca.address,
                    namespace="meshbridge",
                    service_account="meshbridge",
                    validity_s=3600,
                    timeout_s=5.0,
                    roots_poll_s=0.05,
                ),
                policy=FAST,
            )
            holder["istio"] = istio
            linkerd = FilesProvider(Mesh.LINKERD, store, files, trust_domain="cluster.local")
            return [
                DirSource(store, world, poll_interval=0.02),
                IdentitySource(linkerd),
                IdentitySource(istio),
                MeshSecretSource(store, consul_identity, consul_trust),
            ]

        app = Bridge(
            config,
            sources,
            resolve=wrap_resolve(config) if wrap_resolve is not None else resolve,
            drain=0,
        )
        await app.start()
        try:
            await wait_ready(app)
            istio: IstioCaProvider = holder["istio"]
            # Wait for the Istio identity: the forged token is refused, the next one works.
            await async_wait_for(
                lambda: istio.current is not None and "identity/istio" in _secrets(app),
                timeout=20,
                what="the Istio identity from the CA stand-in",
            )
            for tok in tokens.given[1:]:
                planted.tokens[f"istio bearer token #{len(planted.tokens)}"] = tok
            assert istio.current is not None
            planted.keys["istio key from the CA"] = istio.current.private_key.reveal()
            yield Running(app, config, world, planted, istio, tokens)
        finally:
            await app.stop(0)


def _secrets(app: Bridge) -> set[str]:
    world = app.pipeline.world
    return set() if world is None else {str(n) for n in world.mesh_secrets}


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
        if got == want:
            return float(m.group(3))
    return None
