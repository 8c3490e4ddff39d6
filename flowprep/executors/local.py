"""The CPU executor: `extract_video` over many videos in a pool of worker processes on this machine.

Workers only compute; every outcome comes back to the calling process, which is the only writer. A worker
that dies (a native crash in FFmpeg or OpenCV, an out-of-memory kill) breaks the pool and takes the videos
in flight with it: those are run again one process each, so the crash takes only its own video, which is
recorded with the signal; the others go to a fresh pool. Workers end themselves within a second when the
calling process dies (SIGKILL included), instead of waiting forever for work that never comes.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Callable

from flowprep.executors.processes import exit_text, start_worker
from flowprep.outcomes import Failure, OutcomeT, SettingsT, TaskT, Work
from flowprep.work import extract_video
QUEUED_PER_WORKER = 2  # tasks handed to the pool per worker: enough that none waits, few to redo after a crash


def run_pool(tasks: list[TaskT], settings: SettingsT, jobs: int, on_outcome: Callable[[OutcomeT], None],
             work: Work[TaskT, SettingsT, OutcomeT] = extract_video) -> None:
    """Run ``work(task, settings)`` for every task in ``jobs`` processes; ``on_outcome`` gets each result
    in this process, as it comes. An exception from ``on_outcome`` (a full disk) stops the pool and is
    raised here. The work of extract (the default), import or export, each with its own task and settings
    types (flowprep.outcomes)."""
    waiting = deque(tasks)
    while waiting:
        suspects = _until_broken(waiting, settings, jobs, on_outcome, work)
        _run_alone(suspects, settings, jobs, on_outcome, work)


def _until_broken(waiting: deque, settings: SettingsT, jobs: int, on_outcome, work: Work) -> list[TaskT]:
    """Feed ``waiting`` to one pool until it is empty ([] returned) or the pool breaks: then the tasks that
    were in flight, whose results did not come back."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from joblib.externals.loky import get_reusable_executor

    workers = min(jobs, len(waiting))
    executor = get_reusable_executor(max_workers=workers, initializer=start_worker, initargs=(os.getpid(),))
    running: dict = {}  # future -> task
    try:
        while waiting or running:
            while waiting and len(running) < QUEUED_PER_WORKER * workers:
                task = waiting.popleft()
                running[executor.submit(work, task, settings)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = future.result()
                del running[future]
                on_outcome(outcome)
    except BrokenProcessPool:  # loky's TerminatedWorkerError
        suspects = []
        for future, task in running.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                on_outcome(future.result())  # finished before the pool broke
            else:
                suspects.append(task)
        return suspects
    except BaseException:  # Ctrl-C, a full disk, a bug: stop the workers rather than let them run on
        for future in running:
            future.cancel()
        executor.shutdown(wait=False, kill_workers=True)
        raise
    executor.shutdown(wait=True)  # idle workers would outlive a kill -9 during the (long) assembly
    return []


def _alone_main(conn, work: Work, task: TaskT, settings: SettingsT) -> None:
    start_worker(os.getppid())
    conn.send(work(task, settings))
    conn.close()


def _run_alone(tasks: list[TaskT], settings: SettingsT, jobs: int, on_outcome, work: Work) -> None:
    """Run each task in a process of its own (at most ``jobs`` at a time); one that crashes there is a
    Failure naming the signal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # this process has threads (loky, progress): forking it is not safe
    waiting, running = deque(tasks), {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                task = waiting.popleft()
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_alone_main, args=(send, work, task, settings), daemon=True)
                proc.start()
                send.close()
                running[proc] = (task, receive)
            for proc, (task, receive) in list(running.items()):
                outcome = None
                if receive.poll(0.05):  # read before joining: a large result would block the child's exit
                    try:
                        outcome = receive.recv()
                    except EOFError:  # it died before sending
                        pass
                elif proc.is_alive():
                    continue
                proc.join()
                del running[proc]
                receive.close()
                on_outcome(outcome if outcome is not None else Failure(
                    task.video_id, task.relpath,
                    f"{task.source}: the decoder/flow process crashed ({exit_text(proc.exitcode)}) while "
                    "extracting this video alone; check the file with ffprobe or re-encode it (if every "
                    "video crashes, suspect the --param values)"))
    finally:
        for proc in running:
            proc.kill()
