"""Training of one stream, read top to bottom: ``train_one_epoch``, ``evaluate`` (trainer.evaluation), ``run``.

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt
from trainer import logs
from trainer.config import RUNTIME_KEYS, TrainConfig, config_from_dict
from trainer.data import TrainViews, open_store, short_videos, split_subsets, train_loader
from trainer.distributed import Env, all_sum, barrier, broadcast_object, no_sync, setup, teardown
from trainer.errors import CheckpointError, ConfigError, TrainerError
from trainer.evaluation import (accuracy, autocast, evaluate, model_to_memory_format, resolve_precision,
                                score_subset, to_memory_format, write_subset_scores)
from trainer.models import build_model, param_groups, saved_init, set_train_mode

log = logging.getLogger("trainer")

LOCK = ".{}.lock"  # beside the run directory (OUT/.STREAM-splitK.lock), held by rank 0 while a job writes it


def say(env: Env, message: str) -> None:
    """Console output of rank 0 (kept off the progress bar)."""
    if env.is_main:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


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
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than one epoch ({samples} training samples = "
                          f"videos x samples_per_video); lower batch_size or raise samples_per_video")
    if cfg.schedule == "iter-step":
        epochs = math.ceil(cfg.max_iters / iters)
    else:
        epochs = cfg.epochs
    return Plan(micro_batch=micro, accum=accum, iters_per_epoch=iters, epochs=epochs, max_iters=cfg.max_iters)


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


def train_one_epoch(model, loader, sampler, optimizer, scheduler, scaler, cfg: TrainConfig, env: Env, plan: Plan,
                    epoch: int, iteration: int, progress: bool, bn: str) -> tuple[dict[str, float], int]:
    """One pass over the training samples (or fewer iterations at max_iters). Returns (row, iteration).

    ``bn``: the resolved BatchNorm mode (train, partial or frozen; see models.resolve_bn). A loss that is not
    finite stops training with a TrainerError naming the iteration and the learning rate.
    """
    import torch
    import torch.nn.functional as nnf
    from tqdm import tqdm

    from trainer.transforms import normalize

    sampler.set_epoch(epoch)
    set_train_mode(_bare(model), bn)
    iters = plan.iters_per_epoch
    if plan.max_iters:
        iters = min(iters, plan.max_iters - iteration)
    bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{plan.epochs}", disable=not (progress and env.is_main),
               leave=False, dynamic_ncols=True)
    loss_sum = torch.zeros((), device=env.device, dtype=torch.float64)
    lr_used = optimizer.param_groups[0]["lr"]
    c1 = torch.zeros((), device=env.device, dtype=torch.int64)
    c5 = torch.zeros((), device=env.device, dtype=torch.int64)
    seen = 0
    data_time = batch_time = 0.0
    batches = iter(loader)
    # Dropout masks depend only on (seed, epoch, rank), so a resumed run repeats them. Seeded after the
    # iterator is made: making it may draw from the global RNG (the DataLoader's worker seeds).
    torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + env.rank)
    t_end = time.perf_counter()
    for _ in range(iters):
        for micro in range(plan.accum):
            t0 = time.perf_counter()
            x, flipped, y = next(batches)
            data_time += time.perf_counter() - t0
            x = x.to(env.device, non_blocking=True)
            y = y.to(env.device, non_blocking=True)
            x = to_memory_format(normalize(x, cfg.stream, cfg.is_clip, flipped), cfg, env)
            with no_sync(model, env.world > 1 and micro < plan.accum - 1):
                with autocast(env, cfg.precision):
                    out = model(x)
                loss = nnf.cross_entropy(out.float(), y)
                scaler.scale(loss / plan.accum).backward()
            with torch.no_grad():  # counts stay on the device: no sync per micro-step
                loss_sum += loss.detach().double() * len(y)
                hit = out.detach().topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
                c1 += hit[:, 0].sum()
                c5 += hit.any(dim=1).sum()
            seen += len(y)
        lr_used = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        iteration += 1
        # waits for the device, so batch times are real step times; the epoch's sum covers every micro-step
        loss_now, loss_total = torch.stack([loss.detach().double(), loss_sum]).tolist()
        if not (math.isfinite(loss_now) and math.isfinite(loss_total)):
            raise TrainerError(
                f"training diverged: the loss is {loss_now if not math.isfinite(loss_now) else loss_total} at "
                f"iteration {iteration} (epoch {epoch + 1}, lr {lr_used:.3g}); nothing after the last checkpoint "
                f"was saved. Lower lr (--set lr=...), and check bn and pretrained: over random weights use bn = auto "
                f"or train (partial and frozen BN keep untrained statistics); the init line above says what was "
                f"used. Then re-run with --fresh")
        now = time.perf_counter()
        batch_time += now - t_end
        t_end = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss_now:.3f}", wait=f"{100 * data_time / max(batch_time, 1e-9):.0f}%")
    bar.close()
    total = all_sum(env, [float(loss_sum), float(c1), float(c5), float(seen), data_time, batch_time])
    n = max(total[3], 1.0)
    done = max(iters, 1)
    row = {"epoch": epoch + 1, "iteration": iteration, "lr": lr_used,
           "loss": total[0] / n, "top1": 100.0 * total[1] / n, "top5": 100.0 * total[2] / n,
           "batch_time": total[5] / env.world / done, "data_time": total[4] / env.world / done,
           "data_wait": total[4] / max(total[5], 1e-9), "samples_per_s": n / max(total[5] / env.world, 1e-9)}
    return row, iteration


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
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    run_dir = cfg.run_dir
    if fresh and resume:
        raise ConfigError("--fresh and --resume contradict each other; give one of them")
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    num_classes = len(subsets.classes)
    source = _resume_source(cfg, env, resume, fresh)
    state = _load_everywhere(source, env, for_resume=True) if source is not None else None
    if state is not None:
        diff = _config_differences(state["config"], cfg)
        if diff:
            raise CheckpointError(f"{source}: this run was made with other settings ({'; '.join(diff[:4])}"
                                  f"{' ...' if len(diff) > 4 else ''}); re-run with the run's config "
                                  f"(--config {run_dir / 'config.toml'}), pass --fresh to start over, or choose "
                                  f"another --out")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    # Resuming: the weights come from the checkpoint, so the pre-trained file is not read (nor needed).
    model, init = build_model(cfg, num_classes, warn=env.is_main,
                              init=saved_init(state, cfg) if state is not None else None)
    model = model_to_memory_format(model.to(env.device), cfg, env)

    dataset = TrainViews(store, subsets.train, subsets.labels, cfg)
    plan = make_plan(cfg, env.world, len(dataset))
    precision = resolve_precision(env, cfg.precision)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, plan))
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")

    if env.is_main:  # only now: a run that cannot start leaves no folder behind
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            ckpt.remove_run_outputs(run_dir)
        for tmp in ckpt.remove_stale_temp_files(run_dir):
            say(env, f"removed {tmp}: half of a checkpoint, left by a run killed while writing it")
    barrier(env)
    start_epoch, iteration, history = 0, 0, []
    best = {"epoch": 0, "val_top1": -1.0, "val_loss": float("inf"), "selected_by": ""}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        history = list(state["history"])
        best = dict(state.get("best") or best)
        say(env, f"resuming {run_dir} from {source}: epoch {start_epoch} of {plan.epochs} done, "
                 f"iteration {iteration}")
        if env.is_main and history:
            logs.write_csv(run_dir / "log.csv", history)  # drop rows of epochs after the last checkpoint
        del state

    bare = model
    # DDP first, then compile (PyTorch's order: compile sees DDP's buckets and breaks the graph at them)
    if env.world > 1:
        model = DDP(model, device_ids=[env.device.index] if env.cuda else None)
    if cfg.compile:
        model = torch.compile(model)
    loader, sampler = train_loader(dataset, plan.micro_batch, env.world, env.rank, cfg.seed, cfg.workers,
                                   pin=env.cuda)

    if env.is_main:
        (run_dir / "config.toml").write_text(cfg.to_toml(resolved={"bn": init["bn"], "precision": precision}))
    say(env, f"{cfg.stream} stream, split {cfg.split}: {len(subsets.train)} train / {len(subsets.val)} hold-out /"
             f" {len(subsets.test)} test videos, {num_classes} classes, {cfg.arch} ({cfg.in_channels} input "
             f"channels), init: {init['note']}")
    say(env, f"{env.world} process(es) on {env.device.type}; batch {cfg.batch_size} = {env.world} x "
             f"{plan.micro_batch} x {plan.accum} accumulation; {plan.iters_per_epoch} iterations/epoch, "
             f"{plan.epochs} epochs{f', stop at iteration {plan.max_iters}' if plan.max_iters else ''}; "
             f"precision {precision}")
    _report_videos(env, store, subsets, cfg)
    say(env, logs.header())
    for row in history:
        say(env, logs.format_row(row))

    def finished(epoch: int, iteration: int) -> bool:
        return epoch >= plan.epochs or bool(plan.max_iters and iteration >= plan.max_iters)

    epoch = start_epoch
    saved_epoch, saved_iteration = start_epoch, iteration  # the last validation + checkpoint (or the start)
    while not finished(epoch, iteration):
        t0 = time.perf_counter()
        row, iteration = train_one_epoch(model, loader, sampler, optimizer, scheduler, scaler, cfg, env, plan,
                                         epoch, iteration, progress, init["bn"])
        epoch += 1
        # Validation and checkpoints at epoch ends only (a resumed run restarts at an epoch), but not more
        # often than val_every epochs and val_every_iters iterations: with ~33 iterations per epoch their
        # cost would exceed the training in between.
        due = finished(epoch, iteration) or (epoch - saved_epoch >= cfg.val_every
                                             and iteration - saved_iteration >= cfg.val_every_iters)
        val = {}
        if due and subsets.val:
            val = evaluate(bare, store, subsets.val, subsets.labels, cfg, env, progress)
        row.update(val_loss=val.get("val_loss"), val_top1=val.get("val_top1"), val_top5=val.get("val_top5"),
                   epoch_time=time.perf_counter() - t0)
        history.append(row)
        say(env, logs.format_row(row))
        if val and not math.isfinite(val["val_loss"]):
            say(env, f"warning: hold-out loss {val['val_loss']} at epoch {epoch}: not a candidate for "
                     f"{ckpt.BEST}")
        if env.is_main:
            logs.write_csv(run_dir / "log.csv", history)  # every epoch: small; rebuilt from the checkpoint
        if env.is_main and due:
            improved = False
            if not subsets.val:
                best = {"epoch": epoch, "val_top1": None, "val_loss": None,
                        "selected_by": "last epoch (no hold-out)"}
                improved = True
            elif math.isfinite(val["val_loss"]) and \
                    (val["val_top1"], -val["val_loss"]) > (best["val_top1"], -best["val_loss"]):
                best = {"epoch": epoch, "val_top1": val["val_top1"], "val_loss": val["val_loss"],
                        "selected_by": "hold-out top-1, then hold-out loss"}
                improved = True
            common = {"model": _bare(bare).state_dict(), "epoch": epoch, "iteration": iteration,
                      "config": cfg.to_dict(), "derived": cfg.derived(), "classes": subsets.classes,
                      "best": best, "init": init}
            # best first: a kill between the two writes leaves a last checkpoint that re-does these epochs
            if improved:
                ckpt.save_checkpoint(run_dir / ckpt.BEST, dict(common, kind="best"))
            ckpt.save_checkpoint(run_dir / ckpt.LAST, dict(
                common, kind="last", optimizer=optimizer.state_dict(), lr_scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else {}, history=history))
            try:
                logs.plot_curves(run_dir / "curves.png", history, f"{cfg.stream} split {cfg.split} ({cfg.arch})")
            except Exception as exc:  # a plotting problem must not stop training
                log.warning("could not draw curves.png: %s", exc)
        if due:
            saved_epoch, saved_iteration = epoch, iteration
        barrier(env)

    best = broadcast_object(env, best)
    if epoch > start_epoch:
        say(env, f"training done: {epoch} epochs, {iteration} iterations; best: epoch {best['epoch']} "
                 f"({best['selected_by']})")
    elif history:
        say(env, f"nothing left to train ({epoch} epochs, {iteration} iterations); best: epoch {best['epoch']}")
    if not best["epoch"]:
        raise TrainerError(f"{run_dir}: no validation gave a finite hold-out loss, so there is no "
                           f"{ckpt.BEST}; lower lr and check bn and pretrained (see log.csv), then re-run "
                           f"with --fresh")
    summary: dict[str, Any] = {"run_dir": str(run_dir), "epochs": epoch, "iteration": iteration, "best": best,
                               "history": history}
    if test:
        del model, loader
        summary["test"] = test_run(cfg, env, run_dir / ckpt.BEST, store=store, subsets=subsets,
                                   progress=progress)
    return summary


def test_run(cfg: TrainConfig, env: Env, checkpoint: Path, store=None, subsets=None, which=("val", "test"),
             progress: bool = True) -> dict[str, Any]:
    """The test protocol with a checkpoint on the hold-out (if any) and the test list; writes score files.

    ``cfg`` supplies the test-time keys (data, test_frames, test_crops, ...); the model comes from the
    checkpoint and its own config. Without ``subsets`` (`trainer test`) only the subsets in ``which`` need
    to be in the store.
    """
    import torch

    state = _load_everywhere(Path(checkpoint), env, for_resume=False)
    saved = config_from_dict(state["config"], f"{checkpoint}:config")
    standalone = subsets is None
    store = store if store is not None else open_store(cfg.data)
    subsets = subsets if subsets is not None else split_subsets(store, cfg, use=tuple(which))
    classes = list(state.get("classes") or subsets.classes)
    if classes != subsets.classes:
        raise CheckpointError(f"{checkpoint}: trained on classes {classes[:3]}... but {cfg.data} has "
                              f"{subsets.classes[:3]}...; test with the store the model was trained on")
    if saved.stream != cfg.stream:
        raise CheckpointError(f"{checkpoint}: a {saved.stream} checkpoint, asked to test the {cfg.stream} stream")
    if standalone:
        _report_videos(env, store, subsets, cfg, which)
    model, _ = build_model(saved, len(classes), warn=False, init=saved_init(state, saved))
    model.load_state_dict(state["model"])
    model = model_to_memory_format(model.to(env.device).eval(), cfg, env)
    if cfg.compile:
        model = torch.compile(model)
    results = {}
    run_dir = cfg.run_dir
    for subset in which:
        ids = subsets.val if subset == "val" else subsets.test
        if not ids:
            continue
        out = score_subset(model, store, ids, subsets.labels, cfg, env, progress, desc=f"test {subset}")
        if out is None:  # not rank 0
            continue
        logits, info = out
        undecodable = info["undecodable"]
        kept = [v for v in ids if v not in undecodable]
        path = run_dir / f"scores_{subset}.npz"
        write_subset_scores(path, kept, subsets.labels, logits, classes, cfg, subset, checkpoint, state,
                            subsets.missing.get(subset, []), env, undecodable)
        top1, top5 = accuracy(logits, [subsets.labels[v] for v in kept])
        results[subset] = {"path": str(path), "videos": len(kept), "top1": top1, "top5": top5,
                           "chance": 100.0 / len(classes), **info}
        left_out = f" ({len(undecodable)} undecodable left out: {', '.join(undecodable)})" if undecodable else ""
        say(env, f"{cfg.stream} {subset}: {len(kept)} videos{left_out} x {cfg.test_frames} x {cfg.test_crops} "
                 f"views: top-1 {top1:.1f}%  top-5 {top5:.1f}%  (chance {100.0 / len(classes):.1f}%); "
                 f"{info['views_per_s']:.0f} views/s, data wait {100 * info['data_wait']:.0f}%; wrote {path}")
    barrier(env)
    return broadcast_object(env, results)


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
