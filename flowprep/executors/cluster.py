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
- At most ``QUEUED_PER_THREAD`` tasks per worker thread are in flight, and a result is released once it is
  written, so this process holds a bounded number of results whatever the dataset's size.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable
from urllib.parse import urlsplit

from flowprep.video.decode import quiet_decoders
from flowprep.errors import ClusterError, OptionError
from flowprep.work import Failure, Outcome, VideoTask, extract_video

LOCAL = "local:"
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # Dask's network protocols for a scheduler address
DEFAULT_PORT = 8786  # `dask scheduler`'s default
INSTALL = "pip install 'twostream-toolkit[dask]'"
QUEUED_PER_THREAD = 2  # tasks in flight per worker thread: none waits, few to redo when a worker is lost
GPU_TASK_VIDEOS = 16  # videos per device task: enough pairs to keep batches full, little to redo if lost
CONNECT_TIMEOUT_S = 10.0
REFRESH_S = 2.0  # how often the in-flight bound follows the workers that joined or left

Work = Callable[[VideoTask, object], Outcome]


@dataclass(frozen=True)
class Scheduler:
    """Where `--scheduler` says the cluster is: a scheduler's address, or ``local`` worker processes here."""

    address: str | None  # tcp://HOST:PORT ...; None for a LocalCluster
    local: int = 0  # worker processes of the LocalCluster

    def __str__(self) -> str:
        return self.address or f"{LOCAL}{self.local}"


