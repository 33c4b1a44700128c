"""``pipelines.status``: progress and failure summaries read from the partition ledgers of an export directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmearth_data.errors import MMEarthError
from pipelines.staging import TILE_DONE, TILE_FAILED, TILE_NO_S2, TILE_RETRY, LedgerRow, PartitionStore
from pipelines.status import ProgressView, format_summary, read_config, shorten, summarize, tile_counts

CONFIG = {"identity": {"backend": "synthetic"}, "config": {}, "tiles": 10, "partitions": 3, "config_hash": "c0ffee"}


def export_dir(root: Path) -> Path:
    """Ten tiles in three partitions: 4 done, 1 no_s2, 2 failed, 1 to retry, 2 not started; one partition complete."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "export.json").write_text(json.dumps(CONFIG))
    timeout = ("read timed out after 20 s while fetching "
               "https://example.org/a/very/long/path/to/a/scene/of/2019/asset.tif")
    with PartitionStore(root / "staging" / "part-00000.sqlite") as st:
        for i, status in enumerate([TILE_DONE, TILE_DONE, TILE_NO_S2]):
            st.commit_tile(f"a{i}", i, status, {}, [LedgerRow("sentinel2", "ok", 1),
                                                    LedgerRow("sentinel1", "ok", 3)], {})
        st.set_meta("complete", True)
        st.set_meta("searches", 12)
    with PartitionStore(root / "staging" / "part-00001.sqlite") as st:
        st.commit_tile("b0", 0, TILE_DONE, {}, [LedgerRow("sentinel2", "ok", 2)], {})
        st.commit_tile("b1", 1, TILE_FAILED, {}, [LedgerRow("sentinel1", "failed", 4, "transient", timeout)], {})
        st.commit_tile("b2", 2, TILE_FAILED, {}, [LedgerRow("sentinel1", "failed", 4, "transient", "z later")], {})
        st.commit_tile("b3", 3, TILE_RETRY, {}, [LedgerRow("aster", "retry", 1, "corrupt", "bad header")], {})
        st.set_meta("searches", 6)
    with PartitionStore(root / "staging" / "part-00002.sqlite") as st:
        st.commit_tile("c0", 0, TILE_DONE, {}, [], {})
    return root


def test_summary_adds_up_the_ledgers_of_every_partition(tmp_path):
    s = summarize(export_dir(tmp_path / "out"))
    assert s["tiles"] == 10 and s["final"] == 7 and s["pending"] == 3 and s["config_hash"] == "c0ffee"
    assert s["by_status"] == {"done": 4, "failed": 2, "no_s2": 1, "retry": 1}
    assert s["partitions"] == 3 and s["partitions_complete"] == 1
    assert s["retries"] == 3 * 2 + 1 + 3 + 3   # attempts beyond the first, over every ledger row
    assert s["searches"] == 18
    assert s["modalities"] == {"aster/retry": 1, "sentinel1/failed": 2, "sentinel1/ok": 3, "sentinel2/ok": 4}
    assert [(f["modality"], f["status"], f["reason"], f["tiles"]) for f in s["failures"]] == [
        ("sentinel1", "failed", "transient", 2), ("aster", "retry", "corrupt", 1)]   # most tiles first
    assert s["failures"][0]["example"].startswith("read timed out")   # one example message per reason


def test_the_summary_reads_as_lines(tmp_path):
    text = format_summary(summarize(export_dir(tmp_path / "out")))
    first, *rest = text.splitlines()
    assert first.startswith(f"{tmp_path / 'out'}: 7/10 tiles final (4 done, 1 no_s2, 2 failed), 1 to retry, 3 pending; "
                            "partitions 1/3 complete; 13 retries; 18 STAC searches (2.57 per tile)")
    assert rest[0] == "not ok, by reason:"
    assert rest[1].split()[:5] == ["sentinel1", "failed", "transient", "2", "tiles"]
    assert rest[1].endswith("…") and len(rest[1]) < 160        # the example is shortened
    assert "Earth Engine" not in text


