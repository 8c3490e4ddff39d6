"""Dense optical flow in PyTorch, batched, on CPU or CUDA: TV-L1 and Farneback as OpenCV computes them.

    from flowprep.flow import torchflow
    flow = torchflow.compute_flow_batch(prev, nxt, algo="tvl1", device="cuda")  # (B, H, W, 2) float32

prev, nxt: (B, H, W) or (H, W) gray frames, numpy or torch. uint8 frames are used as 0..255 values, as
OpenCV does; float frames follow OpenCV too: TV-L1 takes them as 0..1 and multiplies by 255, Farneback
uses them as they are. The result is a float32 tensor on ``device``, x then y, in pixels, flow from prev
to nxt (prev[y, x] ~ nxt[y + v, x + u]). Parameter names, defaults and ranges are those of the one table,
flowprep.flow.params (OpenCV's defaults).

On CPU the results are bit-identical to opencv-contrib-python 4.14 on the frames we tested (see
docs/torchflow.md for where exact agreement stops and by how much). Only torch and numpy are needed.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from flowprep.errors import FlowprepError, OptionError
from flowprep.flow.params import FARNEBACK, TVL1, resolve_params

__all__ = ["compute_flow_batch", "tvl1", "farneback", "TorchFlowError", "TVL1_PARAMS", "FARNEBACK_PARAMS"]

# Accepted parameters and OpenCV's defaults: those of flowprep.flow.params, the one parameter table.
TVL1_PARAMS: dict[str, Any] = TVL1.defaults()
FARNEBACK_PARAMS: dict[str, Any] = FARNEBACK.defaults()
# Execution options of TV-L1 that do not change the result on CPU (see tvl1()).
TVL1_OPTIONS = ("sync_every", "compile", "lazy_sync", "fused")
_FUSED_FAILED: list[str] = []  # why the fused kernels could not run here, once they failed (auto mode only)


class TorchFlowError(FlowprepError, ValueError):
    """Bad input or parameters for the PyTorch flow backend."""


def _as_batch(x: Any, name: str, device: torch.device) -> tuple[torch.Tensor, bool]:
    """(B, H, W) or (H, W) numpy/torch frames -> ((B, H, W) float32 tensor on device, was_integer)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TorchFlowError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise TorchFlowError(f"{name}: expected (B, H, W) gray frames, got shape {tuple(x.shape)}; "
                             "convert colour frames to gray first")
    if x.shape[0] == 0:
        raise TorchFlowError(f"{name}: the batch is empty")
    if x.shape[1] < 4 or x.shape[2] < 4:
        raise TorchFlowError(f"{name}: frames of {x.shape[2]}x{x.shape[1]} px are too small (at least 4x4)")
    if x.dtype == torch.bool or x.is_complex():
        raise TorchFlowError(f"{name}: unsupported dtype {x.dtype}; pass uint8 frames")
    integer = not x.is_floating_point()
    return x.to(device=device, dtype=torch.float32), integer