def parse_scheduler(text: str) -> Scheduler:
    """``local:N`` or a Dask scheduler address (``tcp://HOST:PORT``, tls://, ws://, wss://, ucx://; a bare
    HOST:PORT means tcp). OptionError names what is accepted."""
    accepted = "give tcp://HOST:PORT (a running `dask scheduler`) or local:N (N worker processes here)"
    text = text.strip()
    if text.startswith(LOCAL):
        n = text[len(LOCAL):]
        if not n.isdigit() or int(n) < 1:
            raise OptionError(f"--scheduler {text}: N of local:N must be a whole number of workers >= 1")
        return Scheduler(None, int(n))
    url = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = url.port
    except ValueError:
        raise OptionError(f"--scheduler {text}: the port is not a number from 1 to 65535; {accepted}") from None
    if url.scheme not in SCHEMES or not url.hostname or url.path not in ("", "/") or url.query or port == 0:
        raise OptionError(f"--scheduler {text!r} is not a Dask scheduler address; {accepted}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return Scheduler(f"{url.scheme}://{host}:{port or DEFAULT_PORT}")


def check_options(cfg) -> None:
    """Misuse of --scheduler, named before any file is touched (OptionError): a bad address, Dask not
    installed, options that only mean something for this machine's own devices."""
    from importlib.util import find_spec

    where = parse_scheduler(cfg.scheduler)
    missing = [m for m in ("dask", "distributed") if find_spec(m) is None]
    if missing:
        raise OptionError(f"--scheduler needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {INSTALL}")
    if cfg.device == "auto":
        raise OptionError("--device auto would be decided by this machine, not the workers; with --scheduler "
                          "give --device cpu or --device cuda")
    if cfg.gpus:
        raise OptionError("--gpus picks devices of this machine; with --scheduler each GPU is a Dask worker "
                          "of its own (start one worker per GPU)")
    if cfg.device == "cuda" and where.local:
        raise OptionError("--scheduler local:N with --device cuda would put every worker on the same GPU; "
                          "leave out --scheduler (the local run already uses one process per GPU)")


def cluster_executor(cfg, work: Work = extract_video):
    """The executor of `flowprep.pipeline.extract` for ``cfg.scheduler``: connects (or starts the
    LocalCluster) when there is work, checks the workers, runs every task there; see the module docstring.
    ``work`` replaces the per-video function of the CPU path (tests)."""
    where = parse_scheduler(cfg.scheduler)
    probe(where)

    def run(tasks: list[VideoTask], settings, on_outcome: Callable[[Outcome], None]) -> None:
        if not tasks:
            return
        tasks = [replace(t, path=os.path.abspath(t.path)) for t in tasks]  # the workers' cwd is not ours
        with connect(where) as client:
            check_workers(client, where, settings, tasks[0].path)
            run_cluster(tasks, settings, client, on_outcome, batch_size=cfg.batch_size,
                        decoders=max(1, cfg.jobs), work=work)
    return run


def probe(where: Scheduler) -> None:
    """ClusterError, before any file is touched, when nothing listens at the scheduler's TCP address, or
    something does that is not a Dask scheduler: Dask's handshake, bounded by CONNECT_TIMEOUT_S (Dask's own
    connect waits for the handshake's answer without a limit, and reads any answer as a frame length: an
    HTTP server's reply asks for exabytes)."""
    import socket

    if where.local or not where.address.startswith("tcp://"):  # tls/ws need the security settings: Client's job
        return
    url = urlsplit(where.address)
    fix = "start it (`dask scheduler`) or check --scheduler"
    try:
        socket.create_connection((url.hostname, url.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {where.address} ({exc.strerror or exc}); "
                           f"{fix}") from None
    try:
        _handshake(where.address)
    except TimeoutError:
        raise ClusterError(f"{where.address} accepts connections but gives no Dask handshake within "
                           f"{CONNECT_TIMEOUT_S:g} s: it is not a Dask scheduler (or a hung one); {fix} (a "
                           f"scheduler listens on port {DEFAULT_PORT} by default)") from None
    except Exception as exc:  # MemoryError for an HTTP reply read as a frame length, a parse error...
        why = ("its reply is not Dask's protocol: an HTTP server?" if isinstance(exc, MemoryError) else
               f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}")
        raise ClusterError(f"{where.address} answers, but not as a Dask scheduler ({why}); "
                           f"{fix} (a scheduler listens on port {DEFAULT_PORT} by default; 8787 is its "
                           "dashboard)") from None


def _handshake(address: str) -> None:
    """Open a Dask connection to ``address`` and close it again; TimeoutError after CONNECT_TIMEOUT_S."""
    import asyncio

    from distributed.comm import connect as comm_connect

    async def shake() -> None:
        comm = await asyncio.wait_for(comm_connect(address, timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S)
        await comm.close()

    try:
        asyncio.run(shake())
    except asyncio.TimeoutError:  # an alias of TimeoutError from Python 3.11 on
        raise TimeoutError from None


class connect:
    """``with connect(where) as client``: a `distributed.Client` of the scheduler, or of a LocalCluster
    started here (on 127.0.0.1, one thread per worker) and closed on exit. ClusterError when the scheduler
    cannot be reached. Prints the cluster and its dashboard link to stderr."""

    def __init__(self, where: Scheduler):
        self.where, self.cluster, self.client = where, None, None

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.where.local:
            self.cluster = LocalCluster(n_workers=self.where.local, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address="127.0.0.1:0")
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.where.address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                why = " ".join(str(exc).split()) or type(exc).__name__
                raise ClusterError(f"cannot reach the Dask scheduler at {self.where.address} ({why}); start it "
                                   "(`dask scheduler`) or check --scheduler") from None
        link = self.client.dashboard_link if _serves_dashboard(self.client) else None
        print(f"Dask scheduler {self.client.scheduler.address}; dashboard: "
              f"{link or 'none (install bokeh where the scheduler runs to have one)'}", file=sys.stderr)
        return self.client

    def __exit__(self, exc_type, *exc) -> None:
        import logging

        # the error that ends the run is reported once, not with Dask's tracebacks of the reconnection that
        # closing cancels (distributed's loggers have levels of their own: each one is set)
        names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
        levels = {n: logging.getLogger(n).level for n in names} if exc_type is not None else {}
        for name in levels:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        try:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _serves_dashboard(client) -> bool:
    try:
        return "dashboard" in client.scheduler_info(n_workers=0).get("services", {})
    except Exception:  # an old or unusual scheduler: the link is still Dask's best guess
        return True


def _worker_facts(path: str, backend: str) -> dict:
    """What `check_workers` needs to know of one worker: its versions, whether it sees ``path``, CUDA."""
    import cv2
    import numpy as np

    import flowprep

    facts = {"flowprep": flowprep.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
             "sees": os.path.exists(path)}
    if backend == "torch":
        import torch

        facts.update(torch=torch.__version__, cuda=torch.cuda.is_available())
    return facts


def check_workers(client, where: Scheduler, settings, sample_path: str) -> None:
    """Wait for a first worker, then check every worker there: it runs this flowprep with these versions,
    sees the videos at ``sample_path`` and, for --device cuda, a GPU. ClusterError names the worker and
    the fix."""
    import cv2
    import numpy as np

    import flowprep

    if not client.nthreads():
        print(f"waiting for Dask workers to join {where} ...", file=sys.stderr)
        client.wait_for_workers(1)
    facts = client.run(_worker_facts, sample_path, settings.backend, on_error="return")
    here = {"flowprep": flowprep.__version__, "opencv": cv2.__version__, "numpy": np.__version__}
    if settings.backend == "torch":
        import torch

        here["torch"] = torch.__version__
    for worker, got in sorted(facts.items()):
        if isinstance(got, BaseException):
            raise ClusterError(f"Dask worker {worker} cannot run flowprep ({type(got).__name__}: {got}); install "
                               "twostream-toolkit, the same version as here, in the workers' environment")
        other = [f"{k} {got.get(k)} (here {v})" for k, v in here.items() if got.get(k) != v]
        if other:
            raise ClusterError(f"Dask worker {worker} has other versions: {', '.join(other)}; the flow would "
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
def _cpu_task(tasks: list[VideoTask], settings, work: Work) -> list[Outcome]:
    """The per-video work of the local pool, for each of ``tasks``, in this worker thread."""
    quiet_decoders()  # before this worker opens its first video; a setting made where it runs stays
    return [work(t, settings) for t in tasks]


_DEVICE = threading.Lock()  # one device run at a time per worker process: a GPU is shared by its threads


def _device_task(tasks: list[VideoTask], settings, batch_size: int, decoders: int) -> list[Outcome]:
    """``tasks`` through one `DeviceRun` on this worker's device (``settings.device``: cpu, or cuda, the
    first GPU this worker sees)."""
    from flowprep.executors.device import DeviceRun

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


def run_cluster(tasks: list[VideoTask], settings, client, on_outcome: Callable[[Outcome], None], *,
                batch_size: int = 32, decoders: int = 1, work: Work = extract_video) -> None:
    """Run ``tasks`` on the workers of ``client``; ``on_outcome`` gets every video's outcome here, as it
    comes. An exception from ``on_outcome`` (a full disk) cancels the tasks in flight and is raised here;
    so is ClusterError when the scheduler is lost."""
    from distributed import as_completed

    run_id = uuid.uuid4().hex
    threads = _threads(client)
    if settings.backend == "torch":
        size = max(1, min(GPU_TASK_VIDEOS, -(-len(tasks) // (QUEUED_PER_THREAD * threads))))
        submit = lambda unit, key: client.submit(_device_task, unit.tasks, settings, batch_size,  # noqa: E731
                                                 decoders, key=key, pure=False)
    else:
        size = 1
        submit = lambda unit, key: client.submit(_cpu_task, unit.tasks, settings, work,  # noqa: E731
                                                 key=key, pure=False)
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
            outcomes = _outcomes(future, unit, waiting, suspects)
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


def _threads(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # no answer now: keep going with one
        return 1


def _outcomes(future, unit: _Unit, waiting: deque, suspects: deque) -> list[Outcome]:
    """The outcomes of a finished task; a failed task's videos go back to ``waiting`` (a chunk split into
    single videos) or to ``suspects`` (a single video's second try), or come back as Failures naming the
    cause."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        return future.result()
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
