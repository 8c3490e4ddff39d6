"""Training of one stream, read top to bottom: ``train_step``, ``train_one_epoch``, ``evaluate``
(trainer.evaluation), and the run around them (trainer.run).

One iteration = one optimizer step on ``batch_size`` samples in total, whatever the number of processes:
each process does ``accum`` forward/backward passes of ``micro_batch`` samples, DDP averages the gradients
over processes (all-reduce only on the last micro-step), so the update equals the one-process update on
the same global batch. Learning-rate schedules count these iterations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from trainer.config import TrainConfig
from trainer.data import Subsets, TrainViews, train_loader
from trainer.device_decode import network_input, resolve_decode
from trainer.distributed import Env, all_sum, no_sync
from trainer.errors import ConfigError, TrainerError
from trainer.evaluation import autocast, model_to_memory_format, resolve_precision, to_memory_format
from trainer.models import build_model, param_groups, saved_init, set_train_mode

# The shipped config named when the batch is larger than the data, and its batch size.
SMALL_DATA_CONFIG, SMALL_DATA_BATCH = "small_dataset", 32


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

    for micro in range(t.plan.accum):
        t0 = time.perf_counter()
        batch = next(batches)  # uint8 crops, or JPEG bytes with their crop boxes (decode = device)
        meter.data_time += time.perf_counter() - t0
        x, y = network_input(batch, t.loader.dataset, env.device)  # (B, C, [T,] S, S) float32, (B,)
        x = to_memory_format(x, cfg, env)
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

    from plumbing.progress import Progress

    t.sampler.set_epoch(epoch)
    set_train_mode(bare_model(t.model), t.init["bn"])
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


def bare_model(model):
    """The network inside DDP and torch.compile wrappers (compile wraps DDP here; either order works)."""
    while True:
        for name in ("_orig_mod", "module"):
            inner = getattr(model, name, None)
            if inner is not None:
                model = inner
                break
        else:
            return model


def build_training(cfg: TrainConfig, env: Env, store, subsets: Subsets, state: dict[str, Any] | None) -> Training:
    """Network, optimizer, schedule, scaler and loader of a run; from ``state`` (a last checkpoint) if given."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    # Resuming: the weights come from the checkpoint, so the pre-trained file is not read (nor needed).
    model, init = build_model(cfg, len(subsets.classes), warn=env.is_main,
                              init=saved_init(state, cfg) if state is not None else None)
    bare = model_to_memory_format(model.to(env.device), cfg, env)
    dataset = TrainViews(store, subsets.train, subsets.labels, cfg, resolve_decode(cfg.decode, env.cuda, store))
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
