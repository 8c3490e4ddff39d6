"""Process placement: one process per GPU under torchrun (NCCL), or gloo on CPU; a single process otherwise.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT, also across nodes); nothing else is
needed here. Rank 0 logs and writes files; the others compute.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError


@dataclass(frozen=True)
class Env:
    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def setup(device: str = "auto") -> Env:
    """Pick the device and join the process group when started by torchrun with more than one process."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = cuda, but torch sees no CUDA device; use device = auto or cpu")
    if device != "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        # Input sizes are fixed (every crop is resized to input_size), so cuDNN's per-shape autotuning
        # pays for itself after the first iterations.
        torch.backends.cudnn.benchmark = True
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Env(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(env: Env, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others, so no rank
    closes its gloo/NCCL connections while a peer still finishes the last collective (seen as an abort,
    "terminate called without an active exception", at exit). After an error there is no wait: the
    peers may never arrive."""
    import torch.distributed as dist

    if env.world > 1 and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(env: Env) -> None:
    import torch.distributed as dist

    if env.world > 1:
        dist.barrier()


def all_sum(env: Env, values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all processes."""
    import torch
    import torch.distributed as dist

    if env.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(env: Env, obj: Any) -> Any:
    """Rank 0's object on every rank (used to share a decision or an error message)."""
    import torch.distributed as dist

    if env.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(env: Env, obj: Any) -> list[Any] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    if env.world == 1:
        return [obj]
    out = [None] * env.world if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def no_sync(model, active: bool):
    """Skip DDP's gradient all-reduce on accumulation micro-steps (``model``: DDP, or torch.compile of it)."""
    ddp = getattr(model, "_orig_mod", model)
    return ddp.no_sync() if active and hasattr(ddp, "no_sync") else nullcontext()
