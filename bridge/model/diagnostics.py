"""Diagnostics: problems found while building, kept as data on their object.

A diagnostic never stops the build of anything but the object it names.
``resolve``, ``/debug``, logs and Kubernetes Events all show the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bridge.model.k8s import ObjectRef


class Severity(StrEnum):
    ERROR = "error"  # the object (or the part named) is left out
    WARNING = "warning"  # built, but probably not what the user meant
    INFO = "info"


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """One problem: which object, which field, what is wrong, how to fix it."""

    ref: ObjectRef
    field: str  # e.g. "metadata.annotations[meshbridge.io/timeout]"
    message: str  # what is wrong, naming the bad value
    fix: str = ""  # what to do about it
    severity: Severity = Severity.ERROR
    code: str = ""  # stable machine-readable code, e.g. "annotation.invalid"

    def __str__(self) -> str:
        text = f"{self.ref}: {self.field}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


def annotation_field(key: str) -> str:
    return f"metadata.annotations[{key}]"
