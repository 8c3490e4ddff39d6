"""Training of one stream, read top to bottom: ``train_step``, ``train_one_epoch``, ``evaluate``
(trainer.evaluation), ``run``.

One iteration = one optimizer step on ``batch_size`` samples in total, whatever the number of processes:
each process does ``accum`` forward/backward passes of ``micro_batch`` samples, DDP averages the gradients
over processes (all-reduce only on the last micro-step), so the update equals the one-process update on
the same global batch. Learning-rate schedules count these iterations.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_manifest.atomic import atomic_write
from trainer import checkpoint as ckpt
from trainer import logs
from trainer.config import RUNTIME_KEYS, TrainConfig, config_from_dict
from trainer.data import (Subsets, TrainViews, check_sample_length, open_store, short_videos, split_subsets,
                          train_loader)
from trainer.distributed import Env, all_sum, barrier, broadcast_object, no_sync, setup, teardown
from trainer.errors import CheckpointError, ConfigError, TrainerError
from trainer.evaluation import (SubsetScores, accuracy, autocast, evaluate, model_to_memory_format,
                                resolve_precision, score_subset, to_memory_format, write_subset_scores)
from trainer.models import build_model, param_groups, saved_init, set_train_mode

log = logging.getLogger("trainer")

# The shipped config named when the batch is larger than the data, and its batch size.
SMALL_DATA_CONFIG, SMALL_DATA_BATCH = "small_dataset", 32
LOCK = ".{}.lock"  # beside the run directory (OUT/.STREAM-splitK.lock), held by rank 0 while a job writes it


def say(env: Env, message: str) -> None:
    """Console output of rank 0 (progress displays are closed whenever it is called)."""
    if env.is_main:
        print(message, flush=True)


@dataclass
class Plan:
    """How the effective batch is split, and how long training lasts."""

    micro_batch: int
    accum: int
    iters_per_epoch: int
    epochs: int
    max_iters: int  # 0 = no limit


def make_plan(cfg: TrainConfig, world: int, samples: int) -> Plan:
    """Micro-batch and accumulation for ``world`` processes; epochs from max_iters for iter-step schedules."""
    micro = cfg.micro_batch or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % (micro * world):
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch x processes "
                          f"({cfg.micro_batch or 'auto'} x {world}); choose batch_size divisible by {world}"
                          f"{' and micro_batch' if cfg.micro_batch else ''}")
    accum = cfg.batch_size // (micro * world)
    per_rank = samples // world
    iters = per_rank // (micro * accum)
    if iters < 1:
        raise ConfigError(_batch_too_large(cfg, world, samples))
    if cfg.schedule == "iter-step":
        epochs = math.ceil(cfg.max_iters / iters)
    else:
        epochs = cfg.epochs
    return Plan(micro_batch=micro, accum=accum, iters_per_epoch=iters, epochs=epochs, max_iters=cfg.max_iters)


def _pow2_at_most(n: int) -> int:
    """The largest power of two <= n (0 for n < 1): a batch size that divides by any power-of-two process count."""
    return 1 << (n.bit_length() - 1) if n >= 1 else 0


def _batch_too_large(cfg: TrainConfig, world: int, samples: int) -> str:
    """The error for a batch larger than an epoch: the numbers, and the config and --set that fit."""
    per_process = samples // world
    config = (f"use the shipped config made for it, --config {SMALL_DATA_CONFIG} (batch {SMALL_DATA_BATCH}, "
              f"resnet18 at 112 px, CPU-friendly), or " if cfg.batch_size > SMALL_DATA_BATCH else "")
    if per_process:
        most = world * _pow2_at_most(per_process)
        some = world * max(1, _pow2_at_most(per_process // 8))  # about 8 or more steps per epoch
        fix = (f"--set batch_size=N with N at most {most} (one step per epoch), e.g. --set batch_size={some} "
               f"({samples // some} steps per epoch)")
    else:
        fix = "fewer processes (each needs at least one sample per step)"
    return (f"batch_size {cfg.batch_size} is larger than one epoch: {samples} training samples "
            f"({samples // cfg.samples_per_video} videos x samples_per_video {cfg.samples_per_video}) on {world} "
            f"process(es) make no full batch. The paper's batch of 256 is for UCF101-sized data (9,537 train "
            f"videos); for a small dataset {config}{fix}; or raise samples_per_video")


def lr_factor(cfg: TrainConfig, plan: Plan):
    """Learning-rate factor as a function of the optimizer step index (0-based)."""
    steps, gamma = tuple(cfg.lr_steps), cfg.lr_gamma
    if cfg.schedule == "iter-step":
        return lambda it: gamma ** sum(it >= s for s in steps)
    if cfg.schedule == "step":
        return lambda it: gamma ** sum(it // plan.iters_per_epoch >= s for s in steps)
    total = plan.epochs * plan.iters_per_epoch
    if plan.max_iters:
        total = min(total, plan.max_iters)
    return lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))


@dataclass
class Training:
    """Everything an epoch of training steps: the network, its optimizer, schedule, scaler and batches."""

    model: Any       # what the steps call: the network wrapped by DDP and/or torch.compile (or not)
    bare: Any        # the network itself: validated, and saved in checkpoints
    optimizer: Any
    scheduler: Any
    scaler: Any      # GradScaler, enabled for fp16 only
    loader: Any
    sampler: Any     # data.EpochSampler
    plan: Plan
    init: dict       # where the initial weights came from and the resolved bn (models.build_model)
    precision: str   # resolved: fp32, bf16 or fp16


@dataclass
class Position:
    """Where a run stands: epochs and iterations done, the log rows, the best checkpoint so far, and the
    epoch and iteration of the last validation + checkpoint (or of the start)."""

    epoch: int = 0
    iteration: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_top1": -1.0, "val_loss": float("inf"),
                                                 "selected_by": ""})
    saved_epoch: int = 0
    saved_iteration: int = 0


class EpochMeter:
    """Sums over an epoch's micro-steps, kept on the device (no sync per step), and the step times."""

    def __init__(self, device):
        import torch

        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.top1 = torch.zeros((), device=device, dtype=torch.int64)
        self.top5 = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0
        self.data_time = self.batch_time = 0.0

    def add(self, out, y, loss) -> None:
        """One micro-batch: logits (B, C), labels (B,), its mean loss."""
        import torch

        with torch.no_grad():
            self.loss += loss.detach().double() * len(y)
            hit = out.detach().topk(min(5, out.shape[1]), dim=1).indices == y[:, None]  # (B, k)
            self.top1 += hit[:, 0].sum()
            self.top5 += hit.any(dim=1).sum()
        self.seen += len(y)

    def row(self, env: Env, iterations: int) -> dict[str, float]:
        """The epoch's log columns, summed over all processes."""
        loss, c1, c5, n, data, batch = all_sum(env, [float(self.loss), float(self.top1), float(self.top5),
                                                     float(self.seen), self.data_time, self.batch_time])
        n, done = max(n, 1.0), max(iterations, 1)
        return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n,
                "batch_time": batch / env.world / done, "data_time": data / env.world / done,
                "data_wait": data / max(batch, 1e-9), "samples_per_s": n / max(batch / env.world, 1e-9)}


