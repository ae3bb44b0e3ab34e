"""Log output for ``meshbridge serve``: text or JSON lines, repeated problems rate-limited.

:func:`configure` installs one handler on the root logger:

- ``text``: ``2025-01-02T03:04:05.678Z WARNING bridge.server.ads: message``;
- ``json``: one object per line with ``time`` (RFC 3339, UTC), ``level``,
  ``logger``, ``message``, every ``extra=`` field the call passed, and
  ``exception`` (the formatted traceback) when there is one.

One line per meaningful event is the callers' habit (a snapshot published, a
stream opened, a NACK); this module keeps repeats from flooding: a warning or
error with the same logger and message template as one emitted less than
``window`` seconds ago is suppressed, and the next one let through after the
window says how many were (``suppressed`` in JSON, "(N similar suppressed)"
in text). Info and debug lines are never suppressed.

Key material must never reach a log line; the types in
:mod:`bridge.model.secrets` make sure of that at the source. As a last line
of defence the formatters also blank any PEM private-key block that slips
into a message or traceback. This module writes only to the given stream.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

FORMATS = ("text", "json")
DEFAULT_WINDOW = 60.0

_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL
)
# Attributes every LogRecord has: anything else came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "suppressed", "taskName"}
)


def scrub(text: str) -> str:
    """``text`` with any PEM private-key block replaced by ``[redacted private key]``."""
    if "PRIVATE KEY-----" not in text:
        return text
    return _PEM_KEY.sub("[redacted private key]", text)


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message [key=value ...] [(N similar suppressed)]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line += f" ({suppressed} similar suppressed)"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return scrub(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            doc["suppressed"] = suppressed
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(doc, default=str, ensure_ascii=False))


@dataclass(slots=True)
class _Seen:
    since: float
    suppressed: int = 0


class RateLimit(logging.Filter):
    """Suppress repeats of a warning or error within ``window`` seconds; count them.

    Two records are "the same" when logger, level and message template
    (``record.msg``, before arguments are filled in) agree.
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        super().__init__()
        self.window = window
        self.level = level
        self._clock = clock
        self._max_keys = max_keys
        self._seen: dict[tuple[str, int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self.window:
            seen.suppressed += 1
            return False
        if seen is not None and seen.suppressed:
            record.suppressed = seen.suppressed
        self._seen[key] = _Seen(now)
        if len(self._seen) > self._max_keys:
            self._seen = {k: s for k, s in self._seen.items() if now - s.since < self.window}
        return True


def configure(
    level: str | int = "info",
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    window: float = DEFAULT_WINDOW,
) -> logging.Handler:
    """Send every log record at ``level`` and above to ``stream`` (stderr) as ``fmt``.

    Replaces handlers installed by an earlier call, so it can be called again.
    Returns the handler (tests read what it wrote).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimit(window))
    handler._meshbridge = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_meshbridge", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # grpc and asyncio are chatty at debug level; their warnings still come through.
    for noisy in ("grpc", "asyncio", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    return handler
