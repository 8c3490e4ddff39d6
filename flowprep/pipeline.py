"""`flowprep extract`: a folder of videos -> one resumable HDF5 flow store (or one shard of it)."""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowprep import __version__
from flowprep.decode import INTERPOLATION, Resize, VideoReader
from flowprep.errors import FlowprepError, StoreError, VideoError
from flowprep.flow import ALGORITHMS, BACKENDS, OpenCVFlow, resolve_device, resolve_params
from flowprep.quantize import DEFAULT_BOUND, ROUNDING_RULE, quantize
from flowprep.store import (CODECS, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY, FLOW_LAYOUT, INDEX_CONVENTION,
                            PartWriter, assemble, incompatibilities, part_key, read_config, write_failure)


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
        if self.algo not in ALGORITHMS:
            raise FlowprepError(f"unknown --algo {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.codec not in CODECS:
            raise FlowprepError(f"unknown --codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise FlowprepError(f"--jpeg-quality must be 1..100, got {self.jpeg_quality}")
        if self.bound <= 0:
            raise FlowprepError(f"--bound must be positive, got {self.bound}")
        i, n = self.shard
        if not (n >= 1 and 1 <= i <= n):
            raise FlowprepError(f"--shard must be I/N with 1 <= I <= N, got {i}/{n}")
        if self.jobs < 1:
            raise FlowprepError(f"--jobs must be at least 1, got {self.jobs}")
        if self.backend not in (None, *BACKENDS):
            raise FlowprepError(f"unknown --backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.batch_size < 1:
            raise FlowprepError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def resolved_device(self) -> str:
        """'cpu' or 'cuda' ('auto' resolved); 'cuda' without a GPU raises FlowprepError."""
        return resolve_device(self.device)

    @property
    def resolved_backend(self) -> str:
        if self.backend:
            if self.backend == "opencv" and self.resolved_device != "cpu":
                raise FlowprepError("--backend opencv runs on CPU only; use --backend torch with --device cuda")
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
            raise FlowprepError(f"--gpus {','.join(map(str, ids))}: no such CUDA device {bad}; "
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
            return f"opencv-{'DualTVL1' if self.algo == 'tvl1' else 'calcOpticalFlowFarneback'}-cpu"
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


def extract_video(path: str, video_id: str, parts_dir: str, config: dict[str, Any],
                  resize: Resize, min_frames: int = 2) -> dict[str, Any]:
    """Decode, compute flow, quantise and write one video as a part file. Never raises for bad input.

    Returns {"video_id", "ok", "frames", "flows", "seconds", "flow_seconds", "reason"}.
    """
    import cv2

    cv2.setNumThreads(1)  # one core per job: --jobs sets the parallelism
    start = time.perf_counter()
    flow_fn = OpenCVFlow(config["algo"], **config["params"])
    bound = config["bound"]
    writer = None
    result = {"video_id": video_id, "path": path, "ok": False, "frames": 0, "flows": 0, "reason": ""}
    flow_seconds, clipped, values, prev = 0.0, 0, 0, None
    try:
        size = None
        reader = VideoReader(path, resize)
        writer = PartWriter(parts_dir, video_id, config)
        for rgb in reader:
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
                  "source_height": info.height, "announced_frames": info.announced_frames,
                  "width": size[1], "height": size[0],
                  "clipped_fraction": clipped / max(values, 1),
                  "seconds": time.perf_counter() - start, "flow_seconds": flow_seconds}
        record.update(config["_labels"].get(video_id, {}))
        writer.finish(record)
        result.update(ok=True, flows=result["frames"] - 1)
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
    result["seconds"] = time.perf_counter() - start
    result["flow_seconds"] = flow_seconds
    return result


def _prepare_out(cfg: ExtractConfig, recorded: dict[str, Any]) -> tuple[Path, Path, Path | None]:
    """Check or reset the output; returns (store path, parts folder, previous finished store or None)."""
    store = cfg.store_path
    parts = store.with_name(store.name + ".parts")
    if cfg.overwrite:
        store.unlink(missing_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
    store.with_name(store.name + ".tmp").unlink(missing_ok=True)  # an assembly that was killed
    store.parent.mkdir(parents=True, exist_ok=True)
    previous = None
    if store.exists():
        try:
            old = read_config(store)
        except Exception as exc:
            raise StoreError(f"{store} exists but is not a readable flow store ({exc}); "
                             "move it away or pass --overwrite") from exc
        diff = incompatibilities(old, recorded)
        if diff:
            raise StoreError(f"{store} was made with other settings ({'; '.join(diff)}); "
                             "pass --overwrite to start over or choose another --out")
        previous = store
    parts.mkdir(exist_ok=True)
    cfg_file = parts / "config.json"
    if cfg_file.exists():
        diff = incompatibilities(json.loads(cfg_file.read_text()), recorded)
        if diff:
            raise StoreError(f"{parts} holds unfinished work made with other settings ({'; '.join(diff)}); "
                             "pass --overwrite to start over")
    else:
        cfg_file.write_text(json.dumps(recorded, indent=1, sort_keys=True))
    for tmp in parts.glob("*.tmp"):  # files of a killed run, never renamed, never counted
        tmp.unlink(missing_ok=True)
    return store, parts, previous


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run the extraction described by ``cfg``; resumable, one failure never stops the run."""
    import h5py
    from data_manifest import build_manifest

    cfg.validate()
    t0 = time.perf_counter()
    manifest = build_manifest(cfg.videos, dataset=cfg.dataset, splits_dir=cfg.splits_dir,
                              allow_missing=cfg.allow_missing)
    all_ids = [r.video_id for r in manifest.records]
    expected = shard_ids(all_ids, cfg.shard)
    recorded = cfg.recorded()
    store, parts, previous = _prepare_out(cfg, recorded)

    done_before: set[str] = set()
    if previous is not None:
        with h5py.File(previous, "r") as f:
            done_before = set(f["videos"].keys())
    part_ids = {}
    for vid in expected:
        part = parts / f"{part_key(vid)}.h5"
        if part.exists() and vid in done_before:  # killed after the last assembly, before clean-up
            part.unlink()
        elif part.exists():
            part_ids[vid] = part
    for stale in parts.glob("*.failed.json"):  # failures are retried on every run
        stale.unlink()
    todo = [v for v in expected if v not in done_before and v not in part_ids]
    skipped = len(expected) - len(todo)

    by_id = {r.video_id: r for r in manifest.records}
    job_config = dict(recorded, _relpaths={v: by_id[v].path for v in todo},
                      _labels={v: {"class_name": by_id[v].class_name, "label": by_id[v].label} for v in todo})
    if cfg.resolved_backend == "torch":
        results = run_batched(todo, cfg.videos, by_id, parts, job_config, cfg)
    else:
        results = run_jobs(todo, cfg.videos, by_id, parts, job_config, cfg)

    failed = [{"video_id": r["video_id"], "path": by_id[r["video_id"]].path, "reason": r["reason"]}
              for r in results if not r["ok"]]
    new_parts = sorted(set(part_ids.values()) | {parts / f"{part_key(r['video_id'])}.h5" for r in results if r["ok"]})
    if new_parts or previous is None or failed:
        assemble(store, new_parts, previous, recorded, manifest.to_text(), expected, failed)
    shutil.rmtree(parts, ignore_errors=True)
    with h5py.File(store, "r") as f:
        done = sum(1 for v in expected if v in f["videos"])
    return ExtractSummary(store=store, expected=len(expected), done=done, skipped=skipped, failed=failed,
                          frames=sum(r["frames"] for r in results if r["ok"]),
                          flows=sum(r["flows"] for r in results if r["ok"]),
                          seconds=time.perf_counter() - t0,
                          flow_seconds=sum(r["flow_seconds"] for r in results))


def run_jobs(todo: list[str], root: Path, by_id: dict, parts: Path, job_config: dict[str, Any],
             cfg: ExtractConfig) -> list[dict[str, Any]]:
    """Run extract_video over ``todo`` with joblib, showing videos/s, frames/s and ETA."""
    from joblib import Parallel, delayed

    if not todo:
        return []
    calls = (delayed(extract_video)(str(root / by_id[v].path), v, str(parts), job_config, cfg.resize)
             for v in todo)
    results = []
    bar, update = _progress_bar(len(todo), cfg)
    try:
        for res in Parallel(n_jobs=cfg.jobs, return_as="generator_unordered")(calls):
            results.append(res)
            update(res["ok"], res["frames"])
    finally:
        bar.close()
    return results


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
    for f in s.failed:
        lines.append(f"FAILED {f['video_id']}: {f['reason']}")
    return "\n".join(lines)


def summary_json(s: ExtractSummary) -> str:
    d = asdict(s)
    d["store"] = str(s.store)
    return json.dumps(d, indent=1)
