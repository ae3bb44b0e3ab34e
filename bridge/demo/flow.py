"""The demo, start to finish: world → bridge → real Envoy gateway → meshes' sidecars.

See :mod:`bridge.demo` for the story. The steps:

1. Backends: two plain ones (``alpha``, ``beta``) and one per meshed Service
   of the world, each answering with its name.
2. Mesh CAs: a local CA plays each mesh's CA (:class:`DemoMeshCa`). It writes
   the gateway's identity for that mesh into an istio-agent style
   ``OUTPUT_CERTS`` directory, and each sidecar's certificate into the
   sidecar's own directory. These directories stand for the mesh agents;
   they are the only place the demo writes private keys (directories 0700,
   files 0600, all removed at exit). The gateway's keys reach its Envoy
   over SDS from meshbridge's memory.
3. Sidecars: a real Envoy per meshed Service enforcing that mesh's inbound
   rules (:mod:`bridge.demo.meshes`), in front of its backend. Each binds a
   port of its own (port 0, read back from its admin; see
   :mod:`bridge.demo.envoy`), which goes into the world's EndpointSlices.
4. meshbridge: the world (EndpointSlices pointed at the backends and
   sidecars) through the directory source, the gateway's identities through
   ``files:DIR`` providers from the config (``istio.identity``,
   ``linkerd.mode``, ``consul.identity``: ``files:DIR``) exactly as ``serve``
   builds them — the pipeline and the xDS server, in process.
5. The gateway: a real Envoy from :func:`bridge.bootstrap.bootstrap_yaml`,
   on a port the demo holds for it from the start (it is in the config).
   Requests start once its listener is up and every route's cluster has
   its endpoints.
6. Traffic: every route answers once; then a steady load runs on every route
   while the gateway's identity in every mesh is rotated (new certificate
   and key written into the ``OUTPUT_CERTS`` directories). The demo waits
   until every sidecar has seen the new certificate, then stops the load.
7. One row per route; exit 0 only if every route answered from the right
   backend with no failed request, and every sidecar verified the gateway's
   identity before and after the rotation.

For the end-to-end tests only, ``MESHBRIDGE_DEMO_IMPOSTOR=<mesh>`` makes that
mesh's sidecar hold another workload's certificate (same mesh CA): the
gateway must refuse it, so that route fails and the demo exits 1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from bridge.app import Bridge, wait_ready
from bridge.bootstrap import bootstrap_yaml
from bridge.config import (
    Config,
    ConsulConfig,
    GatewayConfig,
    IstioConfig,
    LinkerdConfig,
    ListenerConfig,
    XdsConfig,
)
from bridge.demo.backends import NameServer
from bridge.demo.envoy import DemoEnvoy, PortReservation, envoy_binary
from bridge.demo.meshes import (
    Backend,
    DemoMeshCa,
    SdsFile,
    consul_sidecar,
    istio_sidecar,
    linkerd_sidecar,
    write_sds_certificate,
)
from bridge.demo.traffic import Answer, LoadResult, RouteLoad, http_get
from bridge.demo.workloads import (
    MeshWorkload,
    ServiceKey,
    load_world,
    mesh_workloads,
    services,
    write_world,
)
from bridge.errors import MeshbridgeError
from bridge.identity import pki
from bridge.identity.files import FilesProvider
from bridge.model.diagnostics import Severity
from bridge.model.ir import Mesh, Resolved, Route, UpstreamTls
from bridge.model.k8s import Kind
from bridge.resolve.meshtls import consul_gateway_spiffe
from bridge.sources.dir import DirSource
from bridge.store import Store
from bridge.xds.names import cluster_name, listener_name

NODE_ID = "meshbridge-demo-gateway"
PLAIN_BACKENDS = ("alpha", "beta")
MESHES = (Mesh.ISTIO, Mesh.LINKERD, Mesh.CONSUL)
IMPOSTOR_ENV = "MESHBRIDGE_DEMO_IMPOSTOR"

FIRST_ANSWER_DEADLINE = 20.0  # seconds for the gateway to answer its first route
CONFIG_DEADLINE = 20.0  # seconds for the gateway's listener and clusters to arrive over xDS
ROUTE_GRACE = 3.0  # once one route answers, the config is in: each other route gets this long
LOAD_RATE = 40.0  # requests per second per route
LOAD_MIN_REQUESTS = 25  # per route, before the rotation and again after it took effect
ROTATION_DEADLINE = 10.0  # seconds for every sidecar to see the gateway's new certificate
IDENTITY_POLL = 0.1  # seconds between looks at the OUTPUT_CERTS directories
# Sidecars close a connection after this many requests, so the gateway
# handshakes again and again and a rotation shows within a second.
SIDECAR_MAX_REQUESTS = 5
ENFORCES = {
    Mesh.ISTIO: "client cert from the Istio root, Istio ALPN only",
    Mesh.LINKERD: "TLS 1.3 only, SNI = its identity, client cert from the trust anchor",
    Mesh.CONSUL: "client cert from the Connect root, intention allows the gateway only",
}
CA_BACKDATE = dt.timedelta(minutes=5)  # certificates valid from a little before now


def demo_config(listen_port: int, agents: Path) -> Config:
    """The bridge's config: the gateway's identity in every mesh in ``files:DIR`` mode."""
    return Config(
        source="dir:.",
        xds=XdsConfig(address="127.0.0.1:0", allowed_node_ids=(NODE_ID,)),
        gateway=GatewayConfig(listeners=(ListenerConfig("http", listen_port, "127.0.0.1"),)),
        istio=IstioConfig(identity=f"files:{gateway_certs_dir(agents, Mesh.ISTIO)}"),
        linkerd=LinkerdConfig(mode=f"files:{gateway_certs_dir(agents, Mesh.LINKERD)}"),
        # The Connect trust domain is read from the certificate's SPIFFE ID.
        consul=ConsulConfig(identity=f"files:{gateway_certs_dir(agents, Mesh.CONSUL)}"),
    )


def gateway_certs_dir(agents: Path, mesh: Mesh) -> Path:
    """The ``OUTPUT_CERTS`` directory the mesh's agent writes the gateway's identity to."""
    return agents / f"gateway-{mesh.value}"


class _ProviderSource:
    """An identity provider as a :class:`bridge.app.Source`."""

    def __init__(self, provider: FilesProvider) -> None:
        self.provider = provider
        self.name = provider.source

    async def run(self) -> None:
        await self.provider.run()


def identity_providers(store: Store, config: Config) -> list[FilesProvider]:
    """The gateway's identity providers, from the config as ``serve`` makes them."""
    from bridge.cli import identity_providers as from_config

    providers = from_config(store, config)
    for p in providers:
        p.poll_interval = IDENTITY_POLL
    return providers


