"""Copy-on-write sharded maps: evolve behaves as a dict update, changed_since finds every change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.model.sharded import ShardedMap

keys = st.integers(min_value=0, max_value=2000)
values = st.sampled_from([object() for _ in range(4)])


@given(
    start=st.dictionaries(keys, values, max_size=300),
    updates=st.dictionaries(keys, values, max_size=40),
    removals=st.lists(keys, max_size=40),
)
def test_evolve_is_a_dict_update_and_changed_since_finds_exactly_the_changes(
    start: dict[int, object], updates: dict[int, object], removals: list[int]
) -> None:
    base = ShardedMap.of(start.items())
    new = base.evolve(updates, removals)

    expected = dict(start)
    expected.update(updates)
    for k in removals:
        expected.pop(k, None)
    assert dict(new.items()) == expected
    assert len(new) == len(expected)
    assert dict(base.items()) == start  # the old version is untouched

    changed = new.changed_since(base)
    assert len(changed) == len(set(changed))
    naive = {k for k in expected.keys() | start.keys() if expected.get(k) is not start.get(k)}
    assert set(changed) == naive
    assert set(base.changed_since(new)) == naive


def test_a_small_change_shares_every_other_shard() -> None:
    base = ShardedMap.of((i, str(i)) for i in range(10_000))
    new = base.evolve({5: "five"})
    shared = sum(a is b for a, b in zip(new._shards, base._shards, strict=True))
    assert shared == len(base._shards) - 1
    assert new.changed_since(base) == [5]
    assert base.evolve({}) is base
    assert base.evolve({}, [123_456]) is base  # removing an absent key changes nothing
