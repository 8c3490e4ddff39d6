"""Batch tensors of the loader workers, in shared memory that a worker reuses once the main process is done.

A DataLoader worker hands its batches over in shared memory (``/dev/shm``). Allocating a fresh segment per
batch, as ``default_collate`` does, costs more than one would think: the first write into each page of a new
shared-memory segment allocates it, about 1.2 ms per MB on the development machine, that is ~1 ms per
temporal sample of 20 x 224 x 224 bytes, a quarter of the worker's time. So each worker keeps a few
segments and reuses one once the main process has marked it released (``Release``, a flag byte at the end of
the segment, written through the shared mapping): the main process calls it as soon as the batch's bytes
are consumed (copied to pinned memory or to the device, or normalised: device_decode.network_input). A
batch that is never released is simply never reused.
"""
from __future__ import annotations

from typing import Any

POOLED = 4       # segments a worker keeps: 2 batches in flight (prefetch_factor), 1 being consumed, 1 spare
HEADROOM = 1.25  # a segment for a batch of JPEG bytes is this much larger, so that later batches fit it

_pool: list[tuple[Any, Any]] = []  # this worker's (segment, flag) pairs, oldest first


class Release:
    """Marks a worker's batch segment free for reuse (called by the main process; a no-op outside workers)."""

    def __init__(self, flag=None):
        self.flag = flag  # (1,) uint8 view of the segment's last byte, or None

    def __call__(self) -> None:
        if self.flag is not None:
            self.flag[0] = 1


def batch_tensor(shape: tuple[int, ...], headroom: bool = False, reuse: bool = True) -> tuple[Any, Release]:
    """An uninitialised uint8 tensor of ``shape`` for a batch, and the Release of its memory.

    Outside a DataLoader worker: ordinary memory. In a worker: a view of a shared-memory segment, a released
    one of this worker's that is large enough if there is one, else a new one (``headroom``: HEADROOM times
    larger, for batches whose size varies); with ``reuse`` False a new segment that is never reused.
    """
    import numpy as np
    import torch
    from torch.utils.data import get_worker_info

    n = int(np.prod(shape))
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8), Release()
    if not reuse:
        storage = torch.UntypedStorage._new_shared(max(1, n))
        return torch.empty(0, dtype=torch.uint8).set_(storage)[:n].view(shape), Release()
    for k, (segment, flag) in enumerate(_pool):
        if flag[0] == 1 and segment.numel() - 1 >= n:
            flag[0] = 0
            _pool.append(_pool.pop(k))  # most recently used last
            return segment[:n].view(shape), Release(flag)
    size = int(n * HEADROOM) if headroom else n
    # _new_shared: how torch's own default_collate allocates a worker's batch in shared memory
    segment = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size + 1))
    flag = segment[size:]
    flag[0] = 0
    if len(_pool) >= POOLED:  # every kept segment is still in use: forget the oldest (its holder keeps it)
        _pool.pop(0)
    _pool.append((segment, flag))
    return segment[:n].view(shape), Release(flag)