# -- the meshes' side ---------------------------------------------------------------


def gateway_identity(ca: DemoMeshCa, config: Config, now: dt.datetime) -> pki.Issued:
    """The gateway's certificate in ``ca``'s mesh, as that mesh's CA would issue it."""
    if ca.mesh is Mesh.CONSUL:
        return ca.issue(config.consul.namespace, config.consul.identity_service, now=now)
    return ca.issue(config.gateway.namespace, config.gateway.service_account, now=now)


def short(issued: pki.Issued) -> str:
    """A certificate's serial number, shortened for reading."""
    return f"{issued.info.serial:x}"[:8] + "…"


def san_of(issued: pki.Issued) -> str:
    """The identity a peer verifies: the first URI SAN (SPIFFE), else the DNS SAN (Linkerd)."""
    sans = issued.info.uri_sans + issued.info.dns_sans
    return sans[0] if sans else ""


@dataclass
class Sidecar:
    """One meshed Service's sidecar Envoy and the backend behind it."""

    workload: MeshWorkload
    backend: NameServer
    port: int = 0
    envoy: DemoEnvoy | None = None


def sidecar_bootstrap(
    side: Sidecar,
    ca: DemoMeshCa,
    config: Config,
    cert: SdsFile,
    admin_port: int,
) -> dict[str, Any]:
    w = side.workload
    common: dict[str, Any] = {
        "name": w.name,
        "port": side.port,
        "cert": cert,
        "trust": ca.root_pem,
        "backend": Backend("127.0.0.1", side.backend.port),
        "max_requests_per_connection": SIDECAR_MAX_REQUESTS,
        "admin_port": admin_port,
    }
    if w.mesh is Mesh.ISTIO:
        return istio_sidecar(**common)
    if w.mesh is Mesh.LINKERD:
        # The proxy's inbound side accepts only its own identity name as SNI.
        return linkerd_sidecar(identity=ca.linkerd_identity(w.namespace, w.identity), **common)
    # Intentions: the gateway's Connect identity may call this service.
    allow = consul_gateway_spiffe(ca.trust_domain, config.resolve_settings().consul)
    return consul_sidecar(allow=[allow], **common)


