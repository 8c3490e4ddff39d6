"""`flowprep extract --scheduler`: a real Dask scheduler and 2 worker processes on 127.0.0.1; the store equals a
local run's, a killed worker's video is redone elsewhere, a killed client resumes, a crashing video fails alone."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore
from flowprep.cli import main as cli
from tests.test_extract import SIZE, make_dataset, run_cli
from tests.videos import moving_video

needs_dask = pytest.mark.skipif(find_spec("distributed") is None or find_spec("dask") is None,
                                reason="needs dask and distributed (pip install 'twostream-toolkit[dask]')")

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "flow_seconds")  # the only record fields that differ between two runs


class Cluster:
    """A `dask scheduler` and its `dask worker` processes, each in a process group of its own."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.workers, self.address = tmp, [], [], None
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.tmp, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def add_worker(self, *args: str) -> subprocess.Popen:
        """One more `dask worker` (one thread) joining the running scheduler."""
        proc = self._start(f"worker{len(self.workers)}", "worker", self.address, "--nthreads", "1", "--host",
                           "127.0.0.1", "--no-dashboard", *args)
        self.workers.append(proc)
        return proc

    def start(self, workers: int = 2, nanny: bool = True) -> "Cluster":
        from distributed import Client

        file = self.tmp / "scheduler.json"
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                    "127.0.0.1:0", "--scheduler-file", str(file))
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        for i in range(workers):
            self.workers.append(self._start(f"worker{i}", "worker", self.address, "--nthreads", "1", "--host",
                                            "127.0.0.1", "--no-dashboard", *([] if nanny else ["--no-nanny"])))
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dask_cluster(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_stores(a: Path, b: Path) -> None:
    """Every video, array by array, with equal records (timing aside), and the same failures."""
    with FlowStore(a) as x, FlowStore(b) as y:
        assert x.video_ids == y.video_ids and x.expected_ids == y.expected_ids
        assert x.failures == y.failures
        for vid in x.video_ids:
            n = x.num_frames(vid)
            assert np.array_equal(x.read_rgb(vid, range(n)), y.read_rgb(vid, range(n))), vid
            assert np.array_equal(x.read_flow(vid, range(n - 1)), y.read_flow(vid, range(n - 1))), vid
            rx, ry = ({k: v for k, v in s.record(vid).items() if k not in TIMING} for s in (x, y))
            assert rx == ry, vid


@needs_dask
def test_a_cluster_run_equals_a_local_run(dask_cluster, tmp_path):
    """Videos as tasks on 2 workers: the same store as `--jobs 2`, bad files included; workers without a
    GPU are refused for --device cuda with a clear message."""
    videos = make_dataset(tmp_path / "videos")
    common = ["--videos", videos, "--size", SIZE, "--algo", "farneback", "--codec", "raw", "--no-progress"]
    local = run_cli("extract", *common, "--out", tmp_path / "local.h5", "--jobs", 2)
    assert local.exit_code == 1 and "failed 5" in local.output
    dask_cluster.start()
    remote = run_cli("extract", *common, "--out", tmp_path / "dask.h5", "--scheduler", dask_cluster.address)
    assert remote.exit_code == 1 and "expected 11, done 6" in remote.output and "failed 5" in remote.output
    assert f"Dask scheduler {dask_cluster.address}; dashboard: " in remote.stderr
    assert "Dask: 2 worker(s), 2 thread(s)" in remote.stderr
    assert_same_stores(tmp_path / "local.h5", tmp_path / "dask.h5")
    assert not (tmp_path / "dask.h5.parts").exists()
    cuda = run_cli("extract", *common, "--out", tmp_path / "cuda.h5", "--scheduler", dask_cluster.address,
                   "--backend", "torch", "--device", "cuda")
    import torch

    if not torch.cuda.is_available():  # a GPU-less client is not refused, its GPU-less workers are
        assert cuda.exit_code == 1, cuda.output
        assert "has no CUDA device for --device cuda; start the workers on GPU machines" in cuda.output


def _wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _extract_cmd(videos: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out), "--size",
            "96x72", "--algo", "tvl1", "--scheduler", address, "--no-progress"]


