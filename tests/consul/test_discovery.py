"""Discovery for resolver ``consul``: py-consul over a socket to the Consul stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.consul.client import Backoff, BlockingIndex, ConsulClient, build_ssl_context
from adapters.consul.discovery import ConsulDiscovery
from adapters.consul.settings import ConsulClientSettings
from bridge.errors import ConfigError
from bridge.model.consul import ConsulServiceKey
from bridge.model.secrets import SecretBytes
from bridge.store import Store
from tests.consul.conftest import fast_settings
from tests.consul.tls import make_tls
from tests.standins.consul_agent import ConsulAgent
from tests.support.wait import async_wait_for

WEB = ConsulServiceKey("dc1", "web")


def addrs(store: Store, key: ConsulServiceKey) -> list[tuple[str, int]]:
    world, _ = store.take()
    svc = world.consul_services.get(key)
    return [] if svc is None else [(i.address, i.port) for i in svc.instances]


def health_requests(agent: ConsulAgent, service: str = "web") -> list[dict[str, str]]:
    return [
        r.query
        for r in agent.requests
        if r.path in (f"/v1/health/service/{service}", f"/v1/health/connect/{service}")
    ]


async def test_passing_instances_only_with_node_address_fallback(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)  # no Service.Address: Node.Address
    agent.register("n2", "10.0.0.2", "web", 8080, service_address="10.1.0.2")
    agent.register("n3", "10.0.0.3", "web", 8080, status="critical")
    agent.register("n4", "10.0.0.4", "web", 8080, status="warning")
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: store.synced, what="first answer")
        world, _ = store.take()
        svc = world.consul_services[WEB]
        assert [(i.address, i.port, i.node) for i in svc.instances] == [
            ("10.0.0.1", 8080, "n1"),
            ("10.1.0.2", 8080, "n2"),
        ]
        assert svc.total == 4


async def test_all_unhealthy_gives_empty_set_and_total(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    sid = agent.register("n1", "10.0.0.1", "web", 8080)
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: addrs(store, WEB) == [("10.0.0.1", 8080)])
        agent.set_check_status("n1", sid, "critical")
        await async_wait_for(lambda: addrs(store, WEB) == [], what="instance dropped")
        world, _ = store.take()
        assert world.consul_services[WEB].total == 1


async def test_connect_key_lists_sidecar_proxies(agent: ConsulAgent, client: ConsulClient) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    agent.register(
        "n1", "10.0.0.1", "web-sidecar-proxy", 21000, kind="connect-proxy", destination="web"
    )
    key = ConsulServiceKey("dc1", "web", connect=True)
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set({key, WEB})
        await async_wait_for(lambda: addrs(store, key) == [("10.0.0.1", 21000)])
        assert addrs(store, WEB) == [("10.0.0.1", 8080)]
    assert any(r.path == "/v1/health/connect/web" for r in agent.requests)


async def test_one_watch_per_key_and_dropped_keys_are_forgotten(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    agent.register("n1", "10.0.0.1", "api", 9090)
    api = ConsulServiceKey("dc1", "api")
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set([WEB, WEB, api])
        disc.watch_set([WEB, api])  # the same set again: nothing restarts
        await async_wait_for(lambda: addrs(store, api) and addrs(store, WEB))
        first_web = len(health_requests(agent))
        assert first_web == 1, "one initial read for web, however often it is asked for"
        disc.watch_set([WEB])
        assert disc.keys == {WEB}
        world, _ = store.take()
        assert api not in world.consul_services


async def test_blocking_queries_carry_index_and_wait_and_survive_no_change_answers(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: addrs(store, WEB))
        version = store.take()[0].version
        for _ in range(3):  # changes elsewhere in the table: answers that change nothing
            n = len(health_requests(agent))
            agent.touch_catalog()
            await async_wait_for(lambda n=n: len(health_requests(agent)) > n + 0)
        assert store.take()[0].version == version
        queries = health_requests(agent)
        assert "index" not in queries[0]
        for q in queries[1:]:
            assert int(q["index"]) >= 1
            assert q["wait"] == "5s"
        assert all("passing" not in q and "ns" not in q for q in queries)


async def test_index_going_backwards_resets_to_zero_then_blocks_again(
    agent: ConsulAgent, client: ConsulClient
) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    for i in range(20):
        agent.touch_catalog()
        del i
    store = Store()
    async with ConsulDiscovery(client, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: len(health_requests(agent)) >= 2, what="a blocking call")
        high = int(health_requests(agent)[-1]["index"])
        assert high > 5
        agent.restore_snapshot(index=3)
        # The next calls: one non-blocking read (index 0 → no index param) then blocking
        # on the restored index, so a change after the restore is seen at once.
        await async_wait_for(
            lambda: any(int(q.get("index", "0")) == 3 for q in health_requests(agent)),
            what="blocking on the restored index",
        )
        after = health_requests(agent)
        pos = next(i for i, q in enumerate(after) if q.get("index") == str(high))
        assert "index" not in after[pos + 1], "index reset to 0 after going backwards"
        agent.register("n2", "10.0.0.2", "web", 8080)
        await async_wait_for(
            lambda: addrs(store, WEB) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)], timeout=3
        )


async def test_loop_is_rate_limited_under_churn(agent: ConsulAgent) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    settings = fast_settings(agent, min_interval_s=0.25)
    store = Store()
    async with ConsulClient(settings) as c, ConsulDiscovery(c, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: addrs(store, WEB))
        loop = asyncio.get_running_loop()
        start_n, start_t = len(health_requests(agent)), loop.time()
        while loop.time() - start_t < 1.0:  # a change every 10 ms for a second
            agent.touch_catalog()
            await asyncio.sleep(0.01)
        made = len(health_requests(agent)) - start_n
        elapsed = loop.time() - start_t
    assert made <= elapsed / 0.25 + 2, f"{made} calls in {elapsed:.2f}s"


async def test_unavailable_keeps_last_instances_then_resyncs(agent: ConsulAgent) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    store = Store()
    async with ConsulClient(fast_settings(agent)) as c, ConsulDiscovery(c, store) as disc:
        disc.watch_set({WEB})
        await async_wait_for(lambda: addrs(store, WEB) == [("10.0.0.1", 8080)])
        await agent.go_down()
        agent.register("n2", "10.0.0.2", "web", 8080)  # changes while unreachable

        def diagnosed() -> bool:
            world, _ = store.take()
            return any(d.code == "consul.unavailable" for d in world.source_diagnostics)

        await async_wait_for(diagnosed, what="unavailable diagnostic")
        assert addrs(store, WEB) == [("10.0.0.1", 8080)], "last known instances kept"
        await agent.come_up()
        await async_wait_for(
            lambda: addrs(store, WEB) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)],
            what="resync after the agent is back",
        )
        await async_wait_for(lambda: not diagnosed(), what="diagnostic cleared")


async def test_acl_token_only_in_header_and_env_token_does_not_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "wrong-from-env")
    async with ConsulAgent(acl_tokens={"s3cret"}) as agent:
        agent.register("n1", "10.0.0.1", "web", 8080)
        store = Store()
        settings = fast_settings(agent, token=SecretBytes("s3cret"))
        async with ConsulClient(settings) as c, ConsulDiscovery(c, store) as disc:
            disc.watch_set({WEB})
            await async_wait_for(lambda: addrs(store, WEB))
        assert agent.token_params == []
        assert all(r.headers.get("X-Consul-Token") == "<set>" for r in agent.requests)
        assert all(r.status == 200 for r in agent.requests)


async def test_acl_denied_is_a_diagnostic_naming_the_permission() -> None:
    async with ConsulAgent(acl_tokens={"s3cret"}) as agent:
        store = Store()
        async with ConsulClient(fast_settings(agent)) as c, ConsulDiscovery(c, store) as disc:
            disc.watch_set({WEB})
            await async_wait_for(lambda: store.synced)
            world, _ = store.take()
            (diag,) = world.source_diagnostics
            assert diag.code == "consul.acl_denied"
            assert "service:read" in diag.fix
            assert "s3cret" not in str(diag)


async def test_namespace_is_sent_only_when_configured(agent: ConsulAgent) -> None:
    agent.register("n1", "10.0.0.1", "web", 8080)
    store = Store()
    async with (
        ConsulClient(fast_settings(agent, namespace="team-a")) as c,
        ConsulDiscovery(c, store) as disc,
    ):
        disc.watch_set({WEB})
        await async_wait_for(lambda: store.synced)
        world, _ = store.take()
        assert [d.code for d in world.source_diagnostics] == ["consul.bad_request"]
        assert "Enterprise" in world.source_diagnostics[0].fix


async def test_enterprise_accepts_namespace() -> None:
    async with ConsulAgent(enterprise=True) as agent:
        agent.register("n1", "10.0.0.1", "web", 8080, namespace="team-a")
        agent.register("n2", "10.0.0.2", "web", 8080)  # in "default": not listed
        store = Store()
        async with (
            ConsulClient(fast_settings(agent, namespace="team-a")) as c,
            ConsulDiscovery(c, store) as disc,
        ):
            disc.watch_set({WEB})
            await async_wait_for(lambda: addrs(store, WEB) == [("10.0.0.1", 8080)])
        assert all(q.get("ns") == "team-a" for q in health_requests(agent))


async def test_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    async with ConsulAgent(ssl_context=tls.server_context()) as agent:
        agent.register("n1", "10.0.0.1", "web", 8080)
        store = Store()
        settings = fast_settings(
            agent,
            ca_file=str(tls.ca),
            cert_file=str(tls.client_cert),
            key_file=str(tls.client_key),
        )
        async with ConsulClient(settings) as c, ConsulDiscovery(c, store) as disc:
            disc.watch_set({WEB})
            await async_wait_for(lambda: addrs(store, WEB) == [("10.0.0.1", 8080)])
        # Without the client certificate the agent refuses the handshake.
        store2 = Store()
        no_cert = fast_settings(agent, ca_file=str(tls.ca))
        async with ConsulClient(no_cert) as c, ConsulDiscovery(c, store2) as disc:
            disc.watch_set({WEB})
            await async_wait_for(lambda: store2.synced)
            world, _ = store2.take()
            assert [d.code for d in world.source_diagnostics] == ["consul.unavailable"]
            assert WEB not in world.consul_services


async def test_read_timeout_exceeds_wait_plus_maximum_jitter() -> None:
    # The agent always adds the full wait/16: a client timing out at `wait` would fail.
    async with ConsulAgent(jitter=lambda w: w / 16) as agent:
        agent.register("n1", "10.0.0.1", "web", 8080)
        store = Store()
        async with (
            ConsulClient(fast_settings(agent, wait_s=1.0)) as c,
            ConsulDiscovery(c, store) as disc,
        ):
            disc.watch_set({WEB})
            await async_wait_for(lambda: len(health_requests(agent)) >= 3, timeout=5)
            world, _ = store.take()
            assert world.source_diagnostics == ()
        assert [q.get("wait") for q in health_requests(agent)[1:3]] == ["1s", "1s"]


@pytest.mark.parametrize(
    ("address", "expect"),
    [
        pytest.param("consul:8501", ("consul", 8501, "http"), id="host-port"),
        pytest.param(
            "https://consul.example:443", ("consul.example", 443, "https"), id="scheme-in-address"
        ),
        pytest.param("https://consul.example", ("consul.example", 8501, "https"), id="https-port"),
    ],
)
def test_settings_address_forms(address: str, expect: tuple[str, int, str]) -> None:
    s = ConsulClientSettings().with_overrides(address=address, token="t", datacenter=None)
    assert (s.host, s.port, s.scheme) == expect
    assert s.token == SecretBytes("t") and "'t'" not in repr(s)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        pytest.param({"cert_file": "/etc/c.pem"}, "consul.tls.key_file", id="cert-without-key"),
        pytest.param({"key_file": "/etc/k.pem"}, "consul.tls.cert_file", id="key-without-cert"),
        pytest.param({"address": "unix:///run/consul.sock"}, "consul.address", id="unix-socket"),
        pytest.param({"scheme": "ftp"}, "consul.address", id="bad-scheme"),
    ],
)
def test_settings_errors_name_the_config_key(values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ConsulClientSettings().with_overrides(**values)
    assert err.value.path == key and str(err.value).startswith(f"{key}: ")


def test_unreadable_tls_file_names_its_config_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    s = ConsulClientSettings(scheme="https", ca_file=missing)
    with pytest.raises(ConfigError) as err:
        build_ssl_context(s)
    assert err.value.path == "consul.tls.ca_file" and "nope.pem" in str(err.value)


@pytest.mark.parametrize(
    ("answers", "expect"),
    [
        pytest.param([None], 0, id="no-header"),
        pytest.param([0], 1, id="zero-clamped-to-one"),
        pytest.param([10, 12], 12, id="forward"),
        pytest.param([10, 4], 0, id="backwards-resets"),
        pytest.param([10, 4, 4], 4, id="then-follows-again"),
    ],
)
def test_blocking_index_rules(answers: list[int | None], expect: int) -> None:
    idx = BlockingIndex()
    for a in answers:
        idx.update(a)
    assert idx.value == expect


def test_backoff_grows_with_jitter_to_a_cap() -> None:
    b = Backoff(0.5, 4.0)
    delays = [b.next_delay() for _ in range(8)]
    assert 0.25 <= delays[0] <= 0.5
    assert 0.5 <= delays[1] <= 1.0
    assert all(2.0 <= d <= 4.0 for d in delays[4:])
    b.reset()
    assert b.next_delay() <= 0.5