def train_step(t: Training, batches, meter: EpochMeter, cfg: TrainConfig, env: Env):
    """One optimizer step on ``batch_size`` samples over all processes: ``accum`` micro-batches per process,
    gradients all-reduced on the last one only. Returns the last micro-batch's loss (a device tensor)."""
    import torch.nn.functional as nnf

    from trainer.transforms import normalize

    for micro in range(t.plan.accum):
        t0 = time.perf_counter()
        x, flipped, y = next(batches)  # x (B, C, [T,] S, S) uint8
        meter.data_time += time.perf_counter() - t0
        x = x.to(env.device, non_blocking=True)
        y = y.to(env.device, non_blocking=True)
        x = to_memory_format(normalize(x, cfg.stream, cfg.is_clip, flipped), cfg, env)
        with no_sync(t.model, env.world > 1 and micro < t.plan.accum - 1):
            with autocast(env, cfg.precision):
                out = t.model(x)
            loss = nnf.cross_entropy(out.float(), y)
            t.scaler.scale(loss / t.plan.accum).backward()  # the mean over the accumulated micro-batches
        meter.add(out, y, loss)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    t.scheduler.step()
    return loss


def train_one_epoch(t: Training, cfg: TrainConfig, env: Env, epoch: int, iteration: int,
                    progress: bool = True) -> tuple[dict[str, float], int]:
    """One pass over the training samples (or fewer iterations at max_iters). Returns (log row, iteration).

    A loss that is not finite stops training with a TrainerError naming the iteration and the learning rate.
    """
    import torch

    from data_manifest.progress import Progress

    t.sampler.set_epoch(epoch)
    set_train_mode(_bare(t.model), t.init["bn"])
    iters = t.plan.iters_per_epoch
    if t.plan.max_iters:
        iters = min(iters, t.plan.max_iters - iteration)
    meter = EpochMeter(env.device)
    lr_used = t.optimizer.param_groups[0]["lr"]
    batches = iter(t.loader)
    # Dropout masks depend only on (seed, epoch, rank), so a resumed run repeats them. Seeded after the
    # iterator is made: making it may draw from the global RNG (the DataLoader's worker seeds).
    torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + env.rank)
    t_end = time.perf_counter()
    with Progress(iters, unit="iteration", desc=f"epoch {epoch + 1}/{t.plan.epochs}",
                  enabled=progress and env.is_main, leave=False) as bar:
        for _ in range(iters):
            lr_used = t.optimizer.param_groups[0]["lr"]
            loss = train_step(t, batches, meter, cfg, env)
            iteration += 1
            # waits for the device, so batch times are real step times; the sum covers every micro-step
            loss_now, loss_total = torch.stack([loss.detach().double(), meter.loss]).tolist()
            _check_finite(loss_now, loss_total, iteration, epoch, lr_used)
            now = time.perf_counter()
            meter.batch_time += now - t_end
            t_end = now
            bar.update(1, loss=f"{loss_now:.3f}", wait=f"{100 * meter.data_time / max(meter.batch_time, 1e-9):.0f}%")
    return {"epoch": epoch + 1, "iteration": iteration, "lr": lr_used, **meter.row(env, iters)}, iteration