def test_earth_engine_concurrency_and_requests_are_reported_when_recorded(tmp_path):
    out = export_dir(tmp_path / "out")
    with PartitionStore(out / "staging" / "part-00002.sqlite") as st:
        st.set_meta("gee", {"by_method": {"computePixels": 9, "list": 1},
                            "concurrency": {"start": 8, "now": 6, "min": 4, "changes": 3,
                                            "history": [[0.0, 8], [5.5, 4], [9.0, 6]]}})
    s = summarize(out)
    assert s["gee_concurrency"] == {"start": 8, "now": 6, "min": 4, "changes": 3,
                                    "history": [[0.0, 8], [5.5, 4], [9.0, 6]]}
    text = format_summary(s)
    assert ("Earth Engine concurrency: started at 8, now 6, lowest 4, 3 changes (last: 8 at 0 s, 4 at 5.5 s, 6 at 9 s)"
            in text)
    assert "Earth Engine requests: 10 (1.43 per final tile: 9 computePixels, 1 list)" in text


def test_a_partition_being_created_is_not_counted(tmp_path):
    out = export_dir(tmp_path / "out")
    (out / "staging" / "part-00003.sqlite").write_bytes(b"")   # created, its schema not yet written
    assert tile_counts(out) == {"done": 4, "failed": 2, "no_s2": 1, "retry": 1}


def test_not_an_export_directory_is_one_line(tmp_path):
    with pytest.raises(MMEarthError, match=r"not an export directory \(no export.json"):
        summarize(tmp_path)


@pytest.mark.parametrize("text, why", [
    ("{", "damaged"), ("[1]", "not a JSON object"), ('{"identity": {}, "config": {}, "tiles": true, "partitions": 1}',
                                                    "tiles missing or of the wrong type"),
    ('{"identity": {}, "tiles": 3, "partitions": 1}', "config missing"),
])
def test_a_damaged_export_json_is_one_line(tmp_path, text, why):
    path = tmp_path / "export.json"
    path.write_text(text)
    with pytest.raises(MMEarthError) as e:
        read_config(path)
    assert str(e.value).startswith(f"{path}: damaged") and why in str(e.value) and "\n" not in str(e.value)


def test_a_sound_export_json_is_returned_as_it_is(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(CONFIG))
    assert read_config(path) == CONFIG


def test_shorten_cuts_the_first_line_at_a_word():
    assert shorten("short\nsecond line") == "short"
    assert shorten("") == "" and shorten("   ") == ""
    cut = shorten("word " * 40, width=30)
    assert cut.endswith(" …") and len(cut) <= 30 and cut[:-2].split() == ["word"] * len(cut[:-2].split())


def test_progress_view_follows_the_ledgers(tmp_path, capsys):
    out = export_dir(tmp_path / "out")
    with ProgressView(out, enabled=True, interval_s=0.0) as view:
        assert view.bar.total == 10 and view.bar.n == 7
        with PartitionStore(out / "staging" / "part-00002.sqlite") as st:
            st.commit_tile("c1", 1, TILE_DONE, {}, [], {})
        view.refresh()
        assert view.bar.n == 8
    with ProgressView(out, enabled=False) as view:
        view.refresh()
        assert view.bar is None


def test_without_a_terminal_progress_is_a_line_now_and_then(tmp_path):
    """A batch job's log (stderr not a terminal) got nothing during a stage that may run for days: one line every
    ``log_interval_s`` with tiles final, failures, rate and time left; none while the interval has not passed."""
    out = export_dir(tmp_path / "out")
    lines: list[str] = []
    with ProgressView(out, enabled=False, log=lines.append, log_interval_s=0.0) as view:
        view.refresh()
    assert lines == ["export: 7/10 tiles final (70.0 %; 1 no_s2, 2 failed, 1 to retry), 0.00 tiles/s"]
    quiet: list[str] = []
    with ProgressView(out, enabled=False, log=quiet.append) as view:   # the default: a line a minute
        view.refresh()
    assert quiet == []
    with ProgressView(out, enabled=True, log=quiet.append) as view:   # a terminal: the bar, no lines
        view.refresh()
    assert quiet == []
