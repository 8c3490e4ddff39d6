"""The test protocol and the per-epoch validation: whole videos, views cut on the device, raw logits kept.

Test protocol (Wang et al. 2015, sec. 3): per video ``test_frames`` frames (spatial) or flow stacks
(temporal) at uniform spacing, each cut into ``test_crops`` views: the 4 corners and the centre of a square
of side ``test_crop_scale`` x short side (224 on 340x256), and their mirror images with flow x negated;
views are resized to ``input_size``. The logits of every view go to the score file unaggregated; the
accuracy printed here averages raw logits over all views of a video.

Distributed: videos are dealt to ranks by stride (no padding), every rank returns its rows with their
indices, rank 0 puts them back in order and checks that each video came back exactly once.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from trainer import transforms as T
from trainer.config import TrainConfig
from trainer.data import VideoFrames, shard, video_loader
from trainer.distributed import Env, all_sum, gather_to_main
from trainer.errors import DataError, TrainerError

log = logging.getLogger("trainer")

AGGREGATION = "none (raw logits per view)"


def resolve_precision(env: Env, precision: str) -> str:
    """fp32, bf16 or fp16: auto = bf16 on CUDA devices that compute in it natively (compute capability
    >= 8: A100, H100, ...), fp16 on older GPUs (trained with a GradScaler), fp32 on CPU."""
    import torch

    if precision != "auto":
        return precision
    if not env.cuda:
        return "fp32"
    # not torch.cuda.is_bf16_supported(): by default it also says yes to emulated bf16, which is slow
    return "bf16" if torch.cuda.get_device_capability(env.device) >= (8, 0) else "fp16"


def amp_dtype(env: Env, precision: str):
    """The autocast dtype, or None for fp32 (see resolve_precision for auto)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(env, precision)]


def autocast(env: Env, precision: str):
    import torch

    dtype = amp_dtype(env, precision)
    return torch.autocast(env.device.type, dtype=dtype) if dtype is not None else nullcontext()


def model_to_memory_format(model, cfg: TrainConfig, env: Env):
    """The model in channels_last (channels_last_3d for clip models) on CUDA when cfg.channels_last."""
    import torch

    if cfg.channels_last and env.cuda:
        return model.to(memory_format=torch.channels_last_3d if cfg.is_clip else torch.channels_last)
    return model


def to_memory_format(x, cfg: TrainConfig, env: Env):
    import torch

    if cfg.channels_last and env.cuda:
        return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    return x


def topk_correct(logits, labels, ks=(1, 5)) -> list[int]:
    """How many rows have their label among the k highest scores, per k. logits (N, C), labels (N,)."""
    import torch

    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :min(k, k_max)].any(dim=1).sum()) for k in ks]


