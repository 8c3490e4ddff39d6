"""`flowprep extract`: a folder of videos -> one resumable HDF5 flow store (or one shard of it). `build_store`
holds the steps below for every way of making a store (`flowprep import` uses them too).

Data flows one way:
    plan   the manifest, the previous store and the finished parts -> a resume plan (flowprep.plan)
    work   each video to do, as a task, through one executor (CPU pool, device batcher, Dask) -> an
           EncodedVideo or a Failure (flowprep.outcomes, flowprep.work, flowprep.executors)
    parts  each finished video written by this process as a part file (flowprep.store.parts)
    store  the previous store's kept videos and the parts assembled into the store (flowprep.store.writer)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from flowprep.errors import OptionError, StoreError
from flowprep.store.parts import DiskFull, Parts, class_change
from flowprep.plan import ResumePlan, Wanted, plan_resume
from flowprep.settings import ExtractConfig, RunSettings
from flowprep.store.format import incompatibilities, open_store_file, read_config, read_contents
from flowprep.store.writer import assemble, writer_lock
from flowprep.outcomes import EncodedVideo, Executor, Failure, Outcome, Tally, Task, VideoTask

__all__ = ["ExtractConfig", "ExtractSummary", "extract", "build_store", "summary_text", "summary_json", "shard_ids"]


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
    action: str = "extract"  # or "import": what made the videos of this run
    split: str = ""  # how the manifest's splits were made, when the tool made them (Manifest.split_method)

    @property
    def ok(self) -> bool:
        return not self.failed and self.done == self.expected


def shard_ids(ids: list[str], shard: tuple[int, int]) -> list[str]:
    """Deterministic 1/N of the sorted ids: every N-th one, starting at I-1."""
    i, n = shard
    return sorted(ids)[i - 1::n]


class StoreSettings(Protocol):
    """What build_store needs of a run's settings (RunSettings, ImportSettings): the config the store records."""

    def recorded(self) -> dict[str, Any]: ...


def extract(cfg: ExtractConfig, executor: Executor[VideoTask, RunSettings, Outcome] | None = None) -> ExtractSummary:
    """Run the extraction described by ``cfg``; resumable, one failure never stops the run.

    ``executor(tasks, settings, on_outcome)`` runs the per-video work (default: `local_executor`, the
    CPU pool or the device batcher, from ``cfg``; with ``cfg.scheduler``, `flowprep.executors.cluster`'s Dask
    tasks). Raises OptionError for bad settings, ManifestError for a dataset that cannot be read,
    StoreError for an output that cannot be used (locked by another run, made with other settings or
    classes, not writable, a full disk).
    """
    from data_manifest import build_manifest
    from data_manifest.grouping import GroupRule

    cfg.validate()
    settings = cfg.settings()
    t0 = time.perf_counter()
    manifest = build_manifest(cfg.videos, dataset=cfg.dataset, splits_dir=cfg.splits_dir,
                              allow_missing=cfg.allow_missing, follow_symlinks=cfg.follow_symlinks,
                              group_rule=GroupRule(cfg.group_regex))
    expected = shard_ids([r.video_id for r in manifest.records], cfg.shard)
    if cfg.store_path.is_dir():
        raise OptionError(f"--out {cfg.store_path} is a folder; give a file name such as "
                          f"{cfg.store_path / 'flows.h5'}")
    if executor is None and cfg.scheduler is not None:
        from flowprep.executors.cluster import cluster_executor

        executor = cluster_executor(cfg)
    with writer_lock(cfg.store_path):
        return _extract_locked(cfg, settings, manifest, expected, executor or local_executor(cfg), t0)


def local_executor(cfg: ExtractConfig) -> Executor[VideoTask, RunSettings, Outcome]:
    """The executor of this machine: the CPU pool (``cfg.jobs`` processes) for the OpenCV backend, the
    batcher on each device for the torch backend."""
    def run(tasks: list[VideoTask], settings: RunSettings, on_outcome: Callable[[Outcome], None]) -> None:
        if not tasks:
            return
        if settings.backend == "opencv":
            from flowprep.executors.local import run_pool

            run_pool(tasks, settings, cfg.jobs, on_outcome)
        else:
            from flowprep.executors.device import run_devices

            run_devices(tasks, settings, cfg.devices(), cfg.batch_size, max(1, cfg.jobs), on_outcome)
    return run


