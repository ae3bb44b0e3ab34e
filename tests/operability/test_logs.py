"""Log lines: JSON or text, one per event, repeated problems rate-limited."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.logs import JsonFormatter, RateLimit, configure, scrub


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO, Clock]]:
    out = io.StringIO()
    clock = Clock()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RateLimit(60.0, clock=clock))
    log = logging.getLogger("meshbridge-test.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, out, clock
    log.removeHandler(handler)
    log.propagate = True


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_level_logger_message_and_extras(
    logger: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    log, out, _ = logger
    log.info("snapshot %d published", 7, extra={"world_version": 12, "build_ms": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("build failed")
    first, second = lines(out)
    assert first["level"] == "info" and first["logger"] == "meshbridge-test.logs"
    assert first["message"] == "snapshot 7 published"
    assert first["world_version"] == 12 and first["build_ms"] == 1.5
    assert str(first["time"]).endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in str(second["exception"])


def test_repeated_errors_are_suppressed_then_counted(
    logger: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    log, out, clock = logger
    for n in range(5):
        log.warning("node %r rejected %s", f"gw-{n}", "cluster")
        clock.now += 1
    log.warning("another problem")  # a different message is not held back
    for _ in range(3):
        log.info("routine")  # info is never suppressed
    clock.now = 61
    log.warning("node %r rejected %s", "gw-9", "cluster")
    got = lines(out)
    rejected = [g for g in got if str(g["message"]).startswith("node")]
    assert [g["message"] for g in rejected] == [
        "node 'gw-0' rejected cluster",
        "node 'gw-9' rejected cluster",
    ]
    assert "suppressed" not in rejected[0] and rejected[1]["suppressed"] == 4
    assert sum(g["message"] == "routine" for g in got) == 3
    assert any(g["message"] == "another problem" for g in got)


def test_configure_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        out = io.StringIO()
        configure("debug", "text", stream=out)
        handler = configure("info", "json", stream=out)  # replaces the text handler
        assert sum(getattr(h, "_meshbridge", False) for h in root.handlers) == 1
        logging.getLogger("bridge.test").debug("hidden")
        logging.getLogger("bridge.test").info("shown %s", "here")
        assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["shown here"]
        root.removeHandler(handler)
        with pytest.raises(ValueError, match="log format 'xml'"):
            configure("info", "xml")
    finally:
        root.setLevel(level)


def test_a_private_key_that_slips_into_a_message_is_blanked() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"
    assert scrub(f"oops {pem} done") == "oops [redacted private key] done"
    record = logging.LogRecord("x", logging.ERROR, "", 0, "key was %s", (pem,), None)
    assert "MHcCAQEEIB" not in JsonFormatter().format(record)
