"""`trainer run`: one stream trained, validated and checkpointed at intervals, the best epoch selected on the
hold-out, then tested. A re-run of the same command continues from ``checkpoint_last.pt``."""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from plumbing.atomic import atomic_write
from data_manifest.holdout import MIN_HOLDOUT_VIDEOS, too_small_to_choose
from trainer import checkpoint as ckpt
from trainer import logs
from trainer.config import RESUME_KEYS, TrainConfig
from trainer.data import Subsets, check_sample_length, open_store, split_subsets
from trainer.distributed import Env, barrier, broadcast_object, setup, teardown
from trainer.errors import CheckpointError, ConfigError, TrainerError
from trainer.evaluation import evaluate
from trainer.jobs import load_everywhere, report_videos, run_lock, say
from trainer.testing import test_run
from trainer.train import Plan, Position, Training, bare_model, build_training, train_one_epoch

log = logging.getLogger("trainer")


def _config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    return [f"{k}: {saved.get(k)!r} in the run, {now[k]!r} now" for k in now
            if k not in RESUME_KEYS and saved.get(k) != now[k]]


def run(cfg: TrainConfig, resume: str | os.PathLike | None = None, fresh: bool = False, test: bool = True,
        progress: bool = True) -> dict[str, Any]:
    """Train one stream, validate and checkpoint at intervals (``val_every``, ``val_every_iters``), select on the
    hold-out, then test (rank 0 writes everything).

    A re-run of the same command in the same place continues from ``checkpoint_last.pt``. Returns a summary
    dict (on every rank; results on rank 0).
    """
    env = setup(cfg.device)
    clean = False
    try:
        with run_lock(cfg, env):
            result = _run(cfg, env, resume, fresh, test, progress)
        clean = True
        return result
    finally:
        teardown(env, clean)


def _resume_source(cfg: TrainConfig, env: Env, resume, fresh: bool) -> Path | None:
    """The checkpoint to continue from, or None. Rank 0 decides and every rank gets its answer: ranks
    looking on their own could disagree (a file only one node sees, or one that --fresh is about to remove)."""
    decision = None
    if env.is_main:
        last = cfg.run_dir / ckpt.LAST
        if resume:
            decision = str(resume)
        elif not fresh and last.is_file():
            decision = str(last)
    decision = broadcast_object(env, decision)
    return Path(decision) if decision else None


def _run(cfg: TrainConfig, env: Env, resume, fresh: bool, test: bool, progress: bool) -> dict[str, Any]:
    """Train, validating and checkpointing at intervals, then (``test``) run the test protocol."""
    if fresh and resume:
        raise ConfigError("--fresh and --resume contradict each other; give one of them")
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    check_sample_length(store, subsets.train + subsets.val + subsets.test, cfg)  # before the network is built
    source = _resume_source(cfg, env, resume, fresh)
    state = load_everywhere(source, env, for_resume=True) if source is not None else None
    if state is not None:
        _check_same_settings(state, source, cfg)
        _check_same_flow(state, source, store, cfg)
    training = build_training(cfg, env, store, subsets, state)
    _prepare_run_dir(cfg, env, fresh)  # only now: a run that cannot start leaves no folder behind
    pos = _position(state, source, training.plan, cfg, env)
    del state
    board = logs.Board(cfg.run_dir) if env.is_main else None
    try:
        if board is not None:
            say(env, board.note)
        _announce(training, pos, store, subsets, cfg, env)
        start_epoch = pos.epoch
        while not _finished(training.plan, pos):
            _epoch_and_checkpoint(training, pos, store, subsets, cfg, env, progress, board)
    finally:
        if board is not None:
            board.close()
    best = broadcast_object(env, pos.best)
    if pos.epoch > start_epoch:
        say(env, f"training done: {pos.epoch} epochs, {pos.iteration} iterations; best: epoch {best['epoch']} "
                 f"({best['selected_by']})")
    elif pos.history:
        say(env, f"nothing left to train ({pos.epoch} epochs, {pos.iteration} iterations); best: epoch "
                 f"{best['epoch']}")
    if not best["epoch"]:
        raise TrainerError(f"{cfg.run_dir}: no validation gave a finite hold-out loss, so there is no "
                           f"{ckpt.BEST}; lower lr and check bn and pretrained (see log.csv), then re-run "
                           f"with --fresh")
    summary: dict[str, Any] = {"run_dir": str(cfg.run_dir), "epochs": pos.epoch, "iteration": pos.iteration,
                               "best": best, "history": pos.history}
    if test:
        del training  # frees the DataLoader workers and the optimizer state before testing
        summary["test"] = test_run(cfg, env, cfg.run_dir / ckpt.BEST, store=store, subsets=subsets,
                                   progress=progress)
    return summary