def _extract_locked(cfg: ExtractConfig, settings: RunSettings, manifest, expected: list[str],
                    executor: Executor[VideoTask, RunSettings, Outcome], t0: float) -> ExtractSummary:
    """extract() once this process holds the store's writer lock."""
    by_id = {r.video_id: r for r in manifest.records}

    def wanted_of(v: str) -> Wanted:
        r = by_id[v]
        return Wanted(r.path, r.class_name, r.label, _size(cfg.videos / r.path))

    def task_of(v: str) -> VideoTask:
        r = by_id[v]
        return VideoTask(v, str(cfg.videos / r.path), r.path, r.class_name, r.label)

    def preface(tasks: list[VideoTask]) -> str:
        from flowprep.estimate import estimate_text

        return estimate_text([t.path for t in tasks], settings, None if cfg.scheduler else cfg.jobs)

    return build_store(cfg.store_path, settings, manifest, expected, wanted_of, task_of, executor,
                       overwrite=cfg.overwrite, progress=cfg.progress, t0=t0, preface=preface)


def build_store(store: Path, settings: StoreSettings, manifest, expected: list[str],
                wanted_of: Callable[[str], Wanted], task_of: Callable[[str], Task],
                executor: Executor[Task, StoreSettings, Outcome], *, overwrite: bool, progress: bool, t0: float,
                action: str = "extract", preface: Callable[[list], str] | None = None) -> ExtractSummary:
    """The steps every way of making a store shares (extract, import), once this process holds the store's
    writer lock: plan the resume from the previous store and the finished parts, run the videos to do
    through ``executor``, write each finished one as a part, assemble the store.

    settings: what the executor hands each task's work; ``settings.recorded()`` is the config the store
    holds (flowprep.settings.RunSettings, flowprep.interop.importing.ImportSettings). wanted_of(video_id): what the
    dataset says of an expected video now, asked only for the videos the previous store or a part holds.
    task_of(video_id): the task of a video to do. action: "extract" or "import", for the progress and the
    summary. preface(tasks): a line shown before the work starts (extract: how long it will take).
    """
    recorded = settings.recorded()
    parts = Parts(store, recorded)
    if overwrite:
        store.unlink(missing_ok=True)
        parts.discard()
    store.with_name(store.name + ".tmp").unlink(missing_ok=True)  # an assembly that was killed
    previous = previous_contents(store, recorded, list(manifest.classes))
    parts.open(list(manifest.classes), incompatibilities)
    stored = previous["records"] if previous else {}
    finished = parts.records(expected)
    expected_set = set(expected)
    wanted = {v: wanted_of(v) for v in (*stored, *finished) if v in expected_set}
    plan = plan_resume(expected, wanted, stored, finished)
    parts.drop(plan.drop_parts)
    tasks = [task_of(v) for v in plan.todo]
    tally = Tally()
    _run(tasks, settings, executor, parts, tally, progress, action, preface)
    failed = sorted(({"video_id": f.video_id, "path": f.path, "reason": f.reason} for f in tally.failed),
                    key=lambda f: f["video_id"])
    new_parts = sorted(parts.path(v) for v in (*plan.use_parts, *tally.written))
    manifest_text = manifest.to_text()
    if not _store_unchanged(previous, plan, new_parts, manifest_text, expected, failed):
        assemble(store, new_parts, store if previous else None, recorded, manifest_text, expected, failed,
                 keep=plan.keep)
    parts.discard()
    return ExtractSummary(store=store, expected=len(expected), done=len(plan.keep) + len(new_parts),
                          skipped=plan.skipped, failed=failed, removed=len(plan.gone), redone=len(plan.redo),
                          frames=tally.frames, flows=tally.flows, seconds=time.perf_counter() - t0,
                          flow_seconds=tally.flow_seconds, action=action,
                          split=manifest.split_method)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def previous_contents(store: Path, recorded: dict[str, Any], classes: list[str]) -> dict[str, Any] | None:
    """What the finished store at ``store`` holds (flowprep.store.format.read_contents), or None when there
    is none. Refuses one made with other settings or for other classes (its labels would no longer match),
    a master file and anything that is not a finished store."""
    from data_manifest import Manifest, ManifestError

    if not store.exists():
        return None
    fix = "pass --overwrite to start over or choose another --out"
    try:
        with open_store_file(store, kinds=("store",)) as f:
            config, contents = read_config(f, store), read_contents(f, store)
    except StoreError as exc:
        raise StoreError(f"{exc}; to replace {store.name}, {fix}") from None
    if diff := incompatibilities(config, recorded):
        raise StoreError(f"{store} was made with other settings ({'; '.join(diff)}); {fix}")
    try:
        old_classes = Manifest.from_text(contents["manifest"], source=f"{store}:/manifest").classes
    except ManifestError as exc:
        raise StoreError(f"{store}: its manifest cannot be read ({exc}); {fix}") from exc
    if change := class_change(list(old_classes), classes):
        raise StoreError(f"{store} was extracted from a dataset with other classes ({change}), so the labels "
                         "of its videos no longer match; pass --overwrite to start over, or restore the "
                         "dataset's class folders")
    return contents