def sidecar_certificate(
    side: Sidecar, ca: DemoMeshCa, config: Config, now: dt.datetime, impostor: bool
) -> pki.Issued:
    """The workload's certificate from its mesh CA (another workload's, for an impostor)."""
    w = side.workload
    who = "impostor" if impostor else w.identity
    namespace = config.consul.namespace if w.mesh is Mesh.CONSUL else w.namespace
    return ca.issue(namespace, who, now=now)


# -- routes and their checks -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteCheck:
    """A route of the resolved world and what a good answer through it looks like."""

    route: Route
    mesh: Mesh | None
    resolver: str
    expected_backend: str
    tls: UpstreamTls | None
    gateway_identity: str  # what the sidecar must have verified ("" for no mesh)

    @property
    def name(self) -> str:
        return f"{self.route.host}{self.route.prefix}"

    @property
    def host(self) -> str:
        host = self.route.host
        if host == "*":
            return "demo.local"
        if host.startswith("*."):
            return "demo" + host[1:]
        return host

    @property
    def meshed(self) -> bool:
        return self.mesh not in (None, Mesh.NONE)

    @property
    def server_san(self) -> str:
        """The SAN(s) the gateway verifies on the server's certificate."""
        if self.tls is None:
            return "n/a"
        return ", ".join(f"{s.kind}:{s.value}" for s in self.tls.verify_sans) or "-"


def route_checks(
    resolved: Resolved, expected: dict[ServiceKey, str], identities: dict[Mesh, str]
) -> list[RouteCheck]:
    out = []
    for res in sorted(resolved.services.values(), key=lambda r: r.ref):
        if not res.exposed:
            continue
        for r in res.routes:
            up = resolved.ir.upstreams.get(r.upstream)
            mesh = res.mesh
            out.append(
                RouteCheck(
                    route=r,
                    mesh=mesh,
                    resolver=res.resolver.value if res.resolver else "-",
                    expected_backend=expected.get((r.source.namespace, r.source.name), "?"),
                    tls=up.tls if up is not None else None,
                    gateway_identity=identities.get(mesh, "") if mesh else "",
                )
            )
    return out


async def gateway_configured(gateway: DemoEnvoy, config: Config, checks: list[RouteCheck]) -> None:
    """Wait until the gateway listens on its port and has every route's cluster with endpoints.

    The listener must come up (a clear error if it cannot, e.g. its port is
    in use); the clusters are waited for up to :data:`CONFIG_DEADLINE`, and
    a route whose cluster never arrives is then reported by its row.
    """
    for listener in config.resolve_settings().listeners:
        await gateway.wait_listener(listener_name(listener), listener.port, timeout=CONFIG_DEADLINE)
    wanted = {cluster_name(c.route.upstream) for c in checks}
    deadline = time.monotonic() + CONFIG_DEADLINE
    # The admin is asked from a thread: this loop serves the gateway's xDS meanwhile.
    while not wanted <= await asyncio.to_thread(gateway.clusters_with_hosts):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)  # the clusters arrive over xDS


async def first_answers(port: int, checks: list[RouteCheck]) -> list[Answer]:
    """Ask every route, round after round, until each answers from its backend.

    The gateway is still taking its configuration at first: the first answer
    may take up to :data:`FIRST_ANSWER_DEADLINE`. Once any route has
    answered, the configuration is in, and the others get :data:`ROUTE_GRACE`
    more, so a route that cannot work fails fast.
    """
    answers: dict[int, Answer] = {}
    pending = list(range(len(checks)))
    deadline = time.monotonic() + FIRST_ANSWER_DEADLINE
    answered = False
    while pending:
        for i in list(pending):
            c = checks[i]
            a = await asyncio.to_thread(http_get, port, c.host, c.route.prefix)
            answers[i] = a
            if a.status == 200 and a.backend == c.expected_backend:
                pending.remove(i)
                if not answered:
                    answered = True
                    deadline = min(deadline, time.monotonic() + ROUTE_GRACE)
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # the gateway is still taking its config: ask again
    return [answers[i] for i in range(len(checks))]