def _check_same_settings(state: dict[str, Any], source: Path, cfg: TrainConfig) -> None:
    """A run continues only with the settings it was made with (runtime keys aside)."""
    diff = _config_differences(state["config"], cfg)
    if diff:
        raise CheckpointError(f"{source}: this run was made with other settings ({'; '.join(diff[:4])}"
                              f"{' ...' if len(diff) > 4 else ''}); re-run with the run's config "
                              f"(--config {cfg.run_dir / 'config.toml'}), pass --fresh to start over, or choose "
                              f"another --out")


def _check_same_flow(state: dict[str, Any], source: Path, store, cfg: TrainConfig) -> None:
    """A run continues only on frames and flow made as before (``data`` may name a moved store, not another
    extraction): the checkpoint's ``flow`` against the store's settings."""
    from flowprep.store.format import incompatibilities

    diff = incompatibilities(state["flow"], store.attrs) if isinstance(state.get("flow"), dict) else []
    if diff:
        raise CheckpointError(f"{source}: this run was trained on flow made otherwise than {cfg.data}'s "
                              f"({'; '.join(diff[:3])}); continue it on its own store, or pass --fresh")


def _prepare_run_dir(cfg: TrainConfig, env: Env, fresh: bool) -> None:
    """Rank 0 makes the run directory, empties it for --fresh and removes half-written checkpoints."""
    if env.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            ckpt.remove_run_outputs(cfg.run_dir)
        for tmp in ckpt.remove_stale_temp_files(cfg.run_dir):
            say(env, f"removed {tmp}: half of a checkpoint, left by a run killed while writing it")
    barrier(env)


def _position(state: dict[str, Any] | None, source: Path | None, plan: Plan, cfg: TrainConfig,
              env: Env) -> Position:
    """Where the run starts: at the beginning, or where the checkpoint ``state`` left it."""
    if state is None:
        return Position()
    epoch, iteration = int(state["epoch"]), int(state["iteration"])
    pos = Position(epoch=epoch, iteration=iteration, history=list(state["history"]),
                   best=dict(state.get("best") or Position().best), saved_epoch=epoch, saved_iteration=iteration)
    say(env, f"resuming {cfg.run_dir} from {source}: epoch {epoch} of {plan.epochs} done, iteration {iteration}")
    if env.is_main and pos.history:
        logs.write_csv(cfg.run_dir / "log.csv", pos.history)  # drop rows of epochs after the last checkpoint
    return pos


def _announce(t: Training, pos: Position, store, subsets: Subsets, cfg: TrainConfig, env: Env) -> None:
    """Write config.toml; print what is trained on what, how the batch is split, and the rows so far."""
    if env.is_main:
        resolved = {"bn": t.init["bn"], "precision": t.precision, "decode": t.loader.dataset.decode}
        atomic_write(cfg.run_dir / "config.toml", cfg.to_toml(resolved=resolved))
    plan = t.plan
    say(env, f"{cfg.stream} stream, split {cfg.split}: {len(subsets.train)} train / {len(subsets.val)} hold-out /"
             f" {len(subsets.test)} test videos, {len(subsets.classes)} classes, {cfg.arch} ({cfg.in_channels} "
             f"input channels), init: {t.init['note']}")
    say(env, f"{env.world} process(es) on {env.device.type}; batch {cfg.batch_size} = {env.world} x "
             f"{plan.micro_batch} x {plan.accum} accumulation; {plan.iters_per_epoch} iterations/epoch, "
             f"{plan.epochs} epochs{f', stop at iteration {plan.max_iters}' if plan.max_iters else ''}; "
             f"precision {t.precision}, decode {t.loader.dataset.decode}")
    if store.manifest.split_method:
        say(env, f"split {cfg.split} of the split made for this dataset ({store.manifest.split_method})")
    report_videos(env, store, subsets, cfg)
    if subsets.val and (small := too_small_to_choose(len(subsets.val), len(subsets.classes))):
        say(env, f"note: {small}, so the last epoch is kept as {ckpt.BEST} instead of the best on the hold-out "
                 "(it is still validated, for the curves); more videos per class, or a larger val_fraction, "
                 "make it choose")
    if len(subsets.classes) <= 5:
        say(env, f"(no top-5 columns: with {len(subsets.classes)} classes top-5 is always 100)")
    say(env, logs.header(len(subsets.classes)))
    for row in pos.history:
        say(env, logs.format_row(row, len(subsets.classes)))


def _finished(plan: Plan, pos: Position) -> bool:
    return pos.epoch >= plan.epochs or bool(plan.max_iters and pos.iteration >= plan.max_iters)


