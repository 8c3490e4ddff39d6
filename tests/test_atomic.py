"""data_manifest.atomic: the exclusive lock that extractions and training runs hold on their outputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_manifest.atomic import LockHeld, exclusive_lock

ROOT = Path(__file__).resolve().parents[1]
# Holds the lock, forks a child that sleeps on (as a DataLoader worker would), then waits to be killed.
HOLDER = """
import os, sys, time
from data_manifest.atomic import exclusive_lock
with exclusive_lock(sys.argv[1]):
    if os.fork() == 0:
        time.sleep(6)
        os._exit(0)
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