@needs_dask
def test_a_worker_killed_mid_run_has_its_video_redone_elsewhere(dask_cluster, tmp_path):
    """SIGKILL of a worker process while it runs a video: the scheduler gives that video to the other worker,
    the run completes with every video, and the store is whole."""
    from distributed import Client

    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=4, frames=8)
    dask_cluster.start(nanny=False)  # no nanny: the killed worker stays gone
    out = tmp_path / "flows.h5"
    run = subprocess.Popen(_extract_cmd(videos, out, dask_cluster.address), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    with Client(dask_cluster.address, timeout=30) as client:
        pids = client.run(os.getpid)
        busy = {}
        _wait_for(lambda: busy.update(client.processing()) or any(busy.values()), what="a task on a worker")
        victim = next(w for w, keys in busy.items() if keys)
        os.kill(pids[victim], signal.SIGKILL)
        _wait_for(lambda: victim not in client.nthreads(), what="the scheduler to notice the lost worker")
        assert len(client.nthreads()) == 1
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stdout + stderr
    assert "expected 8, done 8" in stdout and "failed 0" in stdout
    with FlowStore(out) as store:
        assert len(store) == 8 and all(store.num_flows(v) == 7 for v in store.video_ids)
    assert run_cli("verify", out, "--no-progress").exit_code == 0


@needs_dask
@pytest.mark.slow
def test_a_worker_of_other_versions_that_joins_late_computes_nothing(dask_cluster, tmp_path):
    """A worker that joins after the start-of-run check (as `cluster.adapt` adds them) with another OpenCV:
    each task checks its worker's fingerprint and refuses there, the videos run on the matching worker, the
    run ends with every video done, and the refused worker is named. ~75 s on 2 shared cores."""
    from distributed import Client

    videos = tmp_path / "videos"
    for i in range(24):
        moving_video(videos / f"C{i % 2}" / f"v{i:02d}.avi", n=12, w=96, h=72, dx=1.0, seed=i)
    out = tmp_path / "flows.h5"
    dask_cluster.start(workers=1)
    run = subprocess.Popen(_extract_cmd(videos, out, dask_cluster.address), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dask_cluster.env)
    try:
        parts = out.with_name(out.name + ".parts")
        _wait_for(lambda: len(list(parts.glob("*.h5"))) >= 1 or run.poll() is not None, what="a first part")
        assert run.poll() is None, run.communicate()
        dask_cluster.add_worker("--preload", str(ROOT / "tests" / "dask_other_versions.py"))
        with Client(dask_cluster.address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stdout + stderr
    assert "expected 24, done 24" in stdout
    assert "joined with other versions (opencv 0.0-other (here" in stderr, stderr
    assert "it computes nothing of this run" in stderr


@needs_dask
def test_with_no_matching_worker_left_the_videos_fail_with_the_reason():
    """Every worker refused: the task's videos come back as Failures naming the workers and the fix."""
    from collections import deque

    from flowprep.executors.cluster import WorkerMismatch, _outcomes, _Unit
    from flowprep.outcomes import Failure, VideoTask

    class Refused:
        def result(self):
            raise WorkerMismatch("tcp://10.0.0.9:4000", "opencv 0.0 (here 4.14.0)")

    class OneWorker:
        def nthreads(self):
            return {"tcp://10.0.0.9:4000": 1}

    unit = _Unit([VideoTask("v1", "/data/C/v1.avi", "C/v1.avi", "C", 0)])
    waiting, refused = deque(), {}
    outcomes = _outcomes(Refused(), unit, waiting, deque(), refused, OneWorker())
    assert refused == {"tcp://10.0.0.9:4000": "opencv 0.0 (here 4.14.0)"} and not waiting
    assert len(outcomes) == 1 and isinstance(outcomes[0], Failure)
    assert ("no Dask worker with this run's versions is left (tcp://10.0.0.9:4000: opencv 0.0 (here 4.14.0)); "
            "install the same versions on every worker") in outcomes[0].reason

    class TwoWorkers:
        def nthreads(self):
            return {"tcp://10.0.0.9:4000": 1, "tcp://10.0.0.10:4000": 1}

    assert _outcomes(Refused(), unit, waiting, deque(), refused, TwoWorkers()) == [] and list(waiting) == [unit]


@needs_dask
def test_the_client_killed_then_rerun_resumes(dask_cluster, tmp_path):
    """SIGKILL of the extract process (the client, the one writer): the re-run on the same cluster keeps every
    finished part and does only the rest; nothing half-written has a final name."""
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=4, frames=8)
    dask_cluster.start()
    out, parts = tmp_path / "flows.h5", tmp_path / "flows.h5.parts"
    cmd = _extract_cmd(videos, out, dask_cluster.address)
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    _wait_for(lambda: len(list(parts.glob("*.h5"))) >= 2, what="two finished parts")
    run.kill()
    run.wait()
    finished = {p.name for p in parts.glob("*.h5")}
    assert 2 <= len(finished) < 8, "the run should have been killed part-way"
    assert not out.exists()
    rerun = subprocess.run(cmd + ["--summary-json", str(tmp_path / "s.json")], capture_output=True, text=True,
                           cwd=tmp_path, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["skipped"] == len(finished) and summary["done"] == 8
    assert summary["flows"] == 7 * (8 - len(finished))
    assert not parts.exists()
    assert run_cli("verify", out, "--no-progress").exit_code == 0


@needs_dask
def test_a_lost_scheduler_stops_the_run_with_one_line_and_keeps_the_parts(dask_cluster, tmp_path):
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=4, frames=8)
    dask_cluster.start()
    parts = tmp_path / "flows.h5.parts"
    run = subprocess.Popen(_extract_cmd(videos, tmp_path / "flows.h5", dask_cluster.address),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _wait_for(lambda: len(list(parts.glob("*.h5"))) >= 1, what="a finished part")
    os.killpg(dask_cluster.procs[0].pid, signal.SIGKILL)  # the scheduler
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1
    assert ("Error: this process lost the connection to the Dask scheduler; the videos finished so far are kept: "
            "re-run the same command, once the scheduler is back, to resume") in stderr.splitlines()
    assert "Traceback" not in stderr and list(parts.glob("*.h5")) and not (tmp_path / "flows.h5").exists()


def _abort_on_v_0_1(task, settings):
    """The per-video work, except that video v_0_1 kills its worker by SIGABRT, as a native crash would."""
    from flowprep.work import extract_video

    if task.video_id == "v_0_1":
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.abort()
    return extract_video(task, settings)


@needs_dask
def test_a_video_that_kills_its_workers_fails_alone(tmp_path):
    """local:2, one video crashing every worker that runs it: Dask's KilledWorker becomes a Failure naming the
    cause (after one more try), every other video is stored, and the next run resumes."""
    import dask

    from flowprep.executors.cluster import cluster_executor
    from flowprep.video.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    videos = make_dataset(tmp_path / "v", bad=False, classes=2, per_class=2, frames=4)
    cfg = ExtractConfig(videos=videos, out=tmp_path / "f.h5", algo="farneback", resize=parse_size(SIZE),
                        progress=False, scheduler="local:2")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # KilledWorker at the first death
        summary = extract(cfg, executor=cluster_executor(cfg, work=_abort_on_v_0_1))
    assert summary.done == 3 and [f["video_id"] for f in summary.failed] == ["v_0_1"]
    reason = summary.failed[0]["reason"]
    assert str(videos / "Class0" / "v_0_1.avi") in reason and "KilledWorker" in reason
    again = run_cli("extract", "--videos", videos, "--out", tmp_path / "f.h5", "--size", SIZE, "--algo",
                    "farneback", "--no-progress", "--scheduler", "local:2")
    assert again.exit_code == 0 and "done 4 (3 from earlier runs)" in again.output


@needs_dask
def test_torch_backend_runs_chunks_on_the_workers(tmp_path):
    """--backend torch (here on CPU, as a GPU worker would run it): chunks of videos through DeviceRun on the
    workers give the same store as the local device run."""
    videos = make_dataset(tmp_path / "videos", bad=True, classes=2, per_class=2, frames=5)
    common = ["--videos", videos, "--size", SIZE, "--algo", "farneback", "--backend", "torch", "--device", "cpu",
              "--jobs", 2, "--batch-size", 8, "--no-progress"]
    assert run_cli("extract", *common, "--out", tmp_path / "local.h5").exit_code == 1
    remote = run_cli("extract", *common, "--out", tmp_path / "dask.h5", "--scheduler", "local:2")
    assert remote.exit_code == 1 and "done 4" in remote.output and "failed 5" in remote.output
    assert_same_stores(tmp_path / "local.h5", tmp_path / "dask.h5")


@needs_dask
@pytest.mark.parametrize("args,message", [
    (["--scheduler", "foo://host:1"], "is not a Dask scheduler address; give tcp://HOST:PORT"),
    (["--scheduler", "tcp://host:99999"], "the port is not a number from 1 to 65535"),
    (["--scheduler", "tcp://:8786"], "is not a Dask scheduler address"),
    (["--scheduler", "local:0"], "N of local:N must be a whole number of workers >= 1"),
    (["--scheduler", "local:two"], "N of local:N must be a whole number"),
    (["--scheduler", "local:2", "--device", "auto"], "give --device cpu or --device cuda"),
    (["--scheduler", "local:2", "--gpus", "0"], "start one worker per GPU"),
    (["--scheduler", "local:2", "--device", "cuda", "--backend", "torch"], "every worker on the same GPU"),
])
def test_misuse_exits_2_before_touching_anything(tmp_path, args, message):
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                      "--no-progress", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_dask_is_imported_only_with_scheduler():
    code = ("import sys, flowprep.cli, flowprep.pipeline, flowprep.executors.cluster; "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.strip() == "[]"


def test_without_dask_the_message_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else find_spec(name, *a))
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                      "--scheduler", "tcp://127.0.0.1:8786"])
    assert result.exit_code == 2
    assert "--scheduler needs distributed, which is not installed: pip install 'twostream-toolkit[dask]'" \
        in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


