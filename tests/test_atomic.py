"""plumbing.atomic: atomic writes (permissions from the umask, never a half file) and the exclusive lock
that extractions and training runs hold on their outputs."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plumbing.atomic import LockHeld, exclusive_lock

ROOT = Path(__file__).resolve().parents[1]
# Holds the lock, forks a child that sleeps on (as a DataLoader worker would), then waits to be killed. It says
# "holding" only once the child runs: by then the child's after-fork hook has closed its copy of the lock's
# descriptor (the hook runs before os.fork returns in the child). On a busy machine the child may otherwise not
# have run yet when the holder is killed, and would still hold the flock.
HOLDER = """
import os, sys, time
from plumbing.atomic import exclusive_lock
with exclusive_lock(sys.argv[1]):
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.write(ready_w, b"x")
        time.sleep(6)
        os._exit(0)
    os.read(ready_r, 1)
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_pid_and_the_file_goes_with_the_lock(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    with exclusive_lock(path):
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(LockHeld) as err:
            with exclusive_lock(path):
                pass
        assert err.value.holder == str(os.getpid())
    assert not path.exists()
    with exclusive_lock(path):  # released: the next holder gets it
        pass


def test_a_killed_holder_frees_the_lock_even_while_its_forked_child_lives(tmp_path):
    path = tmp_path / "run.lock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(LockHeld):
            with exclusive_lock(path):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        t = time.perf_counter()
        with exclusive_lock(path):  # the child still sleeps, with the lock file's descriptor closed
            pass
        assert time.perf_counter() - t < 1
    finally:
        holder.kill()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_get_the_permissions_of_any_new_file(tmp_path, umask, mode):
    """Not mkstemp's 0600: colleagues on shared storage must be able to read checkpoints and reports."""
    from data_manifest import Manifest  # the manifest writer goes through atomic_write too
    from plumbing.atomic import atomic_open, atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "report.md", "first")
        atomic_write(tmp_path / "report.md", "replaced")  # replacing a file gives the umask's mode too
        with atomic_open(tmp_path / "sub" / "scores.npz", "wb") as f:
            f.write(b"PK")
        Manifest("folder", ["A"], [], []).write(tmp_path / "m.manifest.tsv")
        plain = tmp_path / "plain.txt"
        plain.write_text("what open() gives, for comparison")
    finally:
        os.umask(old)
    for path in (tmp_path / "report.md", tmp_path / "sub" / "scores.npz", tmp_path / "m.manifest.tsv", plain):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert (tmp_path / "report.md").read_text() == "replaced"


def test_a_temporary_name_in_use_is_never_written_over(tmp_path, monkeypatch):
    import plumbing.atomic as atomic

    names = iter(["0000aaaa", "0000bbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    other = tmp_path / ".out.txt.0000aaaa.tmp"  # another writer's temporary file, mid-write
    other.write_text("theirs")
    atomic.atomic_write(tmp_path / "out.txt", "mine")
    assert other.read_text() == "theirs" and (tmp_path / "out.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.txt.0000aaaa.tmp", "out.txt"]
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "0000aaaa")  # every name taken
    with pytest.raises(FileExistsError, match="no free temporary name"):
        atomic.atomic_write(tmp_path / "out.txt", "again")
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from plumbing.atomic import atomic_open

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "wb") as f:
            f.write(b"half of the new one")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