async def wait_until(cond: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)  # the load threads move the condition along
    return True


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRow:
    check: RouteCheck
    first: Answer
    load: LoadResult
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(
    check: RouteCheck,
    first: Answer,
    load: LoadResult,
    serials: tuple[int, int] | None,
) -> RouteRow:
    """A route worked if it answered, lost no request, and (meshed) the sidecar saw both certs."""
    problems = []
    if not (first.status == 200 and first.backend == check.expected_backend):
        got = first.error or f"status {first.status or 'none'} from {first.backend or '-'}"
        problems.append(f"no answer from {check.expected_backend} ({got})")
    if load.total == 0:
        problems.append("no request sent during the rotation")
    elif load.failed:
        problems.append(f"{load.failed} of {load.total} requests failed ({load.first_error})")
    if check.meshed and not problems:
        peers = set(load.peers)
        if peers != {check.gateway_identity}:
            seen = ", ".join(sorted(peers)) or "nothing"
            problems.append(f"sidecar verified {seen}, expected {check.gateway_identity}")
        if serials is not None:
            old, new = serials
            if old not in load.serials:
                problems.append("the sidecar never saw the gateway's first certificate")
            if new not in load.serials:
                problems.append("the gateway's new certificate never reached the sidecar")
    return RouteRow(check, first, load, tuple(problems))


HEADERS = (
    "ROUTE",
    "MESH",
    "RESOLVER",
    "STATUS",
    "LATENCY",
    "REQUESTS",
    "RESULT",
    "PEER VERIFIED (server SAN the gateway verified / gateway identity the sidecar verified)",
)


def render(rows: list[RouteRow], left_out: list[str], out: TextIO) -> None:
    cells = []
    for r in rows:
        c = r.check
        if c.meshed:
            peers = ", ".join(sorted(r.load.peers)) or "-"
            peer = f"{c.server_san} / {peers}"
        else:
            peer = "n/a"
        statuses = sorted({*([r.first.status] if r.first.status else []), *r.load.statuses})
        cells.append(
            (
                c.name,
                c.mesh.value if c.mesh else "-",
                c.resolver,
                ",".join(map(str, statuses)) or "no answer",
                f"{r.load.p50():.1f} ms" if r.load.total else f"{r.first.latency_ms:.1f} ms",
                f"{r.load.ok}/{r.load.total}",
                f"ok ({c.expected_backend})" if r.ok else "FAIL",
                peer,
            )
        )
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(HEADERS)]
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for r in rows:
        for p in r.problems:
            print(f"  {r.check.name}: {p}", file=out)
    if left_out:
        print("\nLeft out because of a diagnostic (everything else keeps working):", file=out)
        for line in left_out:
            print(f"  {line}", file=out)


def left_out_services(resolved: Resolved) -> list[str]:
    return [
        f"{res.ref.namespace}/{res.ref.name}: {d.field}: {d.message}"
        for res in sorted(resolved.services.values(), key=lambda r: r.ref)
        if res.ref.kind is Kind.SERVICE
        for d in res.diagnostics
        if d.severity is Severity.ERROR
    ]


def refusal_stats(envoy: DemoEnvoy, rows: list[RouteRow]) -> list[str]:
    """The gateway's TLS counters for failed meshed routes: why it refused or was refused."""
    stats = envoy.stats()
    out = []
    wanted = ("ssl.fail_verify_san", "ssl.connection_error", "upstream_cx_connect_fail")
    for r in rows:
        if r.ok or not r.check.meshed:
            continue
        prefix = f"cluster.{cluster_name(r.check.route.upstream)}."
        found = [
            f"{k.removeprefix(prefix)}={v}"
            for k, v in sorted(stats.items())
            if k.startswith(prefix) and k.endswith(wanted) and v
        ]
        if found:
            out.append(f"  {r.check.name}: gateway {', '.join(found)}")
    return out


# -- the run ----------------------------------------------------------------------------


