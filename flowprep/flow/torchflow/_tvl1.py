"""Batched TV-L1 optical flow following OpenCV's CPU cv::optflow::DualTVL1OpticalFlow (tvl1flow.cpp).

Same pyramid (cv::resize INTER_LINEAR by scale_step, no pre-blur, coarsest level at least 16 px), same
warps (bicubic cv::remap of the second image and of its centred gradient, zero outside the image), same
outer/inner iterations with a 5x5 median filter of the flow before every outer iteration, same epsilon
test (sum over the image of the squared flow update <= epsilon^2 * pixels, checked after every inner
iteration), and the same float32 arithmetic operation by operation, so that on CPU the result is
bit-identical to opencv-contrib-python 4.14 in our tests.

Every pair in the batch keeps its own convergence state: a pair that has converged in a warp is frozen
(flow and dual variables) until the next warp starts, exactly where OpenCV would have left its loops. The
freeze is a tensor mask, so no host synchronisation is needed for it; the host only decides to skip the
rest of a warp once *all* pairs have converged, and on CUDA it looks only every ``sync_every`` inner
iterations (on CPU every iteration, which costs nothing).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from flowprep.flow.torchflow import ops

FLT_EPSILON = 1.1920928955078125e-07


def _f32(x: float) -> float:
    """The float32 value of a double, as OpenCV's static_cast<float> gives it."""
    return float(torch.tensor(x, dtype=torch.float32))


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient: (B, H, W) -> dx, dy; one-sided half differences on the border."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    dy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's forwardGradient: forward differences, 0 in the last column (dx) and last row (dy)."""
    dx = F.pad(u[:, :, 1:] - u[:, :, :-1], (0, 1))
    dy = F.pad(u[:, 1:, :] - u[:, :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """OpenCV's divergence: backward differences with the dual field taken as 0 before the first row/col."""
    div = torch.empty_like(v1)
    torch.sub(v1[:, :, 1:], v1[:, :, :-1], out=div[:, :, 1:])
    div[:, :, 0] = v1[:, :, 0]
    div[:, 1:, :] += v2[:, 1:, :] - v2[:, :-1, :]
    div[:, 0, :] += v2[:, 0, :]
    # the first column as OpenCV sums it: (v1 + v2) - v2_above (same value, its rounding)
    div[:, 1:, 0] = (v1[:, 1:, 0] + v2[:, 1:, 0]) - v2[:, :-1, 0]
    return div


def _dual_step(p1: torch.Tensor, p2: torch.Tensor, u: torch.Tensor, taut: float):
    """estimateDualVariables for one flow component: p <- (p + taut grad u) / (1 + taut |grad u|)."""
    gx, gy = forward_gradient(u)
    # OpenCV calls hypot on floats, which glibc evaluates in double; so do we, then round to float
    g = torch.hypot(gx.double(), gy.double()).float()
    ng = 1.0 + taut * g
    return (p1 + taut * gx) / ng, (p2 + taut * gy) / ng


def _iteration(ix, iy, grad, rho_c, u, p, l_t: float, theta: float, taut: float, gamma: float):
    """One inner iteration for the whole batch: estimateV, divergence, estimateU, dual update.

    ix, iy, grad, rho_c: (B, H, W) warp constants; u: tuple of 2 (3 with gamma) (B, H, W) flow
    components; p: tuple of 4 (6) dual components. Returns (new u, new p, (B, H, W) squared update).
    """
    rho = rho_c + (ix * u[0] + iy * u[1])
    if len(u) == 3:
        rho = rho + gamma * u[2]
    lg = l_t * grad
    neg_rho = -rho
    # the thresholding step: one factor per pixel, applied to each component's gradient. OpenCV tests
    # rho < -l_t*grad, i.e. -rho > lg (negation is exact); where grad is 0 the quotient is inf/nan but
    # is not selected.
    factor = torch.where(neg_rho > lg, l_t, torch.where(rho > lg, -l_t,
                                                        torch.where(grad > FLT_EPSILON, neg_rho / grad, 0.0)))
    steps = [factor * ix, factor * iy]
    if len(u) == 3:
        steps.append(factor * gamma)
    new_u = []
    err = None
    for k, (uk, dk) in enumerate(zip(u, steps)):
        un = (uk + dk) + theta * divergence(p[2 * k], p[2 * k + 1])
        du = un - uk
        err = du * du if err is None else err + du * du
        new_u.append(un)
    new_p = []
    for k, uk in enumerate(new_u):
        new_p.extend(_dual_step(p[2 * k], p[2 * k + 1], uk, taut))
    return tuple(new_u), tuple(new_p), err


def _error_sums(err: torch.Tensor) -> torch.Tensor:
    """Per-pair sum of the squared update, (B, H, W) -> (B,).

    OpenCV adds the pixels one after another in row order in a float; on CPU numpy's cumulative sum does
    exactly that (np.add.accumulate is sequential), so the stopping decisions match OpenCV's bit for bit.
    On a GPU the sum is taken in float64 instead: a decision can then differ from OpenCV's when the error
    lies within float32 rounding (~1e-5 relative) of the threshold.
    """
    if err.device.type == "cpu":
        flat = err.reshape(err.shape[0], -1).numpy()
        return torch.from_numpy(np.cumsum(flat, axis=1, dtype=np.float32)[:, -1].astype(np.float64))
    return err.sum(dim=(1, 2), dtype=torch.float64)


_COMPILED: dict[str, Callable] = {}


def _get_iteration(compile: bool) -> Callable:
    if not compile:
        return _iteration
    if "it" not in _COMPILED:
        _COMPILED["it"] = torch.compile(_iteration, dynamic=True)
    return _COMPILED["it"]


def _proc_one_scale(i0, i1, u, *, tau, lambda_, theta, warps, epsilon, inner_iterations, outer_iterations,
                    gamma, median_filtering, sync_every, lazy_sync, iteration):
    """One pyramid level (OpenCV's procOneScale); ``u`` is a tuple of (B, H, W) flow components."""
    b, h, w = i0.shape
    scaled_eps = _f32(epsilon * epsilon * h * w)
    l_t, taut, theta32, gamma32 = _f32(lambda_ * theta), _f32(tau / theta), _f32(theta), _f32(gamma)
    i1x, i1y = centered_gradient(i1)
    stack = torch.stack([i1, i1x, i1y], dim=1)  # (B, 3, H, W)
    p = tuple(torch.zeros_like(i0) for _ in range(2 * len(u)))  # dual variables live across warps
    xs = torch.arange(w, dtype=torch.float32, device=i0.device)
    ys = torch.arange(h, dtype=torch.float32, device=i0.device)[:, None]
    for _ in range(warps):
        warped = ops.remap_cubic(stack, xs + u[0], ys + u[1])
        i1w, ix, iy = warped[:, 0], warped[:, 1], warped[:, 2]
        grad = ix * ix + iy * iy
        rho_c = i1w - ix * u[0] - iy * u[1] - i0
        # (B, 1, 1): True while the pair's last error is above epsilon (OpenCV's loop condition); every
        # pair starts a warp active
        active = torch.ones(b, 1, 1, dtype=torch.bool, device=i0.device)
        n_done = 0  # inner iterations run in this warp
        finished = False
        for _outer in range(outer_iterations):
            for n_inner in range(inner_iterations):
                if n_done == 0:
                    masked = False
                elif lazy_sync:
                    # on a GPU: look at the host only every sync_every iterations; mask always
                    masked = True
                    if n_done % sync_every == 0 and not bool(active.any()):
                        finished = True
                else:
                    # on CPU a look costs nothing: mask only when some pair has stopped
                    n_active = int(active.sum())
                    finished = n_active == 0
                    masked = n_active < b
                if finished:
                    break
                if n_inner == 0 and median_filtering > 1:
                    u = tuple(torch.where(active, ops.median_blur5(c), c) if masked else ops.median_blur5(c)
                              for c in u[:2]) + u[2:]
                new_u, new_p, sq = iteration(ix, iy, grad, rho_c, u, p, l_t, theta32, taut, gamma32)
                error = _error_sums(sq)
                if masked:
                    u = tuple(torch.where(active, a, o) for a, o in zip(new_u, u))
                    p = tuple(torch.where(active, a, o) for a, o in zip(new_p, p))
                else:
                    u, p = new_u, new_p
                active = active & (error > scaled_eps).view(b, 1, 1)
                n_done += 1
            if finished:
                break
    return u


def _proc_one_scale_fused(i0, i1, u, *, tau, lambda_, theta, warps, epsilon, inner_iterations,
                          outer_iterations, median_filtering, sync_every, stats=None, **_):
    """_proc_one_scale with the inner loop in fused Triton kernels (_tvl1_fused); gamma = 0 only.

    The same steps and stopping rule: per pair, the median filter before each outer iteration and the inner
    iterations run while its error is above epsilon; a converged pair is skipped by the kernels until the
    next warp. The host looks at the flags every ``sync_every`` iterations, to end a warp early and to
    launch the next iterations over the pairs still active only. On CPU without Triton's interpreter each
    kernel runs as its eager reference (same control flow, eager arithmetic and error sums).
    ``stats``: a list to append this level's work to, for the performance model (tvl1_model): size, the
    schedule, the inner iterations and median filters each pair ran in each warp ((warps, B) int32, counted
    on the device: a small kernel per iteration), what the host launched (``windows``: [inner iterations,
    pairs covered] between two host checks; ``median_launches``; ``syncs``) and ``launches`` (each
    kernel's first Launch, described).
    """
    from flowprep.flow.torchflow import _tvl1_fused

    b, h, w = i0.shape
    level = None
    if stats is not None:
        level = {"height": h, "width": w, "pairs": b, "warps": warps, "inner_iterations": inner_iterations,
                 "outer_iterations": outer_iterations, "sync_every": sync_every, "median": median_filtering > 1,
                 "windows": [], "median_launches": 0, "syncs": 0, "launches": [],
                 "iterations": torch.zeros(warps, b, dtype=torch.int32, device=i0.device),
                 "medians": torch.zeros(warps, b, dtype=torch.int32, device=i0.device)}
        stats.append(level)
    run = _tvl1_fused.launch(reference=i0.device.type == "cpu" and not _tvl1_fused.interpreted(),
                             record=None if level is None else level["launches"])
    scaled_eps = _f32(epsilon * epsilon * h * w)
    l_t, taut, theta32 = _f32(lambda_ * theta), _f32(tau / theta), _f32(theta)
    i1x, i1y = centered_gradient(i1)
    stack = torch.stack([i1, i1x, i1y], dim=1)  # (B, 3, H, W)
    u1, u2 = (c.clone(memory_format=torch.contiguous_format) for c in u[:2])
    spare1, spare2 = torch.empty_like(u1), torch.empty_like(u2)  # median5 writes here, then they swap
    p = tuple(torch.zeros_like(i0) for _ in range(4))  # dual variables live across warps
    partials = torch.zeros(b, _tvl1_fused.n_blocks(h, w), dtype=torch.float64, device=i0.device)
    active = torch.ones(b, dtype=torch.int32, device=i0.device)
    every = torch.arange(b, dtype=torch.int32, device=i0.device)  # the pairs a launch covers
    table = ops.cubic_table(i0.device)
    ix, iy, rho_c = (torch.empty_like(i0) for _ in range(3))  # the warp's constants
    i0 = i0.contiguous()
    for n_warp in range(warps):
        run.warp(stack, i0, u1, u2, table, ix, iy, rho_c)
        active.fill_(1)
        pairs = every
        if level is not None:
            level["windows"].append([0, b])
        n_done, finished = 0, False
        for _outer in range(outer_iterations):
            for n_inner in range(inner_iterations):
                if n_done and n_done % sync_every == 0:  # one host sync: who is still active
                    pairs = torch.nonzero(active).flatten().to(torch.int32)
                    if level is not None:
                        level["syncs"] += 1
                        level["windows"].append([0, pairs.shape[0]])
                    if pairs.shape[0] == 0:
                        finished = True
                        break
                if n_inner == 0 and median_filtering > 1:
                    run.median5(u1, spare1, active)
                    run.median5(u2, spare2, active)
                    u1, spare1, u2, spare2 = spare1, u1, spare2, u2
                    if level is not None:
                        level["medians"][n_warp] += active
                        level["median_launches"] += 1
                if level is not None:
                    level["iterations"][n_warp] += active
                    level["windows"][-1][0] += 1
                run.primal(ix, iy, rho_c, u1, u2, p, active, pairs, partials, l_t, theta32)
                run.dual(u1, u2, p, active, pairs, taut)
                run.converged(partials, active, pairs, scaled_eps)
                n_done += 1
            if finished:
                break
    return u1, u2


def build_pyramid(img: torch.Tensor, nscales: int, scale_step: float) -> list[torch.Tensor]:
    """OpenCV TV-L1 pyramid: repeated cv::resize(fx=fy=scale_step), stopping before a side drops under 16."""
    levels = [img]
    for _ in range(1, nscales):
        h, w = levels[-1].shape[-2:]
        size = ops.resize_size(h, w, scale_step)
        if size[0] < 16 or size[1] < 16:
            break
        levels.append(ops.resize_linear(levels[-1], size, (scale_step, scale_step)))
    return levels


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, *, tau: float = 0.25, lambda_: float = 0.15,
              theta: float = 0.3, nscales: int = 5, warps: int = 5, epsilon: float = 0.01,
              inner_iterations: int = 30, outer_iterations: int = 10, scale_step: float = 0.8,
              gamma: float = 0.0, median_filtering: int = 5, sync_every: int = 10,
              compile: bool = False, lazy_sync: bool | None = None, fused: bool = False,
              stats: list | None = None) -> torch.Tensor:
    """TV-L1 flow of float32 (B, H, W) image pairs in 0..255 -> (B, H, W, 2) float32, x then y, pixels.

    lazy_sync (default: True on CUDA, False on CPU): ask the host whether every pair has converged only
    every ``sync_every`` inner iterations, and mask every iteration; otherwise ask every iteration.
    The result is the same either way. fused: run the inner loop in the Triton kernels of _tvl1_fused
    (gamma = 0 only; the caller checks); stats: see _proc_one_scale_fused (fused only).
    """
    if lazy_sync is None:
        lazy_sync = prev.device.type != "cpu"
    iteration = _get_iteration(compile)
    proc = partial(_proc_one_scale_fused, stats=stats) if fused else _proc_one_scale
    i0s = build_pyramid(prev, nscales, scale_step)
    i1s = build_pyramid(nxt, nscales, scale_step)
    inv = _f32(1.0 / scale_step)
    u = tuple(torch.zeros_like(i0s[-1]) for _ in range(3 if gamma != 0 else 2))
    for s in range(len(i0s) - 1, -1, -1):
        u = proc(i0s[s], i1s[s], u, tau=tau, lambda_=lambda_, theta=theta, warps=warps,
                            epsilon=epsilon, inner_iterations=inner_iterations,
                            outer_iterations=outer_iterations, gamma=gamma, median_filtering=median_filtering,
                            sync_every=max(1, int(sync_every)), lazy_sync=lazy_sync, iteration=iteration)
        if s == 0:
            break
        size = tuple(i0s[s - 1].shape[-2:])
        # the flow is rescaled by 1/scale_step; u3 (the illumination term) is not
        u = tuple(ops.resize_linear(c, size) * inv if k < 2 else ops.resize_linear(c, size)
                  for k, c in enumerate(u))
    return torch.stack([u[0], u[1]], dim=-1)
