"""The Dask executor: the per-video work as tasks on the workers of a Dask cluster (`extract --scheduler`).

Workers only compute. Each task returns its outcomes (`EncodedVideo` or `Failure`; 1-5 MB for a 340x256
video of 150 frames) to this process, which writes the parts and the store exactly as in a local run, so no shared
file system is needed for the output and there is still one writer. The videos must be readable at the same
absolute path on every worker (a shared file system, or the same copy everywhere).

  --backend opencv (the CPU default)  one task per video: `flowprep.work.extract_video`, as in the local pool
  --backend torch (--device cuda)     one task per chunk of videos: `flowprep.executors.device.DeviceRun` batches the
                                      chunk's frame pairs on the worker's device; chunks of one worker run
                                      one at a time (one process per GPU: start one single-thread worker
                                      per GPU, each seeing its own GPU as cuda:0, as dask-cuda does)

Guarantees, from Dask's own semantics:
- A worker that is lost (killed, its machine gone) has its tasks rescheduled by the scheduler on others.
  A task only returns data, so a task run twice is harmless; every key is unique to this run (no two
  videos with equal arguments are taken for one task, nothing is taken from an earlier run's result).
- A task whose workers die every time (a native crash on one video, out of memory) ends as KilledWorker
  after ``distributed.scheduler.allowed-failures`` deaths. A chunk is then split into single-video tasks;
  a single video is given one more try (the deaths may have been another video's, on the same worker),
  with no other such video in flight, so two suspects never share a worker; then it is recorded as a
  Failure naming the cause. The run goes on.
- Every worker runs the run's versions of the code that computes flow: those there at the start are
  checked before any task (`check_workers`); one that joins later (an adaptive cluster's new worker) is
  checked by each task against the run's fingerprint (`worker_versions`, computed once per worker
  process), which refuses to compute there (`WorkerMismatch`). The client then sends that task, and every
  later one, only to the other workers; with none left, its videos fail with the reason.
- At most ``QUEUED_PER_THREAD`` tasks per worker thread are in flight, and a result is released once it is
  written, so this process holds a bounded number of results whatever the dataset's size.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from flowprep.video.decode import quiet_decoders
from flowprep.errors import ClusterError
from flowprep.executors.scheduler import Scheduler, connect, parse_scheduler, probe
from flowprep.outcomes import Failure, Outcome, VideoTask, Work
from flowprep.settings import DEFAULT_BATCH_SIZE, ExtractConfig, RunSettings
from flowprep.work import extract_video

QUEUED_PER_THREAD = 2  # tasks in flight per worker thread: none waits, few to redo when a worker is lost
GPU_TASK_VIDEOS = 16  # videos per device task: enough pairs to keep batches full, little to redo if lost
REFRESH_S = 2.0  # how often the in-flight bound follows the workers that joined or left


def cluster_executor(cfg: ExtractConfig, work: Work[VideoTask, RunSettings, Outcome] = extract_video):
    """The executor of `flowprep.pipeline.extract` for ``cfg.scheduler``: connects (or starts the
    LocalCluster) when there is work, checks the workers, runs every task there; see the module docstring.
    ``work`` replaces the per-video function of the CPU path (tests)."""
    where = parse_scheduler(cfg.scheduler)
    probe(where)

    def run(tasks: list[VideoTask], settings: RunSettings, on_outcome: Callable[[Outcome], None]) -> None:
        if not tasks:
            return
        tasks = [replace(t, path=os.path.abspath(t.path)) for t in tasks]  # the workers' cwd is not ours
        with connect(where) as client:
            check_workers(client, where, settings, tasks[0].path)
            run_cluster(tasks, settings, client, on_outcome, batch_size=cfg.batch_size,
                        decoders=max(1, cfg.jobs), work=work)
    return run


@functools.lru_cache(maxsize=None)
def worker_versions(backend: str) -> tuple[tuple[str, str], ...]:
    """This process's versions of the code that computes flow (flowprep.settings.compute_versions), sorted
    pairs: the fingerprint a worker shows the start-of-run check and every task. Computed once per worker
    process (a few milliseconds)."""
    from flowprep.settings import compute_versions

    return tuple(sorted(compute_versions(backend).items()))


def version_difference(got: dict[str, str], here: dict[str, str]) -> str:
    """'opencv 4.0.0 (here 4.14.0), ...': where a worker's versions differ from the run's; empty if none."""
    return ", ".join(f"{k} {got.get(k)} (here {v})" for k, v in here.items() if got.get(k) != v)


def _worker_facts(path: str, backend: str) -> dict:
    """What `check_workers` needs to know of one worker: its versions, whether it sees ``path``, CUDA."""
    facts = {"versions": dict(worker_versions(backend)), "sees": os.path.exists(path)}
    if backend == "torch":
        import torch

        facts["cuda"] = torch.cuda.is_available()
    return facts


def check_workers(client, where: Scheduler, settings: RunSettings, sample_path: str) -> None:
    """Wait for a first worker, then check every worker there: it runs this flowprep with these versions,
    sees the videos at ``sample_path`` and, for --device cuda, a GPU. ClusterError names the worker and
    the fix. Workers that join later are checked by each task (`WorkerMismatch`)."""
    from flowprep.settings import compute_versions

    if not client.nthreads():
        print(f"waiting for Dask workers to join {where} ...", file=sys.stderr)
        client.wait_for_workers(1)
    facts = client.run(_worker_facts, sample_path, settings.backend, on_error="return")
    here = compute_versions(settings.backend)
    for worker, got in sorted(facts.items()):
        if isinstance(got, BaseException):
            raise ClusterError(f"Dask worker {worker} cannot run flowprep ({type(got).__name__}: {got}); install "
                               "twostream-toolkit, the same version as here, in the workers' environment")
        if other := version_difference(got["versions"], here):
            raise ClusterError(f"Dask worker {worker} has other versions: {other}; the flow would "
                               "not be what the store records: install the same versions on every worker")
        if not got["sees"]:
            raise ClusterError(f"Dask worker {worker} cannot see {sample_path}: the videos must be at the same "
                               "path on every worker (a shared file system, or the same copy everywhere)")
        if settings.device == "cuda" and not got.get("cuda"):
            raise ClusterError(f"Dask worker {worker} has no CUDA device for --device cuda; start the workers "
                               "on GPU machines (one single-thread worker per GPU)")
    nthreads = client.nthreads()
    print(f"Dask: {len(nthreads)} worker(s), {sum(nthreads.values())} thread(s)", file=sys.stderr)


# -- the tasks (run on the workers) ------------------------------------------------------------------------
class WorkerMismatch(Exception):
    """Raised by a task on a worker whose versions differ from the run's (one that joined after the start
    check): args (worker address, the difference). The client sends the videos to other workers."""


def _check_this_worker(expected: tuple[tuple[str, str], ...], backend: str) -> None:
    """WorkerMismatch unless this worker's fingerprint (worker_versions) is the run's ``expected``."""
    got = worker_versions(backend)
    if got != expected:
        from distributed import get_worker

        raise WorkerMismatch(get_worker().address, version_difference(dict(got), dict(expected)))


def _cpu_task(tasks: list[VideoTask], settings: RunSettings, work: Work, expected: tuple) -> list[Outcome]:
    """The per-video work of the local pool, for each of ``tasks``, in this worker thread, once this
    worker's versions are found to be the run's ``expected``."""
    _check_this_worker(expected, settings.backend)
    quiet_decoders()  # before this worker opens its first video; a setting made where it runs stays
    return [work(t, settings) for t in tasks]


_DEVICE = threading.Lock()  # one device run at a time per worker process: a GPU is shared by its threads


def _device_task(tasks: list[VideoTask], settings: RunSettings, batch_size: int, decoders: int,
                 expected: tuple) -> list[Outcome]:
    """``tasks`` through one `DeviceRun` on this worker's device (``settings.device``: cpu, or cuda, the
    first GPU this worker sees), once this worker's versions are found to be the run's ``expected``."""
    from flowprep.executors.device import DeviceRun

    _check_this_worker(expected, settings.backend)

    quiet_decoders()  # before this worker opens its first video; a setting made where it runs stays
    outcomes: list[Outcome] = []
    with _DEVICE:
        DeviceRun(tasks, settings, settings.device, batch_size, decoders, outcomes.append).run()
    return outcomes


# -- the client side -------------------------------------------------------------------------------------
@dataclass
class _Unit:
    """Videos submitted as one task; ``retried``: a single video's second try after a KilledWorker."""

    tasks: list[VideoTask]
    retried: bool = False


