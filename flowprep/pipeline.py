"""`flowprep extract`: a folder of videos -> one resumable HDF5 flow store (or one shard of it)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flowprep import __version__
from flowprep.decode import INTERPOLATION, Resize, VideoReader, source_record
from flowprep.errors import OptionError, StoreError, VideoError
from flowprep.flow import OpenCVFlow, resolve_device
from flowprep.params import ALGORITHMS, BACKENDS, resolve_params
from flowprep.quantize import DEFAULT_BOUND, ROUNDING_RULE, quantize
from flowprep.store import (CODECS, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY, FLOW_LAYOUT, INDEX_CONVENTION,
                            PartWriter, assemble, incompatibilities, part_key, part_record, part_result, read_contents,
                            read_header, started_marker, write_failure, writer_lock)

# Tests only: the id of a video whose worker process calls os.abort(), standing in for a native crash in
# FFmpeg or OpenCV (which no small test input triggers reliably).
ABORT_HOOK = "FLOWPREP_TEST_ABORT_VIDEO"
# FFmpeg prints a line per damaged packet into the progress bar; a failed video's reason is recorded anyway.
# Set these variables yourself to see the decoder's messages again (e.g. OPENCV_FFMPEG_LOGLEVEL=24).
OPENCV_NAMES = {"tvl1": "DualTVL1", "farneback": "calcOpticalFlowFarneback", "dis": "DISOpticalFlow"}
QUIET_DECODER_ENV = {"OPENCV_FFMPEG_LOGLEVEL": "-8", "OPENCV_LOG_LEVEL": "ERROR"}


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `flowprep extract` needs; the data-affecting part is recorded in the store."""

    videos: Path
    out: Path
    algo: str = "tvl1"
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    backend: str | None = None  # "opencv" (CPU default) or "torch" (batched; the only one on CUDA)
    batch_size: int = 32  # frame pairs per flow call with the torch backend
    gpus: tuple[int, ...] | None = None  # CUDA devices to use; default: all visible
    bound: float = DEFAULT_BOUND
    codec: str = DEFAULT_CODEC
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    resize: Resize = Resize()
    jobs: int = 1
    shard: tuple[int, int] = (1, 1)  # (I, N), 1-based
    dataset: str = "auto"
    splits_dir: Path | None = None
    overwrite: bool = False
    allow_missing: bool = False  # split files may name videos that are not on disk
    progress: bool = True

    def __post_init__(self):
        for name in ("videos", "out", "splits_dir"):  # accept str paths from Python callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def validate(self) -> None:
        """Check every option before any file is touched; OptionError names the option and what it allows."""
        if self.algo not in ALGORITHMS:
            raise OptionError(f"unknown --algo {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        resolve_params(self.algo, self.params, backend=self.resolved_backend)
        if self.codec not in CODECS:
            raise OptionError(f"unknown --codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise OptionError(f"--jpeg-quality must be 1..100, got {self.jpeg_quality}")
        if not math.isfinite(self.bound) or self.bound <= 0:
            raise OptionError(f"--bound must be a positive, finite number of pixels, got {self.bound}")
        i, n = self.shard
        if not (n >= 1 and 1 <= i <= n):
            raise OptionError(f"--shard must be I/N with 1 <= I <= N, got {i}/{n}")
        if self.jobs < 1:
            raise OptionError(f"--jobs must be at least 1, got {self.jobs}")
        if self.backend not in (None, *BACKENDS):
            raise OptionError(f"unknown --backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.implementation()  # --device cuda without a GPU, --backend opencv on cuda

    @property
    def resolved_device(self) -> str:
        """'cpu' or 'cuda' ('auto' resolved); 'cuda' without a GPU raises OptionError."""
        return resolve_device(self.device)

    @property
    def resolved_backend(self) -> str:
        if self.backend:
            if self.backend == "opencv" and self.resolved_device != "cpu":
                raise OptionError("--backend opencv runs on CPU only; use --backend torch with --device cuda")
            return self.backend
        return "opencv" if self.resolved_device == "cpu" else "torch"

    def devices(self) -> list[str]:
        """Torch devices the batched backend runs on: each GPU asked for (or all visible), or ['cpu']."""
        if self.resolved_device == "cpu":
            return ["cpu"]
        import torch

        count = torch.cuda.device_count()
        ids = list(self.gpus) if self.gpus else list(range(count))
        bad = [i for i in ids if not 0 <= i < count]
        if bad:
            raise OptionError(f"--gpus {','.join(map(str, ids))}: no such CUDA device {bad}; "
                                f"{count} visible (0..{count - 1})")
        return [f"cuda:{i}" for i in ids]

    @property
    def store_path(self) -> Path:
        """The file this run writes: --out, or a per-shard name beside it."""
        i, n = self.shard
        if n == 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}-{i}of{n}{self.out.suffix or '.h5'}")

    def implementation(self) -> str:
        """Which code computed the flow: it is part of what must agree on resume and merge."""
        if self.resolved_backend == "opencv":
            return f"opencv-{OPENCV_NAMES[self.algo]}-cpu"
        return f"flowprep-torch-{self.algo}-{self.resolved_device}"

    def recorded(self) -> dict[str, Any]:
        """The config written into the store: every setting that shaped the data, and tool versions."""
        import cv2
        import h5py

        return {
            "algo": self.algo,
            "params": resolve_params(self.algo, self.params),
            "implementation": self.implementation(),
            "flow_input": "gray uint8 (cv2.COLOR_RGB2GRAY) of the resized frames",
            "bound": float(self.bound),
            "rounding": ROUNDING_RULE,
            "dequantize": "v = u8 * 2b / 255 - b",
            "codec": self.codec,
            "jpeg_quality": int(self.jpeg_quality) if self.codec == "jpeg" else None,
            "size": self.resize.describe(),
            "interpolation": INTERPOLATION,
            "index_convention": INDEX_CONVENTION,
            "flow_layout": FLOW_LAYOUT,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "versions": {"flowprep": __version__, "opencv": cv2.__version__, "numpy": np.__version__,
                         "h5py": h5py.__version__, "python": sys.version.split()[0]},
        }


@dataclass
class ExtractSummary:
    """Outcome of a run: expected / done / failed, with reasons, and timing."""

    store: Path
    expected: int
    done: int
    skipped: int  # finished in an earlier run, not redone
    failed: list[dict[str, str]]
    removed: int = 0  # in the store before, no longer in the dataset: dropped from the store
    redone: int = 0  # finished before, but the file changed (size) or moved class: extracted again
    frames: int = 0
    flows: int = 0
    seconds: float = 0.0
    flow_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.done == self.expected


def shard_ids(ids: list[str], shard: tuple[int, int]) -> list[str]:
    """Deterministic 1/N of the sorted ids: every N-th one, starting at I-1."""
    i, n = shard
    return sorted(ids)[i - 1::n]


class _ParentGone(Exception):
    """The extract process that dispatched a video is gone (SIGKILL): its worker stops without writing."""


def _abort_for_tests() -> None:
    """ABORT_HOOK: die by SIGABRT as a native crash would, without leaving a core file behind."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


def extract_video(path: str, video_id: str, parts_dir: str, config: dict[str, Any],
                  resize: Resize, min_frames: int = 2) -> dict[str, Any]:
    """Decode, compute flow, quantise and write one video as a part file. Never raises for bad input.

    Runs in a worker process. While it works, the video's ``.started`` marker exists in ``parts_dir``, so a
    crash of this process points at the video. ``config["_parent_pid"]``: the dispatching process; when the
    worker's parent changes (it was killed), the video is abandoned without writing anything.
    Returns {"video_id", "ok", "frames", "flows", "seconds", "flow_seconds", "reason"}.
    """
    import cv2

    cv2.setNumThreads(1)  # one core per job: --jobs sets the parallelism
    start = time.perf_counter()
    marker = started_marker(parts_dir, video_id)
    marker.write_text(f"{os.getpid()}\n")
    parent = config.get("_parent_pid")
    bound = config["bound"]
    writer = None
    result = {"video_id": video_id, "path": path, "ok": False, "frames": 0, "flows": 0, "reason": ""}
    flow_seconds, clipped, values, prev = 0.0, 0, 0, None
    try:
        if video_id == config.get("_abort_video"):
            _abort_for_tests()
        flow_fn = OpenCVFlow(config["algo"], **config["params"])
        size = None
        source = source_record(path)
        reader = VideoReader(path, resize)
        writer = PartWriter(parts_dir, video_id, config)
        for rgb in reader:
            if parent is not None and os.getppid() != parent:
                raise _ParentGone
            writer.add_rgb(rgb)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            size = gray.shape
            if prev is not None:
                t = time.perf_counter()
                flow = flow_fn(prev, gray)
                flow_seconds += time.perf_counter() - t
                clipped += int(np.count_nonzero(np.abs(flow) >= bound))
                values += flow.size
                writer.add_flow(quantize(flow, bound))
            prev = gray
            result["frames"] += 1
        if result["frames"] < min_frames:
            raise VideoError(f"{path}: decoded {result['frames']} frame(s); at least {min_frames} are needed "
                             "for one flow field (empty, damaged or not a video)")
        info = reader.info
        record = {"path": config["_relpaths"][video_id], "fps": info.fps, "source_width": info.width,
                  "source_height": info.height, **reader.count_record(), **source,
                  "width": size[1], "height": size[0],
                  "clipped_fraction": clipped / max(values, 1),
                  "seconds": time.perf_counter() - start, "flow_seconds": flow_seconds}
        record.update(config["_labels"].get(video_id, {}))
        writer.finish(record)
        result.update(ok=True, flows=result["frames"] - 1)
    except _ParentGone:
        if writer is not None:
            writer.abort()
        result["reason"] = "abandoned: the extract process that started it is gone"
        result["abandoned"] = True
    except VideoError as exc:
        if writer is not None:
            writer.abort()
        result["reason"] = str(exc)
        write_failure(parts_dir, video_id, config["_relpaths"][video_id], str(exc))
    except Exception as exc:  # an unexpected failure of one video must not end the dataset run
        if writer is not None:
            writer.abort()
        result["reason"] = f"{path}: {type(exc).__name__}: {exc}"
        write_failure(parts_dir, video_id, config["_relpaths"][video_id], result["reason"])
    finally:
        marker.unlink(missing_ok=True)
    if result.get("abandoned") and config.get("_exit_when_orphaned", True):
        os._exit(0)  # an orphaned worker would otherwise wait for more work from a parent that is gone
    result["seconds"] = time.perf_counter() - start
    result["flow_seconds"] = flow_seconds
    return result


def _class_change(old: list[str], new: list[str]) -> str:
    """How two class lists differ, for a message; empty when they are equal."""
    if old == new:
        return ""
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    parts = ([f"added {', '.join(added)}"] if added else []) + ([f"removed {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or "the same classes in another order"


def _prepare_out(cfg: ExtractConfig, recorded: dict[str, Any], classes: list[str]
                 ) -> tuple[Path, Path, dict[str, Any] | None]:
    """Check or reset the output; returns (store path, parts folder, previous store's contents or None).

    Refuses a store or unfinished work made with other settings, or for a dataset with other classes (the
    labels of what is there would no longer match).
    """
    from data_manifest import Manifest

    store = cfg.store_path
    parts = store.with_name(store.name + ".parts")
    if cfg.overwrite:
        store.unlink(missing_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
    store.with_name(store.name + ".tmp").unlink(missing_ok=True)  # an assembly that was killed
    previous = None
    if store.exists():
        try:
            header = read_header(store)
        except Exception as exc:
            raise StoreError(f"{store} exists but is not a readable flow store ({exc}); "
                             "move it away or pass --overwrite") from exc
        if header.get("kind") == "master":
            raise StoreError(f"{store} is a master file written by `flowprep merge` (it lists shard files and "
                             "holds no videos); give extract another --out, or pass --overwrite to replace it")
        if header.get("kind") != "store" or not header.get("complete"):
            raise StoreError(f"{store} exists but is not a finished flow store (kind={header.get('kind')!r}); "
                             "move it away or pass --overwrite")
        diff = incompatibilities(header["config"], recorded)
        if diff:
            raise StoreError(f"{store} was made with other settings ({'; '.join(diff)}); "
                             "pass --overwrite to start over or choose another --out")
        try:
            previous = read_contents(store)
            old_classes = Manifest.from_text(previous["manifest"], source=f"{store}:/manifest").classes
        except Exception as exc:
            raise StoreError(f"{store}: its metadata cannot be read ({type(exc).__name__}: {exc}); "
                             "pass --overwrite to start over") from exc
        change = _class_change(old_classes, classes)
        if change:
            raise StoreError(f"{store} was extracted from a dataset with other classes ({change}), so the labels "
                             "of its videos no longer match; pass --overwrite to start over, or restore the "
                             "dataset's class folders")
    try:
        parts.mkdir(exist_ok=True)
        # what the unfinished work was made with: its settings and its dataset's classes must still hold
        for name, now, differ, what in (
                ("config.json", recorded, lambda a, b: "; ".join(incompatibilities(a, b)), "made with other settings"),
                ("classes.json", classes, _class_change, "for a dataset with other classes")):
            file = parts / name
            if not file.exists():
                file.write_text(json.dumps(now, indent=1, sort_keys=True))
            elif change := differ(json.loads(file.read_text()), now):
                raise StoreError(f"{parts} holds unfinished work {what} ({change}); pass --overwrite to start "
                                 "over")
        for tmp in parts.glob("*.tmp"):  # files of a killed run, never renamed, never counted
            tmp.unlink(missing_ok=True)
        for marker in parts.glob("*.started"):  # a killed run's; a crash is dealt with by the run that saw it
            marker.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write {parts}: {exc.strerror or exc}; choose an --out in a folder you can "
                         "write to") from exc
    return store, parts, previous


def _unchanged(record: dict[str, Any], entry, root: Path) -> bool:
    """Whether a finished video still stands for the dataset's video ``entry``: same path, class and label,
    and a source of the same size (when recorded). Modification times are not compared: copying a dataset
    changes them all, and redoing it would cost hours; a re-encoded file changes its size."""
    if (record.get("path"), record.get("class_name"), record.get("label")) != (entry.path, entry.class_name,
                                                                                entry.label):
        return False
    if "source_bytes" not in record:  # stores written before sizes were recorded
        return True
    try:
        return (root / entry.path).stat().st_size == record["source_bytes"]
    except OSError:
        return False


def _quiet_decoders() -> None:
    """Silence FFmpeg's per-packet warnings in this process and in the workers it starts (see
    QUIET_DECODER_ENV); a setting the user made is kept."""
    import cv2

    for key, value in QUIET_DECODER_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["OPENCV_LOG_LEVEL"] == QUIET_DECODER_ENV["OPENCV_LOG_LEVEL"]:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # cv2 is imported already


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run the extraction described by ``cfg``; resumable, one failure never stops the run.

    Raises OptionError for bad settings, ManifestError for a dataset that cannot be read, StoreError for an
    output that cannot be used (locked by another run, made with other settings or classes, not writable).
    """
    from data_manifest import build_manifest

    cfg.validate()
    recorded = cfg.recorded()
    t0 = time.perf_counter()
    manifest = build_manifest(cfg.videos, dataset=cfg.dataset, splits_dir=cfg.splits_dir,
                              allow_missing=cfg.allow_missing)
    expected = shard_ids([r.video_id for r in manifest.records], cfg.shard)
    if cfg.store_path.is_dir():
        raise OptionError(f"--out {cfg.store_path} is a folder; give a file name such as "
                          f"{cfg.store_path / 'flows.h5'}")
    _quiet_decoders()
    with writer_lock(cfg.store_path):
        return _extract_locked(cfg, manifest, expected, recorded, t0)


def _extract_locked(cfg: ExtractConfig, manifest, expected: list[str], recorded: dict[str, Any],
                    t0: float) -> ExtractSummary:
    """extract() once this process holds the store's writer lock."""
    store, parts, old = _prepare_out(cfg, recorded, list(manifest.classes))
    by_id = {r.video_id: r for r in manifest.records}
    wanted = set(expected)
    old_records = old["records"] if old else {}
    # videos of the previous store that still stand for the dataset's videos are kept, the others dropped
    keep = {v for v, rec in old_records.items() if v in wanted and _unchanged(rec, by_id[v], cfg.videos)}
    gone = [v for v in old_records if v not in wanted]
    redone = [v for v in old_records if v in wanted and v not in keep]
    part_ids = {}
    for vid in expected:
        part = parts / f"{part_key(vid)}.h5"
        if not part.exists():
            continue
        rec = part_record(parts, vid)
        if vid in keep or rec is None or not _unchanged(rec, by_id[vid], cfg.videos):
            part.unlink()  # already in the store (killed after assembly, before clean-up), damaged, or stale
        else:
            part_ids[vid] = part
    for stale in parts.glob("*.failed.json"):  # failures are retried on every run
        stale.unlink()
    todo = [v for v in expected if v not in keep and v not in part_ids]
    skipped = len(expected) - len(todo)

    job_config = dict(recorded, _relpaths={v: by_id[v].path for v in todo},
                      _labels={v: {"class_name": by_id[v].class_name, "label": by_id[v].label} for v in todo},
                      _abort_video=os.environ.get(ABORT_HOOK))
    if cfg.resolved_backend == "torch":
        results = run_batched(todo, cfg.videos, by_id, parts, job_config, cfg)
    else:
        results = run_jobs(todo, cfg.videos, by_id, parts, job_config, cfg)

    failed = sorted(({"video_id": r["video_id"], "path": by_id[r["video_id"]].path, "reason": r["reason"]}
                     for r in results if not r["ok"]), key=lambda f: f["video_id"])
    new_parts = sorted(set(part_ids.values()) | {parts / f"{part_key(r['video_id'])}.h5" for r in results if r["ok"]})
    manifest_text = manifest.to_text()
    # the store is rewritten whenever what it would say changed, not only when there are new videos
    same_as_before = (old is not None and not new_parts and keep == set(old_records)
                      and old["manifest"] == manifest_text and old["expected_ids"] == expected
                      and old["failures"] == failed)
    if not same_as_before:
        try:
            assemble(store, new_parts, store if old else None, recorded, manifest_text, expected, failed,
                     keep=keep)
        except OSError as exc:
            raise StoreError(f"writing {store} failed ({exc}); free space or fix permissions and re-run the same "
                             f"command: finished videos are kept in {parts}") from exc
    shutil.rmtree(parts, ignore_errors=True)
    done = len(keep) + len(new_parts)
    return ExtractSummary(store=store, expected=len(expected), done=done, skipped=skipped, failed=failed,
                          removed=len(gone), redone=len(redone),
                          frames=sum(r["frames"] for r in results if r["ok"]),
                          flows=sum(r["flows"] for r in results if r["ok"]),
                          seconds=time.perf_counter() - t0,
                          flow_seconds=sum(r.get("flow_seconds", 0.0) for r in results))


def _exit_text(code: int | None) -> str:
    """How a process ended, for a failure reason: 'signal 6, SIGABRT' or 'exit status 1'."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        oom = "; the system may have run out of memory" if -code == signal.SIGKILL else ""
        return f"signal {-code}, {name}{oom}"
    return f"exit status {code}"


def _run_alone(calls: list[tuple], jobs: int, on_done: Callable[[dict[str, Any]], None]) -> None:
    """Run extract_video once per call, each in a process of its own (at most ``jobs`` at a time), so a crash
    takes only its own video with it; a video that crashes here is recorded as failed with the signal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # this process has threads (loky, tqdm): forking it is not safe
    waiting, running = list(calls), {}
    while waiting or running:
        while waiting and len(running) < jobs:
            call = waiting.pop(0)
            proc = ctx.Process(target=extract_video, args=call, daemon=True)
            proc.start()
            running[proc] = (call, time.perf_counter())
        for proc in list(running):
            proc.join(timeout=0.05)
            if proc.exitcode is None:
                continue
            (path, vid, parts_dir, config, _), start = running.pop(proc)
            res = part_result(parts_dir, vid)
            if res is None:
                res = {"ok": False, "frames": 0, "flows": 0,
                       "reason": f"{path}: the decoder/flow process crashed ({_exit_text(proc.exitcode)}) "
                                 "while extracting this video alone; check the file with ffprobe or re-encode "
                                 "it (if every video crashes, suspect the --param values)"}
                started_marker(parts_dir, vid).unlink(missing_ok=True)
                write_failure(parts_dir, vid, config["_relpaths"][vid], res["reason"])
            on_done(dict(res, video_id=vid, seconds=time.perf_counter() - start, flow_seconds=0.0))


def run_jobs(todo: list[str], root: Path, by_id: dict, parts: Path, job_config: dict[str, Any],
             cfg: ExtractConfig) -> list[dict[str, Any]]:
    """Run extract_video over ``todo`` in ``cfg.jobs`` worker processes, showing videos/s, frames/s and ETA.

    A worker that dies (a native crash in FFmpeg or OpenCV, an out-of-memory kill) breaks the pool and takes
    the videos in flight with it. Those that left a result are kept; those whose started-marker survived are
    run again, each in its own process; the rest go to a fresh pool. A video that crashes alone fails.
    """
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from joblib.externals.loky import get_reusable_executor

    if not todo:
        return []

    def video_config(v: str) -> dict[str, Any]:  # only this video's path and label: a task is pickled whole
        return dict(job_config, _parent_pid=os.getpid(), _relpaths={v: job_config["_relpaths"][v]},
                    _labels={v: job_config["_labels"].get(v, {})})

    calls = {v: (str(root / by_id[v].path), v, str(parts), video_config(v), cfg.resize) for v in todo}
    results: dict[str, dict[str, Any]] = {}
    bar, update = _progress_bar(len(todo), cfg)

    def done(res: dict[str, Any]) -> None:
        results[res["video_id"]] = res
        update(res["ok"], res["frames"])

    pending = list(todo)
    try:
        while pending:
            workers = min(cfg.jobs, len(pending))
            executor = get_reusable_executor(max_workers=workers)
            waiting, running = list(pending), set()
            try:
                while waiting or running:
                    while waiting and len(running) < 2 * workers:  # a short queue: workers never wait
                        running.add(executor.submit(extract_video, *calls[waiting.pop(0)]))
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        done(future.result())
                pending = []
            except BrokenProcessPool:  # loky's TerminatedWorkerError
                unfinished, pending, suspects = [v for v in pending if v not in results], [], []
                for v in unfinished:
                    res = part_result(parts, v)
                    if res is not None:  # finished before the pool broke; its result was not collected
                        done(dict(res, video_id=v, seconds=0.0, flow_seconds=0.0))
                    elif started_marker(parts, v).exists():
                        suspects.append(calls[v])
                    else:
                        pending.append(v)
                _run_alone(suspects, cfg.jobs, done)
            except BaseException:  # Ctrl-C or a bug: stop the workers rather than let them run on
                for future in running:
                    future.cancel()
                executor.shutdown(wait=False, kill_workers=True)
                raise
        # idle workers would outlive a kill -9 during the (long) assembly that follows
        executor.shutdown(wait=True)
    finally:
        bar.close()
    return list(results.values())


def _progress_bar(total: int, cfg: ExtractConfig):
    """A tqdm bar (videos/s, ETA) and an update(ok, frames) function that adds frames/s and failures."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="video", disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
    state = {"frames": 0, "failed": 0, "start": time.perf_counter()}

    def update(ok: bool, frames: int) -> None:
        state["frames"] += frames
        state["failed"] += 0 if ok else 1
        bar.update(1)
        bar.set_postfix(frames_s=f"{state['frames'] / max(time.perf_counter() - state['start'], 1e-9):.1f}",
                        failed=state["failed"])

    return bar, update


def run_batched(todo: list[str], root: Path, by_id: dict, parts: Path, job_config: dict[str, Any],
                cfg: ExtractConfig) -> list[dict[str, Any]]:
    """Run the torch backend over ``todo``: CPU decode threads, batched flow on each device."""
    from flowprep.batched import run_devices

    if not todo:
        return []
    items = [(v, str(root / by_id[v].path), by_id[v].path) for v in todo]
    bar, update = _progress_bar(len(todo), cfg)
    try:
        return run_devices(items, str(parts), job_config, cfg.resize, cfg.devices(), cfg.batch_size,
                           decoders=max(1, cfg.jobs), progress=update)
    finally:
        bar.close()


def summary_text(s: ExtractSummary) -> str:
    """Human-readable end-of-run summary naming every failure."""
    lines = [f"store: {s.store}",
             f"videos: expected {s.expected}, done {s.done} ({s.skipped} from earlier runs), failed {len(s.failed)}",
             f"this run: {s.frames} frames, {s.flows} flow fields in {s.seconds:.1f} s"
             + (f" ({s.flows / s.seconds:.1f} fields/s)" if s.seconds > 0 and s.flows else "")]
    if s.removed:
        lines.append(f"removed from the store: {s.removed} video(s) no longer in the dataset")
    if s.redone:
        lines.append(f"extracted again: {s.redone} video(s) whose file changed size or moved to another class")
    for f in s.failed:
        lines.append(f"FAILED {f['video_id']}: {f['reason']}")
    return "\n".join(lines)


def summary_json(s: ExtractSummary) -> str:
    d = asdict(s)
    d["store"] = str(s.store)
    return json.dumps(d, indent=1)