def _check_finite(loss_now: float, loss_total: float, iteration: int, epoch: int, lr: float) -> None:
    """The divergence guard: stop at the first loss that is not finite, saying what to check."""
    if math.isfinite(loss_now) and math.isfinite(loss_total):
        return
    raise TrainerError(
        f"training diverged: the loss is {loss_now if not math.isfinite(loss_now) else loss_total} at "
        f"iteration {iteration} (epoch {epoch + 1}, lr {lr:.3g}); nothing after the last checkpoint "
        f"was saved. Lower lr (--set lr=...), and check bn and pretrained: over random weights use bn = auto "
        f"or train (partial and frozen BN keep untrained statistics); the init line above says what was "
        f"used. Then re-run with --fresh")


def _config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    return [f"{k}: {saved.get(k)!r} in the run, {now[k]!r} now" for k in now
            if k not in RUNTIME_KEYS and saved.get(k) != now[k]]


def _bare(model):
    """The network inside DDP and torch.compile wrappers (compile wraps DDP here; either order works)."""
    while True:
        for name in ("_orig_mod", "module"):
            inner = getattr(model, name, None)
            if inner is not None:
                model = inner
                break
        else:
            return model


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
        with _run_lock(cfg, env):
            result = _run(cfg, env, resume, fresh, test, progress)
        clean = True
        return result
    finally:
        teardown(env, clean)


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run directory: OUT/.STREAM-splitK.lock."""
    return run_dir.parent / LOCK.format(run_dir.name)


@contextlib.contextmanager
def _run_lock(cfg: TrainConfig, env: Env):
    """Rank 0 holds an flock on OUT/.STREAM-splitK.lock while the job writes the run directory: a second
    `trainer run` or `trainer test` on it fails at once instead of training over the first one's files. The
    kernel drops the lock when its holder dies, even by SIGKILL, so a killed run can be re-run. The lock
    lives beside the run directory, so a run refused before it starts leaves no directory behind."""
    from data_manifest.atomic import exclusive_lock_or

    if not env.is_main:
        yield
        return
    busy = lambda pid: TrainerError(f"another trainer (pid {pid}) is writing {cfg.run_dir}; wait for it to "  # noqa: E731
                                    "finish or stop it (a killed run resumes), or choose another --out")
    unwritable = lambda exc: TrainerError(f"cannot write {cfg.run_dir}: {exc.strerror or exc}; choose an "  # noqa: E731
                                          "--out you can write to")
    with exclusive_lock_or(lock_path(cfg.run_dir), busy, unwritable):
        yield


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


def _load_everywhere(path: Path, env: Env, for_resume: bool) -> dict[str, Any]:
    """Every rank reads the checkpoint; if any rank cannot, all stop, each saying who could not."""
    problem = ""
    try:
        state = ckpt.load_checkpoint(path, for_resume=for_resume)
    except CheckpointError as exc:
        state, problem = {}, str(exc)
    failed = int(all_sum(env, [1.0 if problem else 0.0])[0])
    shared = "every process must be able to read it (with several nodes, put --out on a shared file system)"
    if problem:
        raise CheckpointError(f"process {env.rank} of {env.world}: {problem}; {shared}" if env.world > 1
                              else problem)
    if failed:
        raise CheckpointError(f"{path}: {failed} other process(es) cannot read this checkpoint (see their "
                              f"messages); {shared}")
    return state


def _report_videos(env: Env, store, subsets, cfg: TrainConfig, which=("train", "val", "test")) -> None:
    """Warn once about videos left out (missing_videos = skip) and count the videos shorter than a sample."""
    for k, ids in subsets.missing.items():
        if k in which:
            say(env, f"warning: {len(ids)} {k} videos are missing from the store and left out")
    used = [v for k in which for v in getattr(subsets, k)]
    short = short_videos(store, used, cfg)
    if short:
        what = "flow fields" if cfg.stream == "temporal" else "frames"
        say(env, f"note: {len(short)} of {len(used)} videos have fewer {what} than a sample takes "
                 f"({cfg.length}), e.g. {short[0]}: their samples repeat the last one")


def _run(cfg: TrainConfig, env: Env, resume, fresh: bool, test: bool, progress: bool) -> dict[str, Any]:
    """Train, validating and checkpointing at intervals, then (``test``) run the test protocol."""
    if fresh and resume:
        raise ConfigError("--fresh and --resume contradict each other; give one of them")
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    check_sample_length(store, subsets.train + subsets.val + subsets.test, cfg)  # before the network is built
    source = _resume_source(cfg, env, resume, fresh)
    state = _load_everywhere(source, env, for_resume=True) if source is not None else None
    if state is not None:
        _check_same_settings(state, source, cfg)
    training = build_training(cfg, env, store, subsets, state)
    _prepare_run_dir(cfg, env, fresh)  # only now: a run that cannot start leaves no folder behind
    pos = _position(state, source, training.plan, cfg, env)
    del state
    _announce(training, pos, store, subsets, cfg, env)
    start_epoch = pos.epoch
    while not _finished(training.plan, pos):
        _epoch_and_checkpoint(training, pos, store, subsets, cfg, env, progress)
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


def build_training(cfg: TrainConfig, env: Env, store, subsets: Subsets, state: dict[str, Any] | None) -> Training:
    """Network, optimizer, schedule, scaler and loader of a run; from ``state`` (a last checkpoint) if given."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    # Resuming: the weights come from the checkpoint, so the pre-trained file is not read (nor needed).
    model, init = build_model(cfg, len(subsets.classes), warn=env.is_main,
                              init=saved_init(state, cfg) if state is not None else None)
    bare = model_to_memory_format(model.to(env.device), cfg, env)
    dataset = TrainViews(store, subsets.train, subsets.labels, cfg)
    plan = make_plan(cfg, env.world, len(dataset))
    precision = resolve_precision(env, cfg.precision)
    optimizer = torch.optim.SGD(param_groups(bare, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, plan))
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    if state is not None:
        bare.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    model = bare
    # DDP first, then compile (PyTorch's order: compile sees DDP's buckets and breaks the graph at them)
    if env.world > 1:
        model = DDP(model, device_ids=[env.device.index] if env.cuda else None)
    if cfg.compile:
        model = torch.compile(model)
    loader, sampler = train_loader(dataset, plan.micro_batch, env.world, env.rank, cfg.seed, cfg.workers,
                                   pin=env.cuda)
    return Training(model=model, bare=bare, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    loader=loader, sampler=sampler, plan=plan, init=init, precision=precision)


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
        atomic_write(cfg.run_dir / "config.toml", cfg.to_toml(resolved={"bn": t.init["bn"], "precision": t.precision}))
    plan = t.plan
    say(env, f"{cfg.stream} stream, split {cfg.split}: {len(subsets.train)} train / {len(subsets.val)} hold-out /"
             f" {len(subsets.test)} test videos, {len(subsets.classes)} classes, {cfg.arch} ({cfg.in_channels} "
             f"input channels), init: {t.init['note']}")
    say(env, f"{env.world} process(es) on {env.device.type}; batch {cfg.batch_size} = {env.world} x "
             f"{plan.micro_batch} x {plan.accum} accumulation; {plan.iters_per_epoch} iterations/epoch, "
             f"{plan.epochs} epochs{f', stop at iteration {plan.max_iters}' if plan.max_iters else ''}; "
             f"precision {t.precision}")
    _report_videos(env, store, subsets, cfg)
    say(env, logs.header())
    for row in pos.history:
        say(env, logs.format_row(row))