def _pair(prev: Any, nxt: Any, device: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TorchFlowError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TorchFlowError("device 'cuda' was asked for but torch sees no CUDA device")
    p, p_int = _as_batch(prev, "prev", dev)
    n, n_int = _as_batch(nxt, "nxt", dev)
    if p.shape != n.shape:
        raise TorchFlowError(f"prev and nxt differ in shape: {tuple(p.shape)} vs {tuple(n.shape)}")
    if p_int != n_int:
        raise TorchFlowError("prev and nxt must both be integer (uint8) or both be float frames")
    return p, n, p_int


def _check_params(params: dict[str, Any], options: tuple[str, ...], algo: str) -> dict[str, Any]:
    """Execution ``options`` as given, and the flow parameters resolved by flowprep.flow.params for the torch
    backend (the same table, ranges and restrictions as `flowprep extract`)."""
    given = {k: v for k, v in params.items() if k not in options}
    try:
        resolved = resolve_params(algo, given, backend="torch")
    except OptionError as exc:
        raise TorchFlowError(str(exc)) from None
    return resolved | {k: v for k, v in params.items() if k in options}


def tvl1(prev: Any, nxt: Any, device: str | torch.device = "cpu", **params: Any) -> torch.Tensor:
    """TV-L1 flow (OpenCV's DualTVL1 on CPU) of a batch of pairs -> (B, H, W, 2) float32 on ``device``.

    params: tau, lambda_ (or lambda), theta, nscales, warps, epsilon, inner_iterations, outer_iterations,
    scale_step, gamma, median_filtering (OpenCV's defaults in TVL1_PARAMS; median_filtering is 5, or
    0/1 for none). Options: sync_every (default 10): on CUDA, inner iterations between the host checks
    that end a warp early once every pair has converged (a converged pair is frozen on the device
    whatever the value, so the result does not depend on it); lazy_sync (default: True on CUDA, False
    on CPU): use that CUDA scheme, or look every iteration; compile (default False): run the inner
    iteration through torch.compile (fused kernels may round differently from OpenCV); fused (default:
    True on CUDA when gamma is 0 and Triton is installed): run the inner loop in flowprep's Triton kernels,
    the same arithmetic in 3 kernels per inner iteration (plus one per warp and per median filter) instead
    of ~50 (on CPU only under Triton's interpreter, TRITON_INTERPRET=1, for tests). If the kernels fail to compile in the default mode, a warning says why
    and the eager path runs instead.
    """
    params = _check_params(params, TVL1_OPTIONS, "tvl1")
    from flowprep.flow.torchflow._tvl1 import tvl1_flow

    p, n, integer = _pair(prev, nxt, device)
    if not integer:  # OpenCV's TV-L1 reads float frames as 0..1
        p, n = p * 255.0, n * 255.0
    fused = params.pop("fused", None)
    auto = fused is None
    if auto:
        fused = p.device.type == "cuda" and params.get("gamma", 0.0) == 0 and not _FUSED_FAILED and _has_triton()
    elif fused:
        _check_fused(p.device, params)
    with torch.no_grad():
        if not fused:
            return tvl1_flow(p, n, **params)
        try:
            return tvl1_flow(p, n, fused=True, **params)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a Triton or driver that cannot build the kernels: say so, run eager
            if not auto:
                raise
            _FUSED_FAILED.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"flowprep's fused TV-L1 kernels failed ({_FUSED_FAILED[0][:500]}); using the eager "
                          "PyTorch path, which gives the same flow more slowly. Pass fused=False to silence this.",
                          RuntimeWarning, stacklevel=2)
            return tvl1_flow(p, n, **params)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_fused(device: torch.device, params: dict[str, Any]) -> None:
    """fused=True asked for explicitly: refuse what the kernels do not do."""
    if params.get("gamma", 0.0) != 0:
        raise TorchFlowError("fused=True implements gamma = 0 only (OpenCV's default); pass fused=False")
    if not _has_triton():
        raise TorchFlowError("fused=True needs Triton (pip install triton; CUDA builds of torch include it)")
    if device.type == "cpu":
        from flowprep.flow.torchflow import _tvl1_fused

        if not _tvl1_fused.interpreted():
            raise TorchFlowError("fused=True on CPU runs only under Triton's interpreter: set TRITON_INTERPRET=1 "
                                 "before Python starts (slow; meant for tests)")


def farneback(prev: Any, nxt: Any, device: str | torch.device = "cpu", **params: Any) -> torch.Tensor:
    """Farneback flow (cv2.calcOpticalFlowFarneback) of a batch of pairs -> (B, H, W, 2) float32.

    params: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags (0 or
    OPTFLOW_FARNEBACK_GAUSSIAN = 256); defaults in FARNEBACK_PARAMS.
    """
    params = _check_params(params, (), "farneback")
    from flowprep.flow.torchflow._farneback import farneback_flow

    p, n, _ = _pair(prev, nxt, device)
    with torch.no_grad():
        return farneback_flow(p, n, **params)


def compute_flow_batch(prev: Any, nxt: Any, algo: str = "tvl1", device: str | torch.device = "cpu",
                       **params: Any) -> torch.Tensor:
    """Flow of many frame pairs at once: (B, H, W) gray pairs -> (B, H, W, 2) float32 on ``device``.

    ``algo`` is "tvl1", "farneback" or "raft"; params as for tvl1() / farneback() / raft.raft_flow().
    """
    if algo == "tvl1":
        return tvl1(prev, nxt, device=device, **params)
    if algo == "farneback":
        return farneback(prev, nxt, device=device, **params)
    if algo == "raft":
        from flowprep.flow.torchflow.raft import raft_flow

        return raft_flow(prev, nxt, device=device, **_check_params(params, (), "raft"))
    try:
        resolve_params(algo, {}, backend="torch")  # names the algorithm's backends, or the known algorithms
    except OptionError as exc:
        raise TorchFlowError(str(exc)) from None
    raise TorchFlowError(f"{algo} has no PyTorch implementation")
