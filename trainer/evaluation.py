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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plumbing.ranking import TOP5, topk_accuracy, topk_correct, view_mean

from trainer import transforms as T
from trainer.config import TrainConfig
from trainer.data import Subsets, VideoFrames, VideoItem, shard, video_loader
from trainer.device_decode import decoded_item, resolve_decode
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


@dataclass
class ViewLogits:
    """Raw logits of every view of the videos of a VideoFrames dataset that decoded, in dataset order."""

    positions: list[int]       # each scored video's place in the dataset's list
    labels: list[int]
    logits: list[np.ndarray]   # one (F, K, C) float32 array per scored video
    skipped: dict[int, str]    # position -> why the video does not decode (only under missing_videos = skip)
    views: int
    seconds: float
    data_wait: float           # share of the time spent waiting for the DataLoader


def video_logits(model, dataset: VideoFrames, cfg: TrainConfig, env: Env, progress: bool = False,
                 desc: str = "test") -> ViewLogits:
    """Every view (dataset.frames x dataset.crops per video) through ``model``, in order.

    A video that does not decode stops the run with a DataError under missing_videos = error; under skip
    it is left out, and listed in ``skipped``.
    """
    import torch

    from plumbing.progress import Progress

    per_batch = max(1, cfg.test_batch // (dataset.frames * dataset.crops))  # videos per loader batch
    loader = video_loader(dataset, per_batch, min(cfg.workers, len(dataset)), pin=env.cuda)
    out = ViewLogits(positions=[], labels=[], logits=[], skipped={}, views=0, seconds=0.0, data_wait=0.0)
    wait = 0.0
    t_start = t_data = time.perf_counter()
    with torch.inference_mode(), Progress(len(dataset), unit="video", desc=desc, enabled=progress,
                                          leave=False) as bar:
        for batch in loader:
            wait += time.perf_counter() - t_data
            bar.update(len(batch))
            # fields on the device (JPEGs decoded there with decode = device; a failure becomes item.error)
            batch = [decoded_item(item, dataset.kind, dataset.per_item, env.device, dataset.ids[item.position])
                     for item in batch]
            batch = _decoded(batch, dataset, cfg, desc, out.skipped)
            if batch:
                logits = _forward_views(model, batch, dataset, cfg, env)  # (videos, F, K, C)
                out.positions += [item.position for item in batch]
                out.labels += [item.label for item in batch]
                out.logits += list(logits)
                out.views += logits.shape[0] * logits.shape[1] * logits.shape[2]
            t_data = time.perf_counter()
    out.seconds = time.perf_counter() - t_start
    out.data_wait = wait / out.seconds if out.seconds else 0.0
    return out


def _decoded(batch: list[VideoItem], dataset: VideoFrames, cfg: TrainConfig, desc: str,
             skipped: dict[int, str]) -> list[VideoItem]:
    """The items of a batch that decoded; an undecodable one stops the run, or is left out and recorded in
    ``skipped`` under missing_videos = skip."""
    for item in batch:
        if item.error is None:
            continue
        vid = dataset.ids[item.position]
        if cfg.missing_videos == "error":
            fix = "" if "flowprep verify" in item.error else f"; run `flowprep verify {cfg.data}` and re-extract it"
            raise DataError(f"video {vid!r}: {item.error}{fix}, or --set missing_videos=skip to leave it out "
                            f"(listed in the score file's meta)")
        log.warning("%s: leaving out %s, which does not decode (missing_videos = skip): %s", desc, vid, item.error)
        skipped[item.position] = item.error
    return [item for item in batch if item.error is None]


def _forward_views(model, batch: list[VideoItem], dataset: VideoFrames, cfg: TrainConfig, env: Env) -> np.ndarray:
    """Cut the views of a batch of videos on the device and score them: (videos, F, K, C) float32 logits."""
    import torch

    views = []
    for item in batch:
        x = T.assemble_video(item.fields, item.layout.to(env.device, non_blocking=True),
                             cfg.is_clip)  # (F, C, [T,] H, W)
        side = T.crop_side(min(x.shape[-2:]), cfg.test_crop_scale)
        v = T.make_test_views(x, cfg.stream, cfg.is_clip, side, cfg.input_size, dataset.crops, dataset.flow_center)
        views.append(v.flatten(0, 1))  # (F*K, C, [T,] S, S)
    views = views[0] if len(views) == 1 else torch.cat(views)
    out = []
    for chunk in views.split(cfg.test_batch):
        with autocast(env, cfg.precision):
            out.append(model(to_memory_format(chunk, cfg, env)).float())
    return torch.cat(out).cpu().numpy().reshape(len(batch), dataset.frames, dataset.crops, -1)


def evaluate(model, store, video_ids: list[str], labels: dict[str, int], cfg: TrainConfig, env: Env,
             progress: bool = False) -> dict[str, float]:
    """Hold-out validation for model selection: ``val_frames`` centre crops per video, video = mean logits.

    Returns val_loss (cross-entropy of the video-level mean logits), val_top1, val_top5 (%), over all ranks
    (undecodable videos left out under missing_videos = skip).
    """
    import torch
    import torch.nn.functional as nnf

    mine = shard(list(video_ids), env.rank, env.world)
    was_training = model.training
    model.eval()
    frames = VideoFrames(store, mine, labels, cfg, cfg.val_frames, decode=resolve_decode(cfg.decode, env.cuda, store))
    scored = video_logits(model, frames, cfg, env, progress and env.is_main, desc="validation")
    model.train(was_training)
    loss = c1 = c5 = 0.0
    for label, row in zip(scored.labels, scored.logits):
        mean = view_mean(row[None])  # (1, C) float64: the video's score, as the test protocol and fusion take it
        loss += float(nnf.cross_entropy(torch.from_numpy(mean), torch.tensor([label])))
        c1 += int(topk_correct(mean, [label], 1)[0])
        c5 += int(topk_correct(mean, [label], TOP5)[0])
    loss, c1, c5, n = all_sum(env, [loss, c1, c5, float(len(scored.labels))])
    n = max(n, 1.0)
    return {"val_loss": loss / n, "val_top1": 100.0 * c1 / n, "val_top5": 100.0 * c5 / n}


@dataclass
class SubsetScores:
    """The test protocol's result on one subset (rank 0): raw logits of the videos that decoded."""

    video_ids: list[str]         # the subset's videos in list order, the undecodable ones left out
    logits: np.ndarray           # (V, F, K, C) float32
    undecodable: dict[str, str]  # {video id: reason}, left out under missing_videos = skip
    views: float
    views_per_s: float
    data_wait: float             # share of the time spent waiting for the DataLoader


def score_subset(model, store, video_ids: list[str], labels: dict[str, int], cfg: TrainConfig, env: Env,
                 progress: bool = False, desc: str = "test") -> SubsetScores | None:
    """The test protocol (``test_frames`` x ``test_crops`` views) on ``video_ids``, dealt over the ranks by
    stride and put back in order on rank 0; None on the other ranks."""
    mine = shard(list(range(len(video_ids))), env.rank, env.world)  # this rank's places in video_ids
    dataset = VideoFrames(store, [video_ids[i] for i in mine], labels, cfg, cfg.test_frames, cfg.test_crops,
                          decode=resolve_decode(cfg.decode, env.cuda, store))
    model.eval()
    scored = video_logits(model, dataset, cfg, env, progress and env.is_main, desc)
    rows = [(mine[p], row) for p, row in zip(scored.positions, scored.logits)]
    gathered = gather_to_main(env, (rows, {mine[p]: why for p, why in scored.skipped.items()}))
    totals = all_sum(env, [float(scored.views), scored.seconds, scored.data_wait])
    if not env.is_main:
        return None
    logits = _reassemble(gathered, len(video_ids), cfg, desc)
    undecodable = {i: why for _, part in gathered for i, why in part.items()}
    return SubsetScores(video_ids=[v for i, v in enumerate(video_ids) if i not in undecodable], logits=logits,
                        undecodable={video_ids[i]: undecodable[i] for i in sorted(undecodable)},
                        views=totals[0], views_per_s=totals[0] / max(totals[1] / env.world, 1e-9),
                        data_wait=totals[2] / env.world)


def _reassemble(gathered: list, count: int, cfg: TrainConfig, desc: str) -> np.ndarray:
    """(V', F, K, C) logits in list order from every rank's (rows, undecodable); checks that each of the
    ``count`` videos came back exactly once, scored or undecodable."""
    undecodable = {i for _, part in gathered for i in part}
    seen = [i for rows, _ in gathered for i, _ in rows] + sorted(undecodable)
    if sorted(seen) != list(range(count)):
        dup = len(seen) - len(set(seen))
        raise TrainerError(f"distributed test returned {len(set(seen))} of {count} videos "
                           f"({dup} duplicates); this is a bug, please report it")
    kept = [i for i in range(count) if i not in undecodable]
    if not kept:
        raise DataError(f"{desc}: none of the {count} videos decodes; run `flowprep verify {cfg.data}`")
    position = {i: k for k, i in enumerate(kept)}
    first = next(row for rows, _ in gathered for _, row in rows)
    logits = np.empty((len(kept), *first.shape), np.float32)
    for rows, _ in gathered:
        for i, row in rows:
            logits[position[i]] = row
    return logits


def write_subset_scores(path: Path, scores: SubsetScores, subset: str, subsets: Subsets, cfg: TrainConfig,
                        provenance: dict[str, Any]) -> None:
    """Score file of one subset through trainer.scores (the only writer of score files).

    ``provenance``: checkpoint (path), checkpoint_epoch, selected_by, processes. The videos of the subset
    absent from the store (``subsets.missing``) and those left out because they do not decode are both in
    ``missing_video_ids``; the second also in ``undecodable_video_ids``, with the reason.
    """
    from trainer.scores import write_scores

    meta = {
        "stream": cfg.stream, "split": cfg.split, "subset": subset,
        "frames": cfg.test_frames, "crops": cfg.test_crops, "crop_names": T.crop_names(cfg.test_crops),
        "aggregation": AGGREGATION,
        "checkpoint": str(Path(provenance["checkpoint"]).resolve()),
        "checkpoint_epoch": int(provenance["checkpoint_epoch"]), "selected_by": provenance["selected_by"],
        "store": str(Path(cfg.data).resolve()),
        "config": cfg.to_dict(), "derived": cfg.derived(),
        "frame_sampling": "uniform: floor((i + 0.5) * positions / frames), positions = count - length + 1",
        "crop_side_fraction": cfg.test_crop_scale, "input_size": cfg.input_size,
        "flow_flip": "mirrored views have flow x negated" if cfg.stream == "temporal" else "n/a",
        "missing_video_ids": list(subsets.missing.get(subset, [])) + list(scores.undecodable),
        "undecodable_video_ids": dict(scores.undecodable), "processes": provenance["processes"],
    }
    write_scores(path, scores.video_ids, [subsets.labels[v] for v in scores.video_ids], scores.logits,
                 subsets.classes, meta)


def accuracy(logits: np.ndarray, labels: list[int]) -> tuple[float, float]:
    """Top-1 and top-5 (%) of video scores = raw logits averaged over all views (plumbing.ranking's rule, the
    one `fusion report` uses). logits (V, F, K, C)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    mean = view_mean(logits)
    return 100.0 * topk_accuracy(mean, labels, 1), 100.0 * topk_accuracy(mean, labels, TOP5)