def _epoch_and_checkpoint(t: Training, pos: Position, store, subsets: Subsets, cfg: TrainConfig, env: Env,
                          progress: bool, board: logs.Board | None = None) -> None:
    """One epoch of training; then, when due, validation on the hold-out and the checkpoints."""
    t0 = time.perf_counter()
    row, pos.iteration = train_one_epoch(t, cfg, env, pos.epoch, pos.iteration, progress)
    pos.epoch += 1
    # Validation and checkpoints at epoch ends only (a resumed run restarts at an epoch), but not more often
    # than val_every epochs and val_every_iters iterations: with ~33 iterations per epoch their cost would
    # exceed the training in between.
    due = _finished(t.plan, pos) or (pos.epoch - pos.saved_epoch >= cfg.val_every
                                     and pos.iteration - pos.saved_iteration >= cfg.val_every_iters)
    val = evaluate(t.bare, store, subsets.val, subsets.labels, cfg, env, progress) if due and subsets.val else {}
    row.update(val_loss=val.get("val_loss"), val_top1=val.get("val_top1"), val_top5=val.get("val_top5"),
               epoch_time=time.perf_counter() - t0)
    pos.history.append(row)
    say(env, logs.format_row(row, len(subsets.classes)))
    if val and not math.isfinite(val["val_loss"]):
        say(env, f"warning: hold-out loss {val['val_loss']} at epoch {pos.epoch}: not a candidate for {ckpt.BEST}")
    if env.is_main:
        logs.write_csv(cfg.run_dir / "log.csv", pos.history)  # every epoch: small; rebuilt from the checkpoint
        if board is not None:
            board.add(row)
    if due:
        if env.is_main:
            _checkpoint(t, pos, val, subsets, cfg, store)
        pos.saved_epoch, pos.saved_iteration = pos.epoch, pos.iteration
    barrier(env)


def select_best(best: dict[str, Any], val: dict[str, float], epoch: int,
                holdout_videos: int | None = None) -> dict[str, Any] | None:
    """The new best record if this epoch's validation ``val`` beats ``best`` (hold-out top-1, then lower
    hold-out loss; a loss that is not finite never counts), else None. Without a hold-out (``val`` empty)
    every checkpointed epoch is the best so far; so too with a hold-out of ``holdout_videos`` too few to
    choose by (data_manifest.holdout.MIN_HOLDOUT_VIDEOS), unless its loss is not finite."""
    if not val:
        return {"epoch": epoch, "val_top1": None, "val_loss": None, "selected_by": "last epoch (no hold-out)"}
    if holdout_videos is not None and holdout_videos < MIN_HOLDOUT_VIDEOS:
        if not math.isfinite(val["val_loss"]):
            return None
        return {"epoch": epoch, "val_top1": val["val_top1"], "val_loss": val["val_loss"],
                "selected_by": f"last epoch (a hold-out of {holdout_videos} videos is too small to choose by)"}
    if math.isfinite(val["val_loss"]) and (val["val_top1"], -val["val_loss"]) > (best["val_top1"], -best["val_loss"]):
        return {"epoch": epoch, "val_top1": val["val_top1"], "val_loss": val["val_loss"],
                "selected_by": "hold-out top-1, then hold-out loss"}
    return None


def _checkpoint(t: Training, pos: Position, val: dict[str, float], subsets: Subsets, cfg: TrainConfig,
                store) -> None:
    """Rank 0: checkpoint_best.pt if this epoch is the best so far, checkpoint_last.pt, curves.png.

    Both carry the store's recorded settings (``flow``: algorithm, parameters, implementation, frame size,
    bound, rounding, codec), so `fusion predict` makes new videos' frames and flow as the model saw them.
    """
    best = select_best(pos.best, val, pos.epoch, len(subsets.val))
    if best is not None:
        pos.best = best
    common = {"model": bare_model(t.bare).state_dict(), "epoch": pos.epoch, "iteration": pos.iteration,
              "config": cfg.to_dict(), "derived": cfg.derived(), "classes": subsets.classes, "best": pos.best,
              "init": t.init, "flow": ckpt.flow_settings(store)}
    # best first: a kill between the two writes leaves a last checkpoint that re-does these epochs
    if best is not None:
        ckpt.save_checkpoint(cfg.run_dir / ckpt.BEST, dict(common, kind="best"))
    ckpt.save_checkpoint(cfg.run_dir / ckpt.LAST, dict(
        common, kind="last", optimizer=t.optimizer.state_dict(), lr_scheduler=t.scheduler.state_dict(),
        scaler=t.scaler.state_dict() if t.scaler.is_enabled() else {}, history=pos.history))
    try:
        logs.plot_curves(cfg.run_dir / "curves.png", pos.history, f"{cfg.stream} stream, split {cfg.split}, "
                         f"{cfg.arch}", classes=len(subsets.classes))
    except Exception as exc:  # a plotting problem must not stop training
        log.warning("could not draw curves.png: %s", exc)
