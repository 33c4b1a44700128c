"""``pipelines.staging``: one partition's tiles, ledger, staged HDF5 chunks and statistics in one SQLite file, each
tile committed completely or not at all."""
from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from mmearth_data.errors import MMEarthError
from pipelines.staging import (TILE_DONE, TILE_NO_S2, TILE_RETRY, LedgerRow, PartitionStore, digest, staging_error,
                               tile_stats)


def tile_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sentinel2": rng.integers(1, 5000, (13, 8, 8), dtype=np.uint16),
            "sentinel1": rng.normal(-12, 3, (8, 8, 8)).astype(np.float32),
            "lat": np.array([0.5, 0.8], dtype=np.float32)}


def test_a_committed_tile_reads_back_as_it_was_staged(tmp_path):
    arrays = tile_arrays(1)
    rows = [LedgerRow("sentinel2", "ok", attempts=1, source_ids=["S2_a"], nbytes=10, sha256="ab"),
            LedgerRow("sentinel1", "failed", attempts=3, error_class="transient", message="timed out")]
    with PartitionStore(tmp_path / "part-00000.sqlite") as st:
        st.commit_tile("t1", 0, TILE_DONE, {"S2_type": "l2a", "lon": 8.5}, rows, arrays)
        st.set_meta("complete", {"tiles": 1})
    with PartitionStore(tmp_path / "part-00000.sqlite", readonly=True) as st:
        assert st.tile_states() == {"t1": TILE_DONE} and st.counts() == {TILE_DONE: 1}
        assert st.tile_info("t1") == {"S2_type": "l2a", "lon": 8.5} and st.tile_info("t2") is None
        back = st.arrays("t1")
        assert set(back) == set(arrays)
        for name, a in arrays.items():
            assert back[name].dtype == a.dtype and np.array_equal(back[name], a), name
        ledger = {r["modality"]: r for r in st.ledger("t1")}
        assert ledger["sentinel2"]["source_ids"] == '["S2_a"]' and ledger["sentinel2"]["sha256"] == "ab"
        assert ledger["sentinel1"]["attempts"] == 3 and ledger["sentinel1"]["error_class"] == "transient"
        assert st.meta("complete") == {"tiles": 1} and st.meta("absent", 7) == 7
        staged = st.stats("t1")
        expected = tile_stats(arrays, "l2a")
        assert set(staged) == set(expected) == {"sentinel2_l2a", "sentinel1", "lat"}
        for key, s in expected.items():
            assert np.array_equal(staged[key].count, s.count) and np.allclose(staged[key].mean, s.mean), key


def test_only_done_tiles_carry_statistics(tmp_path):
    with PartitionStore(tmp_path / "p.sqlite") as st:
        st.commit_tile("t1", 0, TILE_NO_S2, {"S2_type": None}, [], tile_arrays(2))
        assert st.stats("t1") == {} and st.arrays("t1")["lat"].shape == (2,)


def test_a_tile_committed_again_replaces_its_rows(tmp_path):
    """A tile left to retry and then exported again ends with one state, one ledger row per modality."""
    with PartitionStore(tmp_path / "p.sqlite") as st:
        st.commit_tile("t1", 4, TILE_RETRY, {}, [LedgerRow("sentinel1", "retry", 2, "transient")], {})
        st.commit_tile("t1", 4, TILE_DONE, {"S2_type": "l1c"}, [LedgerRow("sentinel1", "ok", 1)], tile_arrays(3))
        assert st.tile_states() == {"t1": TILE_DONE}
        assert [(r["modality"], r["status"], r["attempts"]) for r in st.ledger()] == [("sentinel1", "ok", 1)]
        assert set(st.stats("t1")) == {"sentinel2_l1c", "sentinel1", "lat"}


def test_tiles_committed_together_are_staged_all_or_none(tmp_path):
    """The second tile's info cannot be written (not JSON): the first, inserted in the same transaction, is rolled
    back with it."""
    with PartitionStore(tmp_path / "p.sqlite") as st:
        good = ("t1", 0, TILE_DONE, {"S2_type": "l2a"}, [LedgerRow("sentinel2", "ok", 1)], tile_arrays(4))
        bad = ("t2", 1, TILE_DONE, {"S2_type": "l2a", "when": object()}, [], {})
        with pytest.raises(TypeError):
            st.commit_tiles([good, bad])
        assert st.tile_states() == {} and st.ledger() == [] and st.chunks("t1") == {}
        st.commit_tiles([good, ("t2", 1, TILE_NO_S2, {}, [], {})])
        assert st.tile_states() == {"t1": TILE_DONE, "t2": TILE_NO_S2}


def test_a_read_only_store_writes_nothing(tmp_path):
    path = tmp_path / "p.sqlite"
    PartitionStore(path).close()
    with PartitionStore(path, readonly=True) as st:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st.set_meta("k", 1)
    with pytest.raises(sqlite3.OperationalError):   # read-only never creates the file
        PartitionStore(tmp_path / "absent.sqlite", readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_a_damaged_database_is_one_line_naming_it(tmp_path):
    path = tmp_path / "part-00003.sqlite"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(MMEarthError) as e:
        PartitionStore(path)
    assert str(e.value).startswith(f"{path}: damaged staging database") and "--resume" in str(e.value)
    assert "\n" not in str(e.value)


def test_staging_errors_a_user_can_act_on_become_one_line():
    path = "/x/part-00001.sqlite"
    full = staging_error(path, sqlite3.OperationalError("database or disk is full"))
    assert isinstance(full, MMEarthError) and str(full).startswith(f"{path}: cannot write")
    assert "free space" in str(full)
    damaged = staging_error(path, sqlite3.DatabaseError("database disk image is malformed"))
    assert isinstance(damaged, MMEarthError) and "damaged staging database" in str(damaged)
    locked = sqlite3.OperationalError("database is locked")
    assert staging_error(path, locked) is locked


def test_digest_is_the_sha256_of_the_arrays_bytes_in_order():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    b = np.linspace(0, 1, 5, dtype=np.float32)
    n, h = digest([a.T, b])   # a transposed (non-contiguous) view is hashed as its C-order bytes
    assert n == a.nbytes + b.nbytes
    assert h == hashlib.sha256(np.ascontiguousarray(a.T).tobytes() + b.tobytes()).hexdigest()
    assert digest([b, a.T])[1] != h
