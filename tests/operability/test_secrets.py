"""Planted private keys and tokens appear in no log, page, metric, error or repr.

The test world (tests/operability/support.py) carries a private key on every
identity path — the files:DIR provider, the Istio CA provider, a mesh
IdentitySecret put into the store — plus a Consul token in the config file
and bearer tokens (a forged one the istiod stand-in refuses, then valid ones).
First the test proves the secrets really flow (the snapshot served to Envoy
holds the keys), then it looks for every one of them, in every encoding they
could take, in everything an operator or a log pipeline can see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.config import Config, load_config
from bridge.errors import ConfigError, IdentityError
from bridge.identity.tokens import FileTokenSource
from bridge.logs import JsonFormatter, TextFormatter
from bridge.model.ir import Resolved
from bridge.model.k8s import ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.pipeline import ResolveFn, default_resolve
from bridge.xds.resources import SECRET
from tests.operability.support import Planted, Running, leaks, running_bridge

# Every form of the admin pages, the query forms of /debug/snapshot.json included.
SECRET_FORMS = (
    "/debug/snapshot.json?type=secrets",
    "/debug/snapshot.json?type=secret&name=identity",
    "/debug/snapshot.json?name=istio",
    "/debug/snapshot.json?name=/",
)
PAGES = (
    "/debug",
    "/debug?q=istio",
    "/debug/snapshot.json",
    "/debug/snapshot.json?type=clusters",
    "/debug/snapshot.json?type=listeners",
    *SECRET_FORMS,
    "/metrics",
)


def failing_resolve(flag: dict[str, bool]) -> Callable[[Config], ResolveFn]:
    """The real resolver, except that it fails while ``flag["fail"]`` — with a
    message made from the reprs of the world's secrets and the config."""

    def wrap(config: Config) -> ResolveFn:
        real = default_resolve()

        def resolve(
            world: World,
            settings: ResolveSettings,
            previous: Resolved | None,
            changed: frozenset[ObjectRef],
        ) -> Resolved:
            if flag["fail"]:
                raise RuntimeError(
                    f"cannot resolve with secrets {dict(world.mesh_secrets)!r} "
                    f"and config {config!r}"
                )
            return real(world, settings, previous, changed)

        return resolve

    return wrap


def assert_clean(where: str, text: str | bytes, planted: Planted) -> None:
    found = leaks(text, planted)
    assert not found, f"{where} shows {found}"


