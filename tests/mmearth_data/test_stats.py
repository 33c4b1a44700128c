import hashlib

import numpy as np
import pytest

from mmearth_data.sample_data import write_sample_dataset
from mmearth_data.stats import BandStats


def test_merged_partial_stats_equal_one_pass():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 15, (30, 3, 8, 8)).astype(np.float32)
    missing = rng.random(a.shape) < 0.1
    missing[:, 2] = True  # a band with no valid value at all
    whole = BandStats(3)
    whole.update(a, missing)
    parts = [BandStats(3) for _ in range(3)]
    for p, sl in zip(parts, (slice(0, 7), slice(7, 20), slice(20, 30))):
        p.update(a[sl], missing[sl])
    merged = parts[2].merge(parts[0]).merge(parts[1])  # any order
    w, m = whole.to_json(), merged.to_json()
    for b in range(2):
        v = a[:, b][~missing[:, b]].astype(np.float64)
        for stat, ref in (("mean", v.mean()), ("std", v.std()), ("min", v.min()), ("max", v.max())):
            assert w[stat][b] == pytest.approx(ref, rel=1e-12) and m[stat][b] == pytest.approx(ref, rel=1e-12)
    assert all(np.isnan(w[s][2]) and np.isnan(m[s][2]) for s in ("mean", "std", "min", "max"))


def test_writer_output_is_byte_identical_for_identical_input(tmp_path):
    digests = []
    for d in (tmp_path / "a", tmp_path / "b"):
        write_sample_dataset(d, 6, tile_px=16, seed=2, stem="x")
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())})
    assert digests[0] == digests[1] and len(digests[0]) == 4
