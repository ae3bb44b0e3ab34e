"""Load frozen model dataclasses (the IR above all) from YAML data, strictly.

Generic over the dataclasses' field names and type hints, so the golden inputs
track :mod:`bridge.model.ir` without a hand-written schema. Strict: an unknown
or misspelt key, a missing required field or a value of the wrong type fails
with :class:`LoadError` naming its path (``virtual_hosts[0].routes[1].prefx``).

Rules beyond the obvious (str, int, bool, enums by value, ``X | None``):

- ``tuple[X, ...]`` is a YAML list; ``tuple[A, B]`` a list of exactly two;
- ``Mapping[K, V]`` is a YAML list of ``V``; each item's key is its own field
  of type ``K`` (an Upstream's ``key``, a Secret's ``name``); duplicates fail;
- a union of dataclasses (``IdentitySecret | TrustSecret``) takes the one
  member whose fields the mapping fits; none or several fail;
- :class:`~bridge.model.secrets.SecretBytes` types load from a string.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

from bridge.model.frozen import FrozenDict
from bridge.model.secrets import SecretBytes

T = TypeVar("T")


class LoadError(ValueError):
    """The input does not fit the type; ``path`` says where."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path or '<root>'}: {message}")


def load(tp: type[T], data: object, path: str = "") -> T:
    """``data`` (parsed YAML) as a ``tp``, or :class:`LoadError` naming the bad path."""
    return typing.cast(T, _load(tp, data, path))


def _load(tp: Any, data: object, path: str) -> Any:
    supertype = getattr(tp, "__supertype__", None)  # a NewType
    if supertype is not None:
        return tp(_load(supertype, data, path))
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _load_union(get_args(tp), data, path)
    if origin is tuple:
        return _load_tuple(get_args(tp), data, path)
    if origin is not None and issubclass(origin, Mapping):
        key_tp, value_tp = get_args(tp)
        return _load_mapping(key_tp, value_tp, data, path)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _load_dataclass(tp, data, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        if data not in values:
            raise LoadError(path, f"{data!r} is not one of {values}")
        return tp(data)
    if isinstance(tp, type) and issubclass(tp, SecretBytes):
        if not isinstance(data, str):
            raise LoadError(path, f"expected a string, got {type(data).__name__}")
        return tp(data)
    if tp is bool:
        if not isinstance(data, bool):
            raise LoadError(path, f"expected true or false, got {data!r}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise LoadError(path, f"expected an integer, got {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise LoadError(path, f"expected a string, got {data!r} (quote it)")
        return data
    raise LoadError(path, f"the loader does not know type {tp!r}")


def _load_dataclass(cls: type[Any], data: object, path: str) -> Any:
    if not isinstance(data, dict):
        raise LoadError(path, f"expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LoadError(
            _join(path, str(unknown[0])),
            f"unknown key for {cls.__name__} (known: {', '.join(sorted(fields))})",
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _load(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise LoadError(_join(path, name), f"required by {cls.__name__} but missing")
    return cls(**kwargs)


def _load_union(members: tuple[Any, ...], data: object, path: str) -> Any:
    if data is None and type(None) in members:
        return None
    candidates = [m for m in members if m is not type(None)]
    if len(candidates) == 1:
        return _load(candidates[0], data, path)
    loaded: list[Any] = []
    errors: list[str] = []
    for member in candidates:
        try:
            loaded.append(_load(member, data, path))
        except LoadError as exc:
            errors.append(str(exc))
    if len(loaded) == 1:
        return loaded[0]
    names = " | ".join(getattr(m, "__name__", repr(m)) for m in candidates)
    if not loaded:
        raise LoadError(path, f"fits none of {names}: " + "; ".join(errors))
    raise LoadError(path, f"fits several of {names}; make it unambiguous")


def _load_tuple(args: tuple[Any, ...], data: object, path: str) -> tuple[Any, ...]:
    if not isinstance(data, list):
        raise LoadError(path, f"expected a list, got {data!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_load(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
    if len(data) != len(args):
        raise LoadError(path, f"expected a list of {len(args)} items, got {len(data)}")
    return tuple(
        _load(a, item, f"{path}[{i}]") for i, (a, item) in enumerate(zip(args, data, strict=True))
    )


def _load_mapping(key_tp: Any, value_tp: Any, data: object, path: str) -> FrozenDict[Any, Any]:
    if not isinstance(data, list):
        raise LoadError(path, f"expected a list (keys come from each item), got {data!r}")
    out: dict[Any, Any] = {}
    for i, item in enumerate(data):
        value = _load(value_tp, item, f"{path}[{i}]")
        key = _key_of(value, key_tp, f"{path}[{i}]")
        if key in out:
            raise LoadError(f"{path}[{i}]", f"duplicate key {key!r}")
        out[key] = value
    return FrozenDict(out)


def _key_of(value: Any, key_tp: Any, path: str) -> Any:
    hints = typing.get_type_hints(type(value))
    matching = [f.name for f in dataclasses.fields(value) if hints[f.name] == key_tp]
    if len(matching) != 1:
        raise LoadError(path, f"cannot tell which field of {type(value).__name__} is its key")
    return getattr(value, matching[0])


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
