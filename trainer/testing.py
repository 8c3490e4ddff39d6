"""The test protocol on a checkpoint (`trainer test`, and the end of `trainer run`): score files of the
hold-out and the test list, and their accuracy lines."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plumbing.ranking import TOP5
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, config_from_dict
from trainer.data import Subsets, open_store, split_subsets
from trainer.distributed import Env, barrier, broadcast_object, setup, teardown
from trainer.errors import CheckpointError, ConfigError
from trainer.evaluation import SubsetScores, accuracy, model_to_memory_format, score_subset, write_subset_scores
from trainer.scores import score_file_name
from trainer.jobs import load_everywhere, report_videos, run_lock, say
from trainer.models import build_model, saved_init


def test_run(cfg: TrainConfig, env: Env, checkpoint: Path, store=None, subsets: Subsets | None = None,
             which=("val", "test"), progress: bool = True) -> dict[str, Any]:
    """The test protocol with a checkpoint on the hold-out (if any) and the test list; writes score files.

    ``cfg`` supplies the test-time keys (data, test_frames, test_crops, ...); the model comes from the
    checkpoint and its own config. Without ``subsets`` (`trainer test`) only the subsets in ``which`` need
    to be in the store.
    """
    state = load_everywhere(Path(checkpoint), env, for_resume=False)
    standalone = subsets is None
    store = store if store is not None else open_store(cfg.data)
    subsets = subsets if subsets is not None else split_subsets(store, cfg, use=tuple(which))
    if standalone:
        report_videos(env, store, subsets, cfg, which)
    model = _test_model(state, checkpoint, subsets, cfg, env)
    provenance = {"checkpoint": checkpoint, "checkpoint_epoch": state.get("epoch", 0),
                  "selected_by": (state.get("best") or {}).get("selected_by", ""), "processes": env.world}
    del state
    results = {}
    for subset in which:
        ids = subsets.val if subset == "val" else subsets.test
        if not ids:
            continue
        scores = score_subset(model, store, ids, subsets.labels, cfg, env, progress,
                              desc=f"test protocol ({subset})")
        if scores is not None:  # rank 0
            results[subset] = _write_and_report(scores, subset, subsets, cfg, env, provenance)
    barrier(env)
    return broadcast_object(env, results)


def _test_model(state: dict[str, Any], checkpoint: Path, subsets: Subsets, cfg: TrainConfig, env: Env):
    """The checkpoint's network, built from its own config, in eval mode on the device (compiled if asked)."""
    import torch

    saved = config_from_dict(state["config"], f"{checkpoint}:config")
    classes = list(state.get("classes") or subsets.classes)
    if classes != subsets.classes:
        raise CheckpointError(f"{checkpoint}: trained on classes {classes[:3]}... but {cfg.data} has "
                              f"{subsets.classes[:3]}...; test with the store the model was trained on")
    if saved.stream != cfg.stream:
        raise CheckpointError(f"{checkpoint}: a {saved.stream} checkpoint, asked to test the {cfg.stream} stream")
    model, _ = build_model(saved, len(classes), warn=False, init=saved_init(state, saved))
    model.load_state_dict(state["model"])
    model = model_to_memory_format(model.to(env.device).eval(), cfg, env)
    return torch.compile(model) if cfg.compile else model


def _write_and_report(scores: SubsetScores, subset: str, subsets: Subsets, cfg: TrainConfig, env: Env,
                      provenance: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: the score file of one subset, and its accuracy line on the console."""
    path = cfg.run_dir / score_file_name(subset)
    write_subset_scores(path, scores, subset, subsets, cfg, provenance)
    top1, top5 = accuracy(scores.logits, [subsets.labels[v] for v in scores.video_ids])
    top5_text = f"  top-5 {top5:.1f}%" if len(subsets.classes) > TOP5 else ""  # else always 100: not shown
    chance = 100.0 / len(subsets.classes)
    gone = scores.undecodable
    left_out = f" ({len(gone)} undecodable left out: {', '.join(gone)})" if gone else ""
    say(env, f"{cfg.stream} {subset}: {len(scores.video_ids)} videos{left_out} x {cfg.test_frames} x "
             f"{cfg.test_crops} views: top-1 {top1:.1f}%{top5_text}  (chance {chance:.1f}%); "
             f"{scores.views_per_s:.0f} views/s, data wait {100 * scores.data_wait:.0f}%; wrote {path}")
    return {"path": str(path), "videos": len(scores.video_ids), "top1": top1, "top5": top5, "chance": chance,
            "views": scores.views, "views_per_s": scores.views_per_s, "data_wait": scores.data_wait,
            "undecodable": gone}


def test(cfg: TrainConfig, checkpoint: str | os.PathLike | None = None, which=("test",),
         progress: bool = True) -> dict[str, Any]:
    """`trainer test`: the test protocol on a finished (or any) checkpoint of this run."""
    env = setup(cfg.device)
    clean = False
    try:
        path = Path(checkpoint) if checkpoint else cfg.run_dir / ckpt.BEST
        _check_foreign_checkpoint(cfg, path)
        if env.is_main:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(cfg, env):
            result = test_run(cfg, env, path, which=which, progress=progress)
        clean = True
        return result
    finally:
        teardown(env, clean)


def _check_foreign_checkpoint(cfg: TrainConfig, checkpoint: Path) -> None:
    """Refuse to write the scores of another run's checkpoint into a run directory that has its own: they
    would replace that run's scores, and fusion would then learn weights on one model's validation scores
    and apply them to another's test scores."""
    run_dir = cfg.run_dir.resolve()
    if Path(checkpoint).resolve().parent == run_dir:
        return
    own = [name for name in (ckpt.BEST, ckpt.LAST) if (run_dir / name).exists()]
    if own:
        raise CheckpointError(f"{checkpoint} is not a checkpoint of {cfg.run_dir}, which holds its own "
                              f"({', '.join(own)}): its scores would replace that run's; pass --out DIR to "
                              "write them into a run directory of their own")


def resolve_test_config(stream: str, checkpoint: Path, out: str, overrides: dict[str, Any],
                        split: int | None = None) -> TrainConfig:
    """The config of `trainer test`: the checkpoint's own, with test-time keys overridden.

    Scores go to ``<out>/<stream>-split<k>/`` with k the checkpoint's split; testing a model on another
    split's test list is refused (those videos are in its training list).
    """
    from trainer.config import TEST_TIME_KEYS

    state = ckpt.load_checkpoint(checkpoint)
    saved = dict(state["config"])
    if saved.get("stream") != stream:
        raise CheckpointError(f"{checkpoint}: a {saved.get('stream')} checkpoint; use "
                              f"`trainer test {saved.get('stream')}`")
    if split is not None and split != saved.get("split"):
        raise ConfigError(f"{checkpoint}: trained on split {saved.get('split')}; testing it on split {split} "
                          f"would score videos it was trained on")
    for key, value in overrides.items():
        if key not in TEST_TIME_KEYS:
            raise ConfigError(f"--set {key}: cannot be changed at test time (it shapes the trained model); "
                              f"test-time keys: {', '.join(sorted(TEST_TIME_KEYS))}")
        saved[key] = value
    saved["out"] = out
    return config_from_dict(saved, f"{checkpoint}:config")
