"""Optical flow in PyTorch (CPU or CUDA), batched, following OpenCV's TV-L1 and Farneback."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["compute_flow_batch", "tvl1", "farneback"]


def _as_batch(x, name: str, device) -> torch.Tensor:
    """(B, H, W) or (H, W) uint8/float numpy or torch -> (B, H, W) float32 on ``device``, 0..255."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"{name}: expected (B, H, W) gray frames, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def tvl1(prev, nxt, device: str | torch.device = "cpu", **params: Any) -> torch.Tensor:
    from flowprep.torchflow.tvl1 import tvl1_flow

    p = _as_batch(prev, "prev", device)
    n = _as_batch(nxt, "nxt", device)
    return tvl1_flow(p, n, **params)


def compute_flow_batch(prev, nxt, algo: str = "tvl1", device: str | torch.device = "cpu",
                       **params: Any) -> torch.Tensor:
    if algo == "tvl1":
        return tvl1(prev, nxt, device=device, **params)
    if algo == "farneback":
        return farneback(prev, nxt, device=device, **params)
    raise ValueError(f"unknown algo {algo!r}")


def farneback(prev, nxt, device="cpu", **params):
    raise NotImplementedError
