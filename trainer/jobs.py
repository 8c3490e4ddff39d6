"""What every job on a run directory shares (`trainer run`, `trainer test`): rank 0's console, the run's
lock, checkpoints read on every rank, and the note on videos left out."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.data import short_videos
from trainer.distributed import Env, all_sum
from trainer.errors import CheckpointError, TrainerError

LOCK = ".{}.lock"  # beside the run directory (OUT/.STREAM-splitK.lock), held by rank 0 while a job writes it


def say(env: Env, message: str) -> None:
    """Console output of rank 0 (progress displays are closed whenever it is called)."""
    if env.is_main:
        print(message, flush=True)


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run directory: OUT/.STREAM-splitK.lock."""
    return run_dir.parent / LOCK.format(run_dir.name)


@contextlib.contextmanager
def run_lock(cfg: TrainConfig, env: Env):
    """Rank 0 holds an flock on OUT/.STREAM-splitK.lock while the job writes the run directory: a second
    `trainer run` or `trainer test` on it fails at once instead of training over the first one's files. The
    kernel drops the lock when its holder dies, even by SIGKILL, so a killed run can be re-run. The lock
    lives beside the run directory, so a run refused before it starts leaves no directory behind, and a
    runs folder made for the lock alone is removed again."""
    from plumbing.atomic import exclusive_lock_or

    if not env.is_main:
        yield
        return
    runs = lock_path(cfg.run_dir).parent
    made = not runs.exists()
    try:
        with exclusive_lock_or(lock_path(cfg.run_dir), TrainerError, "trainer", cfg.run_dir, "an --out"):
            yield
    finally:
        if made:  # a run that failed before making its directory leaves no empty runs folder either
            with contextlib.suppress(OSError):
                runs.rmdir()  # only when empty


def load_everywhere(path: Path, env: Env, for_resume: bool) -> dict[str, Any]:
    """Every rank reads the checkpoint; if any rank cannot, all stop, each saying who could not."""
    problem = ""
    try:
        state = ckpt.load_checkpoint(path, for_resume=for_resume)
    except CheckpointError as exc:
        state, problem = {}, str(exc)
    failed = int(all_sum(env, [1.0 if problem else 0.0])[0])
    shared = "every process must be able to read it (with several nodes, put --out on a shared file system)"
    if problem:
        raise CheckpointError(f"process {env.rank} of {env.world}: {problem}; {shared}" if env.world > 1
                              else problem)
    if failed:
        raise CheckpointError(f"{path}: {failed} other process(es) cannot read this checkpoint (see their "
                              f"messages); {shared}")
    return state


def report_videos(env: Env, store, subsets, cfg: TrainConfig, which=("train", "val", "test")) -> None:
    """Warn once about videos left out (missing_videos = skip) and count the videos shorter than a sample."""
    for k, ids in subsets.missing.items():
        if k in which:
            say(env, f"warning: {len(ids)} {k} videos are missing from the store and left out")
    used = [v for k in which for v in getattr(subsets, k)]
    short = short_videos(store, used, cfg)
    if short:
        what = "flow fields" if cfg.stream == "temporal" else "frames"
        say(env, f"note: {len(short)} of {len(used)} videos have fewer {what} than a sample takes "
                 f"({cfg.length}), e.g. {short[0]}: their samples repeat the last one")