async def run(out: TextIO = sys.stdout, *, impostor: Mesh | None = None) -> int:
    """Run the demo; returns the process exit code (``impostor``: see the module docstring)."""
    envoy_binary()  # fail early and clearly when Envoy is missing
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="meshbridge-demo-"))  # 0700
    agents = workdir / "mesh-agents"  # the only place private keys are written
    docs = load_world()
    workloads = mesh_workloads(docs)
    plain = [NameServer(name) for name in PLAIN_BACKENDS]
    sidecars = [Sidecar(w, NameServer(w.service)) for w in workloads]
    envoys: list[DemoEnvoy] = []
    loads: list[RouteLoad] = []
    app: Bridge | None = None
    reservation: PortReservation | None = None
    try:
        for b in [*plain, *(s.backend for s in sidecars)]:
            await b.start()

        # The meshes' CAs, the gateway's identities (OUTPUT_CERTS), the sidecars' certs.
        now = dt.datetime.now(dt.UTC) - CA_BACKDATE
        cas = {mesh: DemoMeshCa(mesh, now=now) for mesh in MESHES}
        # The gateway's port is in meshbridge's config before its Envoy starts:
        # reserved until that Envoy binds it. Every other Envoy port is bound by
        # Envoy itself (port 0) and read back from its admin.
        reservation = PortReservation()
        listen_port = reservation.port
        config = demo_config(listen_port, agents)
        gateway_certs = {mesh: gateway_identity(ca, config, now) for mesh, ca in cas.items()}
        for mesh, ca in cas.items():
            ca.write_output_certs(gateway_certs_dir(agents, mesh), gateway_certs[mesh])
        for side in sidecars:
            ca = cas[side.workload.mesh]
            cert = SdsFile(name="server", path=str(agents / side.workload.name / "server.json"))
            write_sds_certificate(
                cert,
                sidecar_certificate(side, ca, config, now, impostor is side.workload.mesh),
            )
            side.envoy = DemoEnvoy(
                yaml.safe_dump(sidecar_bootstrap(side, ca, config, cert, admin_port=0)),
                workdir=workdir,
                name=side.workload.name,
            )
            envoys.append(side.envoy)
            side.envoy.launch()
        for side in sidecars:
            assert side.envoy is not None
            await side.envoy.wait_ready()
            side.port = side.envoy.listener_ports().get(f"inbound_{side.workload.name}", 0)
            if not side.port:
                raise MeshbridgeError(
                    f"envoy ({side.workload.name}) reports no listener:\n{side.envoy.log_tail()}"
                )

        # The world, with endpoints at the plain backends (in turn) and at the sidecars.
        ports: dict[ServiceKey, int] = {s.workload.key: s.port for s in sidecars}
        expected: dict[ServiceKey, str] = {s.workload.key: s.backend.name for s in sidecars}
        for i, svc in enumerate(k for k in services(docs) if k not in ports):
            backend = plain[i % len(plain)]
            ports[svc], expected[svc] = backend.port, backend.name
        world = workdir / "world"
        world.mkdir()
        write_world(world, docs, ports)

        providers: list[FilesProvider] = []

        def sources(store: Store) -> list[DirSource | _ProviderSource]:
            providers.extend(identity_providers(store, config))
            return [
                DirSource(store, world, poll_interval=0.2),
                *(_ProviderSource(p) for p in providers),
            ]

        app = Bridge(config, sources, admin_address="")
        await app.start()
        await wait_ready(app)
        print(
            f"meshbridge demo: bridge serving xDS on {app.xds_target}, "
            f"gateway on 127.0.0.1:{listen_port}",
            file=out,
        )
        for side in sidecars:
            w = side.workload
            print(
                f"  {w.mesh.value} sidecar for {w.namespace}/{w.service} on 127.0.0.1:{side.port}"
                f" ({'Connect service' if w.mesh is Mesh.CONSUL else 'service account'}"
                f" {w.identity}; {ENFORCES[w.mesh]})"
                + (
                    "  [IMPOSTOR: holds another workload's certificate]"
                    if impostor is w.mesh
                    else ""
                ),
                file=out,
            )
        print(
            f"  private keys: only in {agents} (0700 directories, 0600 files), playing the "
            "mesh agents' OUTPUT_CERTS; removed at exit",
            file=out,
        )
        gateway = DemoEnvoy(
            bootstrap_yaml(
                xds=app.xds_target, node_id=NODE_ID, listen_port=listen_port, admin_port=0
            ),
            workdir=workdir,
        )
        envoys.append(gateway)
        gateway.launch()
        await gateway.wait_ready()

        resolved = app.pipeline.resolved
        assert resolved is not None
        identities = {mesh: san_of(issued) for mesh, issued in gateway_certs.items()}
        checks = route_checks(resolved, expected, identities)
        await gateway_configured(gateway, config, checks)
        firsts = await first_answers(listen_port, checks)

        # Load on every route; rotate every mesh identity of the gateway meanwhile.
        loads = [
            RouteLoad(listen_port, c.host, c.route.prefix, c.expected_backend, LOAD_RATE).start()
            for c in checks
        ]
        meshed = [
            (c, load, a)
            for c, load, a in zip(checks, loads, firsts, strict=True)
            if c.meshed and a.status == 200
        ]
        await wait_until(
            lambda: (
                all(ld.snapshot().total >= LOAD_MIN_REQUESTS for ld in loads)
                and all(ld.seen(gateway_certs[c.mesh].info.serial) for c, ld, _ in meshed if c.mesh)
            ),
            timeout=ROTATION_DEADLINE,
        )
        modified_before = gateway.stats().get("cluster_manager.cluster_modified")
        rotated_at = time.monotonic() - started
        new_certs = {mesh: gateway_identity(ca, config, now) for mesh, ca in cas.items()}
        for mesh, ca in cas.items():
            ca.write_output_certs(gateway_certs_dir(agents, mesh), new_certs[mesh])
        took_effect = await wait_until(
            lambda: all(ld.seen(new_certs[c.mesh].info.serial) for c, ld, _ in meshed if c.mesh),
            timeout=ROTATION_DEADLINE,
        )
        rotation_seconds = time.monotonic() - started - rotated_at
        after = {id(ld): ld.snapshot().total for ld in loads}
        await wait_until(
            lambda: all(ld.snapshot().total >= after[id(ld)] + LOAD_MIN_REQUESTS for ld in loads),
            timeout=ROTATION_DEADLINE,
        )
        for ld in loads:
            ld.stop()
        for ld in loads:
            await asyncio.to_thread(ld.join)

        rows = [
            judge(
                c,
                a,
                ld.snapshot(),
                (gateway_certs[c.mesh].info.serial, new_certs[c.mesh].info.serial)
                if c.mesh in new_certs
                else None,
            )
            for c, a, ld in zip(checks, firsts, loads, strict=True)
        ]
        final = app.pipeline.resolved or resolved
        render(rows, left_out_services(final), out)
        problems = [f"{r.check.name}: {p}" for r in rows for p in r.problems]
        missing = [m.value for m in MESHES if not any(r.check.mesh is m for r in rows)]
        if missing:
            problems.append(f"no route through mesh {', '.join(missing)} (see the diagnostics)")
        modified_after = gateway.stats().get("cluster_manager.cluster_modified")
        if modified_before is None or modified_after is None:
            modified = "unknown"
        else:
            modified = str(modified_after - modified_before)
        print("", file=out)
        print(
            "gateway identities rotated under traffic "
            f"{rotated_at:.1f} s into the demo: "
            + ", ".join(
                f"{m.value} serial {short(gateway_certs[m])} → {short(new_certs[m])}"
                for m in MESHES
            ),
            file=out,
        )
        if took_effect:
            print(
                f"every sidecar saw the new certificate within {rotation_seconds:.1f} s; "
                f"clusters modified by the rotation: {modified} (a rotation is an SDS secret "
                "update only)",
                file=out,
            )
        else:
            problems.append("not every sidecar saw the gateway's new certificate")
        reloads = ", ".join(f"{p.mesh.value} {p.reloads}" for p in providers)
        print(f"identities loaded from OUTPUT_CERTS: {reloads}", file=out)
        total = sum(r.load.total for r in rows)
        failed = sum(r.load.failed for r in rows)
        elapsed = time.monotonic() - started
        if problems or not rows:
            print(
                f"\n{sum(not r.ok for r in rows)} of {len(rows)} routes failed "
                f"({failed} of {total} requests failed); demo took {elapsed:.1f} s",
                file=out,
            )
            for line in refusal_stats(gateway, rows):
                print(line, file=out)
            if missing or not took_effect:
                print("\ngateway log:", file=out)
                print(gateway.log_tail(), file=out)
            return 1
        print(
            f"\nall {len(rows)} routes answered through the gateway: {total} requests, "
            f"0 failed, across one rotation of every mesh identity; demo took {elapsed:.1f} s",
            file=out,
        )
        return 0
    finally:
        for ld in loads:
            ld.stop()
        for ld in loads:
            await asyncio.to_thread(ld.join)
        for envoy in envoys:
            await asyncio.to_thread(envoy.stop)
        if reservation is not None:
            reservation.close()
        if app is not None:
            await app.stop(grace=0)
        for b in [*plain, *(s.backend for s in sidecars)]:
            await b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    impostor_value = os.environ.get(IMPOSTOR_ENV, "")
    try:
        impostor = Mesh(impostor_value) if impostor_value else None
    except ValueError:
        print(f"meshbridge demo: {IMPOSTOR_ENV}={impostor_value!r} is not a mesh", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(impostor=impostor))
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        return 130
    except MeshbridgeError as exc:
        print(f"meshbridge demo: {exc}", file=sys.stderr)
        return 1
