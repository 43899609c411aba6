"""Member / non-member splits: disjointness, groups, canaries always members, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from glmjax.data.splits import make_split, split_store
from glmjax.data.store import Record, SequenceStore, SequenceStoreWriter
from glmjax.errors import ConfigError


def store_with(path, n=100, groups=10, canary_rows=(), group_of=None):
    recs = []
    for i in range(n):
        canary = f"canary-{i:04d}" if i in canary_rows else ""
        group = group_of(i) if group_of else f"ind{i % groups}"
        recs.append(Record(id=f"r{i}", codes=np.zeros(5, np.uint8), source=f"src{i % 4}",
                           kind="canary" if canary else "genome", canary=canary, group=group))
    with SequenceStoreWriter(path) as w:
        w.add(recs)
    return path


def test_record_split_is_a_partition_with_the_requested_fraction(tmp_path):
    with SequenceStore(store_with(tmp_path / "s.h5", n=101)) as st:
        member, info = make_split(st, 0.3, seed=1)
    assert member.dtype == bool and member.shape == (101,)
    members, non = set(np.flatnonzero(member)), set(np.flatnonzero(~member))
    assert members.isdisjoint(non) and members | non == set(range(101))
    assert len(members) == round(0.3 * 101) == info["members"]
    assert info["non_members"] == 101 - info["members"]


def test_seeds(tmp_path):
    with SequenceStore(store_with(tmp_path / "s.h5")) as st:
        a, _ = make_split(st, 0.5, seed=1)
        b, _ = make_split(st, 0.5, seed=1)
        c, _ = make_split(st, 0.5, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_canary_rows_are_always_members(tmp_path):
    canary_rows = set(range(90, 100)) | {3, 50}
    with SequenceStore(store_with(tmp_path / "s.h5", canary_rows=canary_rows)) as st:
        for seed in range(5):
            member, info = make_split(st, 0.2, seed=seed)
            assert member[sorted(canary_rows)].all()
            free = np.setdiff1d(np.arange(100), sorted(canary_rows))
            assert member[free].sum() == round(0.2 * free.size)
            assert info["canary_rows"] == len(canary_rows)


@pytest.mark.parametrize("by", ["group", "source"])
def test_group_split_keeps_each_group_on_one_side(tmp_path, by):
    # standalone canaries have no group: they are their own units, and members
    path = store_with(tmp_path / "s.h5", n=120, groups=12, canary_rows={118, 119},
                      group_of=lambda i: "" if i >= 118 else f"ind{i % 12}")
    with SequenceStore(path) as st:
        member, info = make_split(st, 0.5, seed=3, by=by)
        col = st.column(by)
    units = {}
    for g, m in zip(col.tolist(), member.tolist(), strict=True):
        if g:
            units.setdefault(g, set()).add(m)
    assert all(len(sides) == 1 for sides in units.values())  # no group on both sides
    assert member[[118, 119]].all()
    sides = [next(iter(s)) for s in units.values()]
    assert 0 < sum(sides) < len(sides)
    assert info["by"] == by


def test_group_containing_a_spliced_canary_is_a_member(tmp_path):
    with SequenceStore(store_with(tmp_path / "s.h5", n=60, groups=6, canary_rows={7})) as st:
        member, _ = make_split(st, 0.5, seed=0, by="group")
        groups = st.column("group")
    assert member[groups == groups[7]].all()
    assert not member.all()


def test_errors(tmp_path):
    with SequenceStore(store_with(tmp_path / "s.h5", n=10, group_of=lambda i: "" if i == 4 else "a")) as st:
        for f in (0.0, 1.0, -0.1, 1.5):
            with pytest.raises(ConfigError, match="strictly between 0 and 1"):
                make_split(st, f, seed=0)
        with pytest.raises(ConfigError, match="1 rows .* have no group"):
            make_split(st, 0.5, seed=0, by="group")
        with pytest.raises(ConfigError, match="--by must be one of"):
            make_split(st, 0.5, seed=0, by="colour")
        with pytest.raises(ConfigError, match="leaves one side empty"):
            make_split(st, 0.01, seed=0)


def test_split_store_writes_the_split(tmp_path):
    path = store_with(tmp_path / "s.h5")
    info = split_store(path, 0.25, seed=9)
    with SequenceStore(path) as st:
        mask = st.member_mask()
        stored = st.split_info()
    assert mask.sum() == 25 == info["members"]
    assert stored["seed"] == 9 and stored["by"] == "record" and stored["member_fraction"] == 0.25
    assert stored["provenance"]["seed"] == 9