def _finished(plan: Plan, pos: Position) -> bool:
    return pos.epoch >= plan.epochs or bool(plan.max_iters and pos.iteration >= plan.max_iters)


def _epoch_and_checkpoint(t: Training, pos: Position, store, subsets: Subsets, cfg: TrainConfig, env: Env,
                          progress: bool) -> None:
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
    say(env, logs.format_row(row))
    if val and not math.isfinite(val["val_loss"]):
        say(env, f"warning: hold-out loss {val['val_loss']} at epoch {pos.epoch}: not a candidate for {ckpt.BEST}")
    if env.is_main:
        logs.write_csv(cfg.run_dir / "log.csv", pos.history)  # every epoch: small; rebuilt from the checkpoint
    if due:
        if env.is_main:
            _checkpoint(t, pos, val, subsets, cfg)
        pos.saved_epoch, pos.saved_iteration = pos.epoch, pos.iteration
    barrier(env)


def select_best(best: dict[str, Any], val: dict[str, float], epoch: int) -> dict[str, Any] | None:
    """The new best record if this epoch's validation ``val`` beats ``best`` (hold-out top-1, then lower
    hold-out loss; a loss that is not finite never counts), else None. Without a hold-out (``val`` empty)
    every checkpointed epoch is the best so far."""
    if not val:
        return {"epoch": epoch, "val_top1": None, "val_loss": None, "selected_by": "last epoch (no hold-out)"}
    if math.isfinite(val["val_loss"]) and (val["val_top1"], -val["val_loss"]) > (best["val_top1"], -best["val_loss"]):
        return {"epoch": epoch, "val_top1": val["val_top1"], "val_loss": val["val_loss"],
                "selected_by": "hold-out top-1, then hold-out loss"}
    return None


