"""Seeded member / non-member splits of a SequenceStore, by row or by group.

A split decides which rows are training data (members) and which are held out (non-members) for
membership inference. Units are drawn without replacement from a seeded permutation:

* ``by="record"``: every row is a unit;
* ``by="group"``: all rows with the same ``group`` value (e.g. an individual) form one unit, so a
  group is never on both sides;
* ``by="source"``: the same with the ``source`` column (e.g. one genome of a multi-species set).

Rows holding a planted canary (``canary`` column not empty: standalone copies and spliced windows)
are always members, since their repetitions are training data; with ``by`` group/source, the
whole unit of such a row becomes a member. Held-out canaries are not in the store at all. Of the
remaining units exactly ``round(member_fraction * units)`` become members.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from glmjax.errors import ConfigError

SPLIT_BY = ("record", "group", "source")


def make_split(store: Any, member_fraction: float, seed: int, by: str = "record") -> tuple[np.ndarray, dict[str, Any]]:
    """Compute a split of an open :class:`glmjax.data.store.SequenceStore`.

    Returns (member bool [rows], info dict with seed, fraction, unit and row counts).

    Raises:
      ConfigError: fraction outside (0, 1), unknown ``by``, rows without a group, or a split that
        would leave one side empty.
    """
    if not 0.0 < member_fraction < 1.0:
        raise ConfigError(f"--member-fraction must be strictly between 0 and 1 (got {member_fraction})")
    if by not in SPLIT_BY:
        raise ConfigError(f"--by must be one of {', '.join(SPLIT_BY)} (got {by!r})")
    n = len(store)
    canary = np.asarray(store.column("canary"), dtype=object) != ""
    if by == "record":
        keys = np.arange(n)
    else:
        col = np.asarray(store.column(by), dtype=object)
        missing = (col == "") & ~canary
        if missing.any():
            raise ConfigError(f"{int(missing.sum()):,} rows of {store.path} have no {by} (e.g. row "
                              f"{int(np.flatnonzero(missing)[0])}); use --by record")
        # Standalone canaries without a group are units of their own; they are members anyway.
        labels = [x if x != "" else f"\0row{i}" for i, x in enumerate(col.tolist())]
        names = sorted(set(labels))
        lookup = {name: i for i, name in enumerate(names)}
        keys = np.fromiter((lookup[x] for x in labels), dtype=np.int64, count=n)
    n_units = int(keys.max()) + 1 if n else 0
    forced = np.zeros(n_units, bool)
    forced[keys[canary]] = True
    free = np.flatnonzero(~forced)
    n_members = int(round(member_fraction * free.size))
    if n_members == 0 or n_members == free.size:
        raise ConfigError(f"--member-fraction {member_fraction} of {free.size} {by} units (besides "
                          f"{int(forced.sum())} holding canaries) leaves one side empty; use more data "
                          "or another fraction")
    rng = np.random.default_rng(seed)
    unit_member = forced.copy()
    unit_member[free[rng.permutation(free.size)[:n_members]]] = True
    member = unit_member[keys]
    info = {
        "seed": seed, "member_fraction": member_fraction, "by": by,
        "members": int(member.sum()), "non_members": int((~member).sum()),
        "member_units": int(unit_member.sum()), "non_member_units": int((~unit_member).sum()),
        "canary_rows": int(canary.sum()), "canary_units": int(forced.sum()),
    }
    return member, info


def split_store(path: str | os.PathLike, member_fraction: float, seed: int, by: str = "record") -> dict[str, Any]:
    """Compute a split of the store at ``path`` and write it into the store (replacing any split)."""
    from glmjax.data.store import SequenceStore, write_split
    from glmjax.storage import base_provenance

    with SequenceStore(path) as store:
        member, info = make_split(store, member_fraction, seed, by)
    info = {**info, "provenance": base_provenance(seed=seed)}
    write_split(path, member, info)
    return info