def video_logits(model, dataset: VideoFrames, cfg: TrainConfig, env: Env, n_crops: int, progress: bool = False,
                 desc: str = "test", stats: dict | None = None,
                 skipped: list | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (index, label, logits (F, K, C) float32) for every video of ``dataset``, in order.

    A video that does not decode stops the run with a DataError under missing_videos = error; under skip
    it is left out and (index, reason) is appended to ``skipped``.
    """
    import torch
    from tqdm import tqdm

    views_per_video = dataset.frames * n_crops
    per_batch = max(1, cfg.test_batch // views_per_video)
    loader = video_loader(dataset, per_batch, min(cfg.workers, len(dataset)), pin=env.cuda)
    bar = tqdm(total=len(dataset), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    wait = total_views = 0.0
    t_start = time.perf_counter()
    t_data = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            wait += time.perf_counter() - t_data
            bar.update(len(batch))
            for _, _, _, index, error in batch:
                if error is None:
                    continue
                vid = dataset.ids[index]
                if cfg.missing_videos == "error" or skipped is None:
                    fix = "" if "flowprep verify" in error else f"; run `flowprep verify {cfg.data}` and re-extract it"
                    raise DataError(f"video {vid!r}: {error}{fix}, or --set missing_videos=skip to leave it out "
                                    f"(listed in the score file's meta)")
                log.warning("%s: leaving out %s, which does not decode (missing_videos = skip): %s", desc, vid,
                            error)
                skipped.append((index, error))
            batch = [item for item in batch if item[4] is None]
            if not batch:
                t_data = time.perf_counter()
                continue
            views = []
            for data, index, _, _, _ in batch:
                x = T.assemble_video(data.to(env.device, non_blocking=True),
                                     index.to(env.device, non_blocking=True), cfg.is_clip)
                h, w = x.shape[-2:]
                side = T.crop_side(min(h, w), cfg.test_crop_scale)
                v = T.make_test_views(x, cfg.stream, cfg.is_clip, side, cfg.input_size, n_crops)
                views.append(v.flatten(0, 1))  # (F*K, C, [T,] S, S)
            views = views[0] if len(views) == 1 else torch.cat(views)
            out = []
            for chunk in views.split(cfg.test_batch):
                with autocast(env, cfg.precision):
                    out.append(model(to_memory_format(chunk, cfg, env)).float())
            logits = torch.cat(out).cpu().numpy().reshape(len(batch), dataset.frames, n_crops, -1)
            for (_, _, label, index, _), row in zip(batch, logits):
                yield index, label, row
            total_views += len(views)
            t_data = time.perf_counter()
    bar.close()
    if stats is not None:
        elapsed = time.perf_counter() - t_start
        stats.update(views=total_views, seconds=elapsed, data_wait=wait / elapsed if elapsed else 0.0)


def evaluate(model, store, video_ids: list[str], labels: dict[str, int], cfg: TrainConfig, env: Env,
             progress: bool = False) -> dict[str, float]:
    """Hold-out validation for model selection: ``val_frames`` centre crops per video, video = mean logits.

    Returns val_loss (cross-entropy of the video-level mean logits), val_top1, val_top5 (%), over all ranks
    (undecodable videos left out under missing_videos = skip).
    """
    import torch
    import torch.nn.functional as nnf

    mine = shard(list(video_ids), env.rank, env.world)
    dataset = VideoFrames(store, mine, labels, cfg, cfg.val_frames)
    loss = c1 = c5 = 0.0
    done = 0
    was_training = model.training
    model.eval()
    for _, label, row in video_logits(model, dataset, cfg, env, 1, progress and env.is_main, desc="val",
                                      skipped=[]):
        mean = torch.from_numpy(row.reshape(-1, row.shape[-1]).mean(axis=0, keepdims=True))
        target = torch.tensor([label])
        loss += float(nnf.cross_entropy(mean, target))
        a, b = topk_correct(mean, target)
        c1, c5 = c1 + a, c5 + b
        done += 1
    model.train(was_training)
    loss, c1, c5, n = all_sum(env, [loss, c1, c5, float(done)])
    n = max(n, 1.0)
    return {"val_loss": loss / n, "val_top1": 100.0 * c1 / n, "val_top5": 100.0 * c5 / n}


def score_subset(model, store, video_ids: list[str], labels: dict[str, int], cfg: TrainConfig, env: Env,
                 progress: bool = False, desc: str = "test") -> tuple[np.ndarray, dict[str, Any]] | None:
    """On rank 0 (None on other ranks): logits (V', F, K, C) of the videos of ``video_ids`` in order, and
    a dict of speed figures and ``undecodable``: {video id: reason} of the videos left out (V' = V - those;
    only under missing_videos = skip)."""
    mine_idx = shard(list(range(len(video_ids))), env.rank, env.world)
    dataset = VideoFrames(store, [video_ids[i] for i in mine_idx], labels, cfg, cfg.test_frames)
    stats: dict[str, float] = {}
    skipped: list[tuple[int, str]] = []
    model.eval()
    rows = [(mine_idx[i], row) for i, _, row in
            video_logits(model, dataset, cfg, env, cfg.test_crops, progress and env.is_main, desc, stats,
                         skipped)]
    gathered = gather_to_main(env, (rows, [(mine_idx[i], why) for i, why in skipped]))
    totals = all_sum(env, [stats.get("views", 0.0), stats.get("seconds", 0.0), stats.get("data_wait", 0.0)])
    if not env.is_main:
        return None
    undecodable = {i: why for _, part in gathered for i, why in part}
    seen = [i for part, _ in gathered for i, _ in part] + list(undecodable)
    if sorted(seen) != list(range(len(video_ids))):
        dup = len(seen) - len(set(seen))
        raise TrainerError(f"distributed test returned {len(set(seen))} of {len(video_ids)} videos "
                           f"({dup} duplicates); this is a bug, please report it")
    kept = [i for i in range(len(video_ids)) if i not in undecodable]
    if not kept:
        raise DataError(f"{desc}: none of the {len(video_ids)} videos decodes; run `flowprep verify {cfg.data}`")
    position = {i: k for k, i in enumerate(kept)}
    first = next(row for part, _ in gathered for _, row in part)
    logits = np.empty((len(kept), *first.shape), np.float32)
    for part, _ in gathered:
        for i, row in part:
            logits[position[i]] = row
    info = {"views": totals[0], "views_per_s": totals[0] / max(totals[1] / env.world, 1e-9),
            "data_wait": totals[2] / env.world,
            "undecodable": {video_ids[i]: undecodable[i] for i in sorted(undecodable)}}
    return logits, info


def write_subset_scores(path: Path, video_ids: list[str], labels: dict[str, int], logits: np.ndarray,
                        classes: list[str], cfg: TrainConfig, subset: str, checkpoint: Path,
                        ckpt_state: dict[str, Any], missing: list[str], env: Env,
                        undecodable: dict[str, str] | None = None) -> None:
    """Score file of one subset through trainer.scores (the only writer of score files).

    ``missing``: videos of the subset absent from the store; ``undecodable``: {id: reason} of those left
    out because they do not decode. Both are in ``missing_video_ids``; the second also on its own.
    """
    from trainer.scores import write_scores

    meta = {
        "stream": cfg.stream, "split": cfg.split, "subset": subset,
        "frames": cfg.test_frames, "crops": cfg.test_crops, "crop_names": T.crop_names(cfg.test_crops),
        "aggregation": AGGREGATION,
        "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_epoch": int(ckpt_state.get("epoch", 0)),
        "selected_by": (ckpt_state.get("best") or {}).get("selected_by", ""),
        "store": str(Path(cfg.data).resolve()),
        "config": cfg.to_dict(), "derived": cfg.derived(),
        "frame_sampling": "uniform: floor((i + 0.5) * positions / frames), positions = count - length + 1",
        "crop_side_fraction": cfg.test_crop_scale, "input_size": cfg.input_size,
        "flow_flip": "mirrored views have flow x negated" if cfg.stream == "temporal" else "n/a",
        "missing_video_ids": list(missing) + list(undecodable or {}),
        "undecodable_video_ids": dict(undecodable or {}), "processes": env.world,
    }
    write_scores(path, video_ids, [labels[v] for v in video_ids], logits, classes, meta)


def accuracy(logits: np.ndarray, labels: list[int]) -> tuple[float, float]:
    """Top-1 and top-5 (%) of video scores = raw logits averaged over all views. logits (V, F, K, C)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    mean = logits.reshape(logits.shape[0], -1, logits.shape[-1]).mean(axis=1)
    c1, c5 = topk_correct(mean, np.asarray(labels))
    return 100.0 * c1 / len(labels), 100.0 * c5 / len(labels)