def _checkpoint(t: Training, pos: Position, val: dict[str, float], subsets: Subsets, cfg: TrainConfig) -> None:
    """Rank 0: checkpoint_best.pt if this epoch is the best so far, checkpoint_last.pt, curves.png."""
    best = select_best(pos.best, val, pos.epoch)
    if best is not None:
        pos.best = best
    common = {"model": _bare(t.bare).state_dict(), "epoch": pos.epoch, "iteration": pos.iteration,
              "config": cfg.to_dict(), "derived": cfg.derived(), "classes": subsets.classes, "best": pos.best,
              "init": t.init}
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


def test_run(cfg: TrainConfig, env: Env, checkpoint: Path, store=None, subsets: Subsets | None = None,
             which=("val", "test"), progress: bool = True) -> dict[str, Any]:
    """The test protocol with a checkpoint on the hold-out (if any) and the test list; writes score files.

    ``cfg`` supplies the test-time keys (data, test_frames, test_crops, ...); the model comes from the
    checkpoint and its own config. Without ``subsets`` (`trainer test`) only the subsets in ``which`` need
    to be in the store.
    """
    state = _load_everywhere(Path(checkpoint), env, for_resume=False)
    standalone = subsets is None
    store = store if store is not None else open_store(cfg.data)
    subsets = subsets if subsets is not None else split_subsets(store, cfg, use=tuple(which))
    if standalone:
        _report_videos(env, store, subsets, cfg, which)
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
    path = cfg.run_dir / f"scores_{subset}.npz"
    write_subset_scores(path, scores, subset, subsets, cfg, provenance)
    top1, top5 = accuracy(scores.logits, [subsets.labels[v] for v in scores.video_ids])
    chance = 100.0 / len(subsets.classes)
    gone = scores.undecodable
    left_out = f" ({len(gone)} undecodable left out: {', '.join(gone)})" if gone else ""
    say(env, f"{cfg.stream} {subset}: {len(scores.video_ids)} videos{left_out} x {cfg.test_frames} x "
             f"{cfg.test_crops} views: top-1 {top1:.1f}%  top-5 {top5:.1f}%  (chance {chance:.1f}%); "
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
        with _run_lock(cfg, env):
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
