"""Copy-on-write maps: a new frozen version costs in proportion to the change.

The store keeps every kind of object in a :class:`ShardedBuilder`; each batch
it calls :meth:`ShardedBuilder.freeze`, which shares every shard untouched
since the previous freeze with that previous version and copies only the
shards written in between. With 256 shards, one EndpointSlice change in a
100k-entry map copies one ~400-entry shard instead of the whole map.

Iteration order is by shard, then insertion: deterministic within a process
but not sorted. Callers that need an order sort (as ``resolve`` does).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from itertools import chain, compress
from operator import is_not
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")

_BITS = 8
_SHARDS = 1 << _BITS
_MASK = _SHARDS - 1


class ShardedMap(Mapping[K, V]):
    """An immutable mapping whose shards may be shared with other versions."""

    __slots__ = ("_len", "_shards")

    def __init__(self, shards: list[dict[K, V]], length: int) -> None:
        self._shards = shards
        self._len = length

    @classmethod
    def of(cls, items: Iterable[tuple[K, V]]) -> ShardedMap[K, V]:
        """A new map of ``items`` (a later duplicate key wins), sharing nothing."""
        shards: list[dict[K, V]] = [{} for _ in range(_SHARDS)]
        for key, value in items:
            shards[hash(key) & _MASK][key] = value
        return cls(shards, sum(map(len, shards)))

    def evolve(self, updates: Mapping[K, V], removals: Iterable[K] = ()) -> ShardedMap[K, V]:
        """A new version: ``updates`` set, ``removals`` deleted (absent keys ignored).

        Shares every shard neither touches with this version, so the cost is
        in proportion to the change (one ~size/256-entry shard copy per touched
        shard), not to the size of the map. ``self`` is unchanged.
        """
        shards = list(self._shards)
        owned: set[int] = set()
        length = self._len
        for key, value in updates.items():
            i = hash(key) & _MASK
            if i not in owned:
                shards[i] = dict(shards[i])
                owned.add(i)
            shard = shards[i]
            if key not in shard:
                length += 1
            shard[key] = value
        for key in removals:
            i = hash(key) & _MASK
            if key not in shards[i]:
                continue
            if i not in owned:
                shards[i] = dict(shards[i])
                owned.add(i)
            del shards[i][key]
            length -= 1
        if not owned:
            return self
        return ShardedMap(shards, length)

    def changed_since(self, base: ShardedMap[K, V]) -> list[K]:
        """Keys added, removed, or whose value *is not* ``base``'s, in no set order.

        Shards shared with ``base`` (the same dict object: neither map was
        written there since one was made from the other with :meth:`evolve`)
        are skipped by one identity comparison each, so two versions a small
        change apart are compared in time proportional to that change.
        """
        if base is self:
            return []
        out: list[K] = []
        mine, theirs = self._shards, base._shards
        for i in compress(range(_SHARDS), map(is_not, mine, theirs)):
            new, old = mine[i], theirs[i]
            get = old.get
            out.extend(k for k, v in new.items() if get(k, _MISSING) is not v)
            out.extend(k for k in old if k not in new)
        return out

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _MASK][key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._shards[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def get_many(self, keys: Iterable[K]) -> list[V | None]:
        """``[self.get(k) for k in keys]`` without a Python call per key."""
        shards = self._shards
        return [shards[hash(k) & _MASK].get(k) for k in keys]

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    # The Mapping mixins fetch each value through __getitem__ in Python (two
    # Python-level hashes of the key); these walk the shards' own dicts in C.
    def values(self) -> ValuesView[V]:
        return _ShardedValues(self)

    def items(self) -> ItemsView[K, V]:
        return _ShardedItems(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ShardedMap):
            if self._shards is other._shards:
                return True
            return self._len == other._len and all(
                a is b or a == b for a, b in zip(self._shards, other._shards, strict=True)
            )
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardedMap({self._len} entries)"


_MISSING: object = object()


class _ShardedValues(ValuesView[V]):
    __slots__ = ()
    _mapping: ShardedMap[object, V]

    def __iter__(self) -> Iterator[V]:
        return chain.from_iterable(shard.values() for shard in self._mapping._shards)


class _ShardedItems(ItemsView[K, V]):
    __slots__ = ()
    _mapping: ShardedMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return chain.from_iterable(shard.items() for shard in self._mapping._shards)


class ShardedBuilder(Generic[K, V]):
    """The mutable side: writes go to private copies of shared shards."""

    __slots__ = ("_len", "_owned", "_shards")

    def __init__(self) -> None:
        self._shards: list[dict[K, V]] = [{} for _ in range(_SHARDS)]
        self._owned = [True] * _SHARDS  # False: shared with a frozen version
        self._len = 0

    def _shard_for_write(self, key: K) -> dict[K, V]:
        i = hash(key) & _MASK
        if not self._owned[i]:
            self._shards[i] = dict(self._shards[i])
            self._owned[i] = True
        return self._shards[i]

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: V) -> V: ...
    def get(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __len__(self) -> int:
        return self._len

    def __setitem__(self, key: K, value: V) -> None:
        shard = self._shard_for_write(key)
        if key not in shard:
            self._len += 1
        shard[key] = value

    def pop(self, key: K, default: V | None = None) -> V | None:
        i = hash(key) & _MASK
        if key not in self._shards[i]:
            return default
        self._len -= 1
        return self._shard_for_write(key).pop(key)

    def freeze(self) -> ShardedMap[K, V]:
        """A frozen version; later writes copy the shards they touch first."""
        self._owned = [False] * _SHARDS
        return ShardedMap(list(self._shards), self._len)
