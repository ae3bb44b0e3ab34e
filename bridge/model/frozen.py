"""An immutable, hashable mapping for labels, annotations and data fields."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V]):
    """A read-only dict that hashes by content (so frozen dataclasses holding it hash)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | None = None, /) -> None:
        self._data: dict[K, V] = dict(data) if data else {}
        self._hash: int | None = None

    @classmethod
    def adopt(cls, data: dict[K, V], /) -> FrozenDict[K, V]:
        """Wrap ``data`` without copying it; the caller must never mutate it again.

        For large maps rebuilt per change (10k Services): a copy costs more
        than the change itself.
        """
        self = cls.__new__(cls)
        self._data = data
        self._hash = None
        return self

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins go through __getitem__ in Python per key; these hand
    # out the dict's own C-speed views (translation walks 10k-entry maps).
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


EMPTY: FrozenDict[Any, Any] = FrozenDict()


def freeze(data: Mapping[str, str] | None) -> FrozenDict[str, str]:
    """Freeze a wire mapping (``None`` → the shared empty map)."""
    if not data:
        return EMPTY
    return FrozenDict({str(k): str(v) for k, v in data.items()})
