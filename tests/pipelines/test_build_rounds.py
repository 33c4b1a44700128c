"""The exactly-N rounds' own logic, called directly: how many tiles each ecoregion is owed, and which done tiles
are packed when an ecoregion falls short (its biome's spare tiles first, then any biome's)."""
from __future__ import annotations

from collections import Counter

from pipelines.build import BuildConfig
from pipelines.build.rounds import Tally, _select, _targets


def tally(done: dict[int, list[str]], biome: dict[int, int], sampled: dict[int, int]) -> Tally:
    t = Tally(biome=dict(biome), sampled=Counter(sampled))
    for e, ids in done.items():
        t.done[e] = list(ids)
    return t


def test_targets_are_the_sampled_strata_scaled_to_the_size():
    t = tally({}, {1: 1, 2: 1, 3: 2}, {1: 6, 2: 3, 3: 3})   # --oversample 1.2 drew 12 for --size 10
    targets = _targets(BuildConfig(size=10, size_label="10", out="o"), t)
    assert sum(targets.values()) == 10
    assert targets == {1: 5, 2: 3, 3: 2}   # largest remainder; the tie goes to the lower ECO_ID
    exact = tally({}, {1: 1, 2: 1}, {1: 4, 2: 6})
    assert _targets(BuildConfig(size=10, size_label="10", out="o"), exact) == {1: 4, 2: 6}


def test_select_keeps_row_order_and_fills_a_shortfall_from_the_same_biome_first():
    done = {10: ["10_0", "10_1", "10_2"],           # biome 1: one spare
            11: ["11_0"],                           # biome 1: short by one
            20: ["20_0", "20_1", "20_2", "20_3"]}   # biome 2: two spare
    t = tally(done, {10: 1, 11: 1, 20: 2}, {10: 2, 11: 2, 20: 2})
    keep, per_eco = _select({10: 2, 11: 2, 20: 2}, t)
    assert sorted(keep) == sorted(["10_0", "10_1", "10_2", "11_0", "20_0", "20_1"])   # 10_2 is biome 1's spare
    assert per_eco == {10: 3, 11: 1, 20: 2}


def test_select_takes_any_biome_when_its_own_has_no_spare():
    done = {10: ["10_0"], 20: ["20_0", "20_1", "20_2"]}
    t = tally(done, {10: 1, 20: 2}, {10: 2, 20: 1})
    keep, per_eco = _select({10: 2, 20: 1}, t)
    assert len(keep) == 3 and "20_0" in keep and "10_0" in keep and "20_1" in keep   # the first spare, in order
    assert per_eco == {10: 1, 20: 2}
