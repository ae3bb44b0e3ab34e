"""An immutable, hashable mapping for labels, annotations and data fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
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


T = TypeVar("T")


def frozen_maker(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for frozen slotted dataclass ``cls``: equal objects, faster.

    A frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__`` (a call each); hot paths that make 100k values per
    build (resolve's Routes and Upstreams, a slice's Endpoints) pay for that.
    The maker fills a mutable twin class with the very same slots (plain
    slot stores) and then hands the object over to ``cls`` by switching its
    ``__class__``, which CPython allows between classes of identical layout.
    Fields are taken in declaration order; trailing ones may be left to their
    defaults. Only for classes without ``__post_init__`` (asserted), so
    nothing ``cls(...)`` would do is skipped.
    """
    assert dataclasses.is_dataclass(cls) and not hasattr(cls, "__post_init__"), cls
    slots = cls.__dict__["__slots__"]
    fields = dataclasses.fields(cls)
    assert tuple(f.name for f in fields) == tuple(slots), cls
    twin = dataclasses.make_dataclass(
        f"_{cls.__name__}Draft",
        [
            (f.name, Any, dataclasses.field(default=f.default, default_factory=f.default_factory))
            for f in fields
        ],
        slots=True,
        eq=False,
        repr=False,
        match_args=False,
    )
    assert twin.__dict__["__slots__"] == slots, cls

    def make(*args: Any, _twin: Any = twin, _cls: type[T] = cls) -> T:
        obj = _twin(*args)
        obj.__class__ = _cls
        return obj  # type: ignore[no-any-return]

    make.__name__ = make.__qualname__ = f"make_{cls.__name__}"
    return make
