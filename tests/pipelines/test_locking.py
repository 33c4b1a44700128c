"""``mmearth_data.locking``: one run per output directory, an OS lock the kernel drops with its holder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mmearth_data import locking
from mmearth_data.errors import MMEarthError
from mmearth_data.locking import LOCK_NAME, lock_holder, output_lock

HOLD = textwrap.dedent("""
    import sys, time
    from mmearth_data.locking import output_lock
    with output_lock(sys.argv[1], "build"):
        print("locked", flush=True)
        time.sleep(60)
""")


def holder(directory) -> subprocess.Popen:
    """Another process holding the lock on ``directory`` (returned once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_the_lock_names_its_holder_and_goes_with_the_run(tmp_path):
    out = tmp_path / "new" / "out"
    with output_lock(out, "export"):
        text = lock_holder(out)
        assert text.startswith(f"mmearth-data export (pid {os.getpid()}, run ") and text.endswith(")")
    assert not (out / LOCK_NAME).exists() and lock_holder(out) == ""


def test_a_second_run_is_refused_in_one_line_naming_the_first(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(MMEarthError) as e:
            with output_lock(tmp_path, "pack"):
                pass
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path}: in use by mmearth-data build (pid {proc.pid}, run ")
        assert "one run per output directory" in msg and "\n" not in msg
        assert lock_holder(tmp_path).startswith(f"mmearth-data build (pid {proc.pid},")   # the refusal wrote nothing
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    proc = holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = tmp_path / LOCK_NAME
    assert lock.exists()   # left behind, but no longer locked
    lock.write_text(lock.read_text() + "a longer note the dead run left\n" * 3)
    with output_lock(tmp_path, "build"):
        now = lock_holder(tmp_path)
        assert now.startswith(f"mmearth-data build (pid {os.getpid()},") and "\n" not in now   # the old text is gone


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    """``build`` holds the lock and runs ``pack`` on the same directory: the inner hold neither blocks nor ends it."""
    with output_lock(tmp_path, "build"):
        first = lock_holder(tmp_path)
        with output_lock(tmp_path, "pack"):
            assert lock_holder(tmp_path) == first
        assert (tmp_path / LOCK_NAME).exists()
        probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "in use by mmearth-data build" in probe.stderr   # still held
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_unlinked_by_a_releasing_holder_is_opened_again(tmp_path, monkeypatch):
    """Between our open and our lock, the holder releases and unlinks the file: a lock on that file would be a lock
    nobody else sees, so the file is opened again."""
    opened = []
    open_lock = locking._open_lock

    def racing(lock):
        fd = open_lock(lock)
        opened.append(os.fstat(fd).st_ino)
        if len(opened) == 1:
            lock.unlink()   # the releasing holder's unlink, after our open
        return fd

    monkeypatch.setattr(locking, "_open_lock", racing)
    with output_lock(tmp_path, "export"):
        assert len(opened) == 2
        assert os.stat(tmp_path / LOCK_NAME).st_ino == opened[1]
        assert lock_holder(tmp_path).startswith("mmearth-data export")


def test_out_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(MMEarthError, match=r"--out .*file: exists and is not a directory"):
        with output_lock(target, "export"):
            pass


def test_a_planted_link_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(MMEarthError, match="symbolic link"):
        with output_lock(out, "export"):
            pass
    assert victim.read_text() == "keep me"
