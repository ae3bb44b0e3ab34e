"""meshbridge's exception tree.

Exceptions are for failures of I/O and of start-up; problems with the *content*
of the world (a bad annotation, an unknown port) are never raised — they are
:class:`bridge.model.diagnostics.Diagnostic` values attached to the object
they concern.

    MeshbridgeError
    ├── ConfigError            config file invalid (unknown key, wrong type)
    ├── SourceError            a source cannot read its input
    │   └── SourceUnavailable  temporarily unreachable (retry with backoff)
    ├── IdentityError          a certificate could not be obtained or parsed
    │   └── IdentityUnavailable  the CA is unreachable (retry; keep current cert)
    ├── ConsistencyError       a snapshot references resources it does not hold
    └── XdsError               an xDS request could not be served

Adapters wrap the exceptions of their client libraries with
``raise SourceUnavailable(...) from exc`` so callers handle one tree.
"""

from __future__ import annotations


class MeshbridgeError(Exception):
    """Base of every exception meshbridge raises on purpose."""


class ConfigError(MeshbridgeError):
    """The configuration is invalid. ``path`` names the offending key (``a.b.c``)."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class SourceError(MeshbridgeError):
    """A source could not read its input."""


class SourceUnavailable(SourceError):
    """A source is temporarily unreachable; the caller retries with backoff."""


class IdentityError(MeshbridgeError):
    """A workload certificate could not be obtained, parsed or validated."""


class IdentityUnavailable(IdentityError):
    """The mesh CA is unreachable; the current certificate stays in use."""


class ConsistencyError(MeshbridgeError):
    """A snapshot references resources it does not contain."""


class XdsError(MeshbridgeError):
    """An xDS request could not be served."""