@needs_dask
def test_an_unreachable_scheduler_is_one_line_before_any_file(tmp_path):
    """Nothing listening: exit 1 with one line naming the address, and no store, parts or lock. A client
    without a GPU may ask for --device cuda: the workers are the ones that need one."""
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    address = f"tcp://127.0.0.1:{free_port()}"
    for extra in ([], ["--backend", "torch", "--device", "cuda"]):
        result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                          "--scheduler", address, *extra])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            f"Error: cannot reach the Dask scheduler at {address} (Connection refused); start it "
            "(`dask scheduler`) or check --scheduler"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


class _Listener:
    """A TCP server on 127.0.0.1 that is not a Dask scheduler: it accepts and never answers ("silent"), or
    answers like a web server ("http"). Runs in a thread of the test process."""

    def __init__(self, mode: str):
        import threading

        self.mode, self.conns = mode, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.conns.append(conn)
            if self.mode == "http":
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
                                 b"\r\nBad Request")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@needs_dask
@pytest.mark.parametrize("mode,message", [
    ("silent", "accepts connections but gives no Dask handshake within 1 s: it is not a Dask scheduler"),
    ("http", "answers, but not as a Dask scheduler (its reply is not Dask's protocol: an HTTP server?)"),
])
def test_a_scheduler_address_that_is_no_dask_scheduler_is_one_line(tmp_path, monkeypatch, mode, message):
    """A listener that never answers used to be waited for forever in silence; an HTTP server's reply was
    read as a frame length ("Unable to allocate 3.07 EiB", a traceback). Now: a bounded handshake, exit 1,
    one line, nothing written."""
    import flowprep.executors.scheduler as scheduler

    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", 1.0)
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    listener = _Listener(mode)
    try:
        start = time.monotonic()
        result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                          "--scheduler", listener.address, "--no-progress"])
        took = time.monotonic() - start
    finally:
        listener.close()
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {listener.address} ") and message in lines[0], lines
    assert "EiB" not in result.output and "Traceback" not in result.output
    assert took < 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