def _chunks(tasks: list[VideoTask], size: int) -> deque:
    return deque(_Unit(tasks[i:i + size]) for i in range(0, len(tasks), size))


def run_cluster(tasks: list[VideoTask], settings: RunSettings, client, on_outcome: Callable[[Outcome], None], *,
                batch_size: int = DEFAULT_BATCH_SIZE, decoders: int = 1,
                work: Work[VideoTask, RunSettings, Outcome] = extract_video) -> None:
    """Run ``tasks`` on the workers of ``client``; ``on_outcome`` gets every video's outcome here, as it
    comes. An exception from ``on_outcome`` (a full disk) cancels the tasks in flight and is raised here;
    so is ClusterError when the scheduler is lost."""
    from distributed import as_completed

    from flowprep.settings import compute_versions

    run_id = uuid.uuid4().hex
    threads = _threads(client)
    expected = tuple(sorted(compute_versions(settings.backend).items()))  # the fingerprint every task checks
    refused: dict[str, str] = {}  # worker address -> how its versions differ (it joined after the start check)

    def submit(unit: _Unit, key: str):
        if settings.backend == "torch":
            function, args = _device_task, (unit.tasks, settings, batch_size, decoders, expected)
        else:
            function, args = _cpu_task, (unit.tasks, settings, work, expected)
        if not refused:
            return client.submit(function, *args, key=key, pure=False)
        good = [w for w in client.nthreads() if w not in refused]
        return client.submit(function, *args, key=key, pure=False, workers=good, allow_other_workers=False)

    size = 1
    if settings.backend == "torch":
        size = max(1, min(GPU_TASK_VIDEOS, -(-len(tasks) // (QUEUED_PER_THREAD * threads))))
    waiting = _chunks(tasks, size)
    suspects: deque = deque()  # single videos to try once more after a KilledWorker, one at a time
    running: dict = {}  # future -> _Unit
    done = as_completed()
    sequence, checked = 0, time.monotonic()

    def next_unit() -> _Unit | None:
        if suspects and not any(u.retried for u in running.values()):
            return suspects.popleft()
        return waiting.popleft() if waiting else None

    try:
        while waiting or suspects or running:
            if time.monotonic() - checked > REFRESH_S:
                threads, checked = _threads(client), time.monotonic()
            while len(running) < QUEUED_PER_THREAD * threads and (unit := next_unit()) is not None:
                sequence += 1
                future = submit(unit, f"flowprep-extract-{run_id}-{sequence}")
                running[future] = unit
                done.add(future)
            future = next(done)
            unit = running.pop(future)
            outcomes = _outcomes(future, unit, waiting, suspects, refused, client)
            del future  # the result is released on the worker once nothing here holds its future
            for outcome in outcomes:
                on_outcome(outcome)
    except BaseException:  # Ctrl-C, a full disk, a lost scheduler: stop the work rather than let it run on
        if client.status == "running":  # else the scheduler is gone, and with it the tasks
            try:
                client.cancel(list(running), force=True)
            except Exception:  # lost on the way: nothing left to cancel
                pass
        raise


def _workers(client) -> list[str]:
    try:
        return list(client.nthreads())
    except Exception:  # no answer now: as if none
        return []


def _threads(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # no answer now: keep going with one
        return 1


def _outcomes(future, unit: _Unit, waiting: deque, suspects: deque, refused: dict[str, str], client) -> list[Outcome]:
    """The outcomes of a finished task; a failed task's videos go back to ``waiting`` (a chunk split into
    single videos; a task refused by a worker of other versions, whole, for the other workers) or to
    ``suspects`` (a single video's second try), or come back as Failures naming the cause."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except WorkerMismatch as exc:
        worker, difference = exc.args
        if worker not in refused:
            refused[worker] = difference
            print(f"Dask worker {worker} joined with other versions ({difference}): it computes nothing of this "
                  "run; install the same versions on every worker", file=sys.stderr)
        if any(w not in refused for w in _workers(client)):
            waiting.appendleft(unit)
            return []
        why = "; ".join(f"{w}: {d}" for w, d in sorted(refused.items()))
        return [Failure(t.video_id, t.relpath, f"{t.path}: no Dask worker with this run's versions is left ({why}); "
                        "install the same versions on every worker and re-run") for t in unit.tasks]
    except FutureCancelledError as exc:
        why = ("this process lost the connection to the Dask scheduler" if "scheduler-connection-lost" in str(exc)
               else f"the Dask cluster cancelled the work ({' '.join(str(exc).split())})")
        raise ClusterError(f"{why}; the videos finished so far are kept: re-run the same command, once the "
                           "scheduler is back, to resume") from None
    except KilledWorker:
        if len(unit.tasks) > 1:
            waiting.extendleft(_Unit([t]) for t in reversed(unit.tasks))
            return []
        if not unit.retried:
            suspects.append(_Unit(unit.tasks, retried=True))
            return []
        t = unit.tasks[0]
        return [Failure(t.video_id, t.relpath, f"{t.path}: every Dask worker that ran this video died (twice "
                        "KilledWorker: the scheduler gave it up after distributed.scheduler.allowed-failures "
                        "lost workers); a native crash or running out of memory on this video is likely: check "
                        "the file with ffprobe or re-encode it, and see the worker logs")]
    except Exception as exc:  # the task raised (a device error, a bug): not a problem of every video at once
        if len(unit.tasks) > 1:
            waiting.extendleft(_Unit([t]) for t in reversed(unit.tasks))
            return []
        t = unit.tasks[0]
        return [Failure(t.video_id, t.relpath, f"{t.path}: the Dask task failed: {type(exc).__name__}: {exc}")]