def test_the_leak_finder_finds_each_secret_in_each_form() -> None:
    """The check below could fail: each planted secret is found when present."""
    planted = Planted(
        keys={
            "k": b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
            b"-----END PRIVATE KEY-----\n"
        },
        tokens={"t": b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"},
    )
    assert leaks("x MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg y", planted) == ["key k"]
    assert leaks(
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU", planted
    ) == ["t"]
    assert leaks("sig c2lnbmF0dXJlLWJ5dGVzLWhlcmU only", planted) == ["t"]
    assert leaks("nothing here", planted) == []


async def test_planted_keys_and_tokens_leave_no_trace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    flag = {"fail": False}
    async with running_bridge(tmp_path, wrap_resolve=failing_resolve(flag)) as env:
        planted = env.planted
        assert len(planted.keys) == 3 and len(planted.tokens) >= 3, planted.all().keys()

        # The secrets do flow: Envoy would be served each key over SDS.
        snap = env.app.publisher.snapshot
        assert snap is not None
        served = b"".join(e.any_bytes for e in snap.entries(SECRET).values())
        for name, key in planted.keys.items():
            assert key in served, f"{name} is not served: the test would prove nothing"
        assert env.tokens.given[0] == planted.tokens["forged istio bearer token"]

        # A build fails with a message built from reprs of the secrets and the config.
        before = env.app.pipeline.attempts
        flag["fail"] = True
        (env.world / "web-slice.yaml").write_text(
            (env.world / "web-slice.yaml").read_text().replace("8080", "8081")
        )
        await _wait(lambda: env.app.pipeline.last_error is not None)
        assert env.app.pipeline.attempts > before
        error = env.app.pipeline.last_error
        assert error is not None and "PrivateKey([redacted])" in error.message
        assert "SecretBytes([redacted])" in error.message  # the Consul token, hidden

        pages = {path: await env.get(path) for path in PAGES}
        for path, (status, _, body) in pages.items():
            assert status == 200, path
            assert_clean(path, body, planted)
        # The JSON forms that render secrets in full do hold them, redacted.
        for path in SECRET_FORMS:
            body = pages[path][2]
            assert b'"identity/istio"' in body and b'"redacted": true' in body, path
            assert b"BEGIN CERTIFICATE" not in body, path  # certificates as summaries
        assert b"cannot resolve with secrets" in pages["/debug"][2]  # the error is shown

        assert_clean("the failed build's message", error.message, planted)
        for st in env.app.identities():
            assert_clean(f"identity status {st.mesh}", repr(st), planted)
        for d in env.app.diagnostics():
            assert_clean(f"diagnostic {d.ref}", str(d), planted)
        _assert_reprs_clean(env, planted)
        flag["fail"] = False

    # The Istio CA refused the forged token: that path ran and was logged.
    assert any("rejected" in r.getMessage() for r in caplog.records), "no rejection logged"
    _assert_logs_clean(caplog.records, planted)


def _assert_reprs_clean(env: Running, planted: Planted) -> None:
    app = env.app
    objects: dict[str, object] = {
        "config": env.config,
        "consul config": env.config.consul,
        "world": app.pipeline.world,
        "mesh secrets": dict(app.pipeline.world.mesh_secrets) if app.pipeline.world else {},
        "resolved": app.pipeline.resolved,
        "translation": app.pipeline.translation,
        "resources": app.pipeline.translation.resources if app.pipeline.translation else None,
        "builds": list(app.pipeline.builds),
        "istio material": env.istio.current,
    }
    for what, obj in objects.items():
        assert_clean(f"repr({what})", repr(obj), planted)
        assert_clean(f"str({what})", str(obj), planted)


def _assert_logs_clean(records: list[logging.LogRecord], planted: Planted) -> None:
    assert records, "nothing was logged: the check would prove nothing"
    text, js = TextFormatter(), JsonFormatter()
    for r in records:
        for line in (r.getMessage(), text.format(r), js.format(r)):
            assert_clean(f"log record {r.name}: {r.msg!r}", line, planted)


async def test_repr_of_the_snapshot_hides_keys(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as env:
        snap = env.app.publisher.snapshot
        assert_clean("repr(snapshot)", repr(snap), env.planted)


async def test_config_and_token_errors_do_not_quote_secrets(tmp_path: Path) -> None:
    token = "s3cr3t-consul-token-" + "ab" * 12
    planted = Planted(tokens={"consul token": token.encode()})
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"consul:\n  token: {token}\n  tokne: {token}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad, env={})
    assert "tokne" in str(exc.value)
    assert_clean("ConfigError", str(exc.value), planted)
    wrong = tmp_path / "wrong-type.yaml"
    wrong.write_text(f"consul:\n  token: [{token}]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(wrong, env={})
    assert_clean("ConfigError (wrong type)", str(exc.value), planted)
    env_config = load_config(None, env={"CONSUL_HTTP_TOKEN": token})
    assert env_config.consul.token is not None
    assert_clean("repr(config from env)", repr(env_config), planted)

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ." + "Zm9yZ2VkLXNpZ25hdHVyZS1ieXRlcw"
    planted.tokens["bearer token file"] = jwt.encode()
    path = tmp_path / "token"
    path.write_text(jwt)
    with pytest.raises(IdentityError) as err:
        await FileTokenSource(path, "istio-ca").token("identity.l5d.io")
    assert_clean("token source error", str(err.value), planted)
    tok = await FileTokenSource(path, "istio-ca").token("istio-ca")
    assert_clean("repr(token)", repr(tok) + str(tok) + f"{tok}", planted)


async def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    from tests.support.wait import async_wait_for

    await async_wait_for(cond, timeout=timeout, what="the condition")