def _run(tasks: list[Task], settings: StoreSettings, executor: Executor, parts: Parts, tally: Tally,
         progress: bool, action: str = "extract", preface: Callable[[list], str] | None = None) -> None:
    """Run ``tasks`` through ``executor``; each outcome is written (a part) or noted (a failure) as it comes.
    With ``progress``, first the line ``preface(tasks)`` gives (extract: how long it will take), then the bar."""
    from plumbing.progress import Progress

    with Progress(len(tasks), unit="video", desc=action, enabled=progress and bool(tasks)) as bar:
        if progress and tasks and preface is not None:
            bar.write(f"{action}: {preface(tasks)}")
        def on_outcome(outcome: Outcome) -> None:
            if isinstance(outcome, EncodedVideo):
                try:
                    parts.write(outcome)
                except DiskFull:
                    raise
                except StoreError as exc:  # a write failure of one video is recorded like a decode failure
                    outcome = Failure(outcome.video_id, outcome.record["path"], str(exc))
            tally.add(outcome)
            elapsed = max(time.perf_counter() - bar.start, 1e-9)
            bar.update(1, frames_s=f"{tally.frames / elapsed:.1f}", failed=len(tally.failed))

        executor(tasks, settings, on_outcome)


def _store_unchanged(previous: dict[str, Any] | None, plan: ResumePlan, new_parts: list[Path], manifest_text: str,
                     expected: list[str], failed: list[dict[str, str]]) -> bool:
    """Whether the store would say exactly what it says now: then it is not rewritten."""
    return (previous is not None and not new_parts and plan.keep == set(previous["records"])
            and previous["manifest"] == manifest_text and previous["expected_ids"] == expected
            and previous["failures"] == failed)


def summary_text(s: ExtractSummary) -> str:
    """Human-readable end-of-run summary naming every failure."""
    lines = [f"store: {s.store}",
             f"videos: expected {s.expected}, done {s.done} ({s.skipped} from earlier runs), failed {len(s.failed)}",
             f"this run: {s.frames} frames, {s.flows} flow fields in {s.seconds:.1f} s"
             + (f" ({s.flows / s.seconds:.1f} fields/s)" if s.seconds > 0 and s.flows else "")]
    if s.removed:
        lines.append(f"removed from the store: {s.removed} video(s) no longer in the dataset")
    if s.redone:
        what = "imported again: {} video(s) whose files changed size" if s.action == "import" else \
            "extracted again: {} video(s) whose file changed size"
        lines.append(what.format(s.redone) + " or moved to another class")
    if s.split:
        lines.append(f"split: {s.split} (data-manifest splits writes it as UCF101 split files to edit)")
    for f in s.failed:
        lines.append(f"FAILED {f['video_id']}: {f['reason']}")
    return "\n".join(lines)


def summary_json(s: ExtractSummary) -> str:
    d = asdict(s)
    d["store"] = str(s.store)
    return json.dumps(d, indent=1)
