"""The one grouped train/validation split: whole groups (cells, spreads, images, smear areas) held out.

Every task splits with :func:`grouped_split`; the per-task helpers
(``split_by_cell``, ``split_by_id``, ``split_by_group``, ``split_by_image``,
``bccd_split``) only say what a group and a stratum are.

Why not scikit-learn's ``GroupShuffleSplit``: the built-in models were trained on
splits made by this rule (sorted groups shuffled by ``numpy.random.default_rng(seed)``,
the first ``round(n * fraction)`` held out, per stratum), and their model cards,
``--set split=val`` and the benchmarks score them on exactly those held-out
groups.  ``GroupShuffleSplit`` draws other groups for the same seed, so a model
would be "evaluated" on images it was trained on.  The rule is kept, in one place.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def grouped_split(groups: Sequence[Hashable], val_fraction: float = 0.2, seed: int = 0, *,
                  strata: Sequence[str] | None = None, group_stratum: str = "majority",
                  at_least_one: bool = True) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) with every group entirely on one side.

    ``groups``: one sortable key per item.  ``strata`` (optional, one label per item)
    holds out ``val_fraction`` of the groups of each stratum; a group's stratum is
    its most common label (``group_stratum="majority"``, ties to the first in sorted
    order) or its first item's label (``"first"``).  A stratum with fewer than two
    groups stays in training (one example cannot be both learned and tested); one
    with two or more holds out at least one (``at_least_one``) and keeps at least
    one for training.
    """
    if group_stratum not in ("majority", "first"):
        raise ValueError(f"group_stratum must be 'majority' or 'first', got {group_stratum!r}")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict[str, list[Hashable]] = {}
    for g in sorted(members):
        if strata is None:
            key = ""
        else:
            labels = [str(strata[i]) for i in members[g]]
            key = labels[0] if group_stratum == "first" else max(sorted(set(labels)), key=labels.count)
        by_stratum.setdefault(key, []).append(g)
    rng = np.random.default_rng(seed)
    val_groups: list[Hashable] = []
    for key in sorted(by_stratum):
        gs = list(by_stratum[key])
        rng.shuffle(gs)
        n = len(gs)
        k = 0
        if n >= 2:
            k = min(max(round(n * val_fraction), 1 if at_least_one else 0), n - 1)
        val_groups += gs[:k]
    val = sorted(i for g in val_groups for i in members[g])
    held = set(val)
    return [i for i in range(len(groups)) if i not in held], val