class _FakeClient:
    """What check_workers asks of a distributed.Client: the workers' threads and what each one answers."""

    def __init__(self, answers):
        self.answers = answers

    def nthreads(self):
        return {w: 1 for w in self.answers}

    def run(self, function, *args, on_error="raise"):
        return self.answers


def _facts(sees: bool = True, **versions):
    from flowprep.settings import compute_versions

    return {"versions": {**compute_versions("opencv"), **versions}, "sees": sees}


@pytest.mark.parametrize("answer,message", [
    (ModuleNotFoundError("No module named 'flowprep'"), "cannot run flowprep (ModuleNotFoundError: No module "
                                                        "named 'flowprep'); install twostream-toolkit"),
    (_facts(opencv="4.0.0"), "has other versions: opencv 4.0.0 (here"),
    (_facts(sees=False), "cannot see /data/v.avi: the videos must be at the same path on every worker"),
])
def test_workers_that_cannot_run_the_extraction_are_named(answer, message):
    from flowprep.executors.cluster import Scheduler, check_workers
    from flowprep.errors import ClusterError
    from flowprep.settings import RunSettings

    settings = RunSettings("farneback", {}, "opencv", "cpu")
    client = _FakeClient({"tcp://10.0.0.7:4000": _facts(), "tcp://10.0.0.8:4000": answer})
    with pytest.raises(ClusterError, match="Dask worker tcp://10.0.0.8:4000 ") as info:
        check_workers(client, Scheduler("tcp://10.0.0.1:8786"), settings, "/data/v.avi")
    assert message in str(info.value)
