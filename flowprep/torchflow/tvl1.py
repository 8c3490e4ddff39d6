"""Batched TV-L1 optical flow following OpenCV's CPU cv::optflow::DualTVL1OpticalFlow (tvl1flow.cpp).

Same pyramid (cv::resize INTER_LINEAR by scale_step, no pre-blur, coarsest level at least 16 px), same
warps (bicubic cv::remap of the second image and of its centred gradient, zero outside the image), same
outer/inner iterations with a 5x5 median filter of the flow before every outer iteration, same epsilon
test (sum over the image of the squared flow update <= epsilon^2 * pixels, checked after every inner
iteration), same float32 arithmetic. Every pair in the batch keeps its own convergence state: a pair that
has converged in a warp is frozen (flow and dual variables) until the next warp starts, exactly when OpenCV
would have left its loops. Only the decision to skip the rest of a warp, when *all* pairs have converged,
needs the host; it is taken every ``sync_every`` inner iterations.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from flowprep.torchflow import ops

_log = []
FLT_EPSILON = 1.1920928955078125e-07


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
    v1x = v1 - F.pad(v1[:, :, :-1], (1, 0))
    v2y = v2 - F.pad(v2[:, :-1, :], (0, 0, 1, 0))
    return v1x + v2y


def _iteration(ix, iy, grad, rho_c, u, p, l_t: float, theta: float, taut: float, gamma: float):
    """One inner iteration for the whole batch (estimateV, divergence, estimateU, dual update).

    u: tuple of 2 (or 3 with gamma) (B, H, W) flow components; p: tuple of 4 (or 6) dual components.
    Returns (new u, new p, per-pair error (B,) float64).
    """
    use_gamma = len(u) == 3
    rho = rho_c + (ix * u[0] + iy * u[1])
    if use_gamma:
        rho = rho + gamma * u[2]
    lg = l_t * grad
    below = rho < -lg
    above = rho > lg
    inside = grad > FLT_EPSILON
    fi = -rho / torch.where(inside, grad, torch.ones_like(grad))
    zero = torch.zeros((), dtype=ix.dtype, device=ix.device)

    def shrink(ia):
        # thresholding step TH of the TV-L1 scheme, per component
        return torch.where(below, l_t * ia, torch.where(above, -l_t * ia, torch.where(inside, fi * ia, zero)))

    d = [shrink(ix), shrink(iy)]
    if use_gamma:
        g = torch.full_like(ix, gamma)
        d.append(shrink(g))
    new_u = []
    err = None
    for k in range(len(u)):
        v = u[k] + d[k]
        un = v + theta * divergence(p[2 * k], p[2 * k + 1])
        du = un - u[k]
        sq = du * du
        err = sq if err is None else err + sq
        new_u.append(un)
    import os, numpy as np
    if os.environ.get("SEQSUM"):
        e = err.reshape(err.shape[0], -1).numpy()
        error = torch.tensor([float(np.cumsum(r)[-1]) for r in e], dtype=torch.float64)
    else:
        error = err.sum(dim=(1, 2), dtype=torch.float64)
    new_p = []
    for k in range(len(u)):
        gx, gy = forward_gradient(new_u[k])
        ng = 1.0 + taut * torch.hypot(gx, gy)
        new_p.append((p[2 * k] + taut * gx) / ng)
        new_p.append((p[2 * k + 1] + taut * gy) / ng)
    return tuple(new_u), tuple(new_p), error


_COMPILED: dict = {}


def _get_iteration(compile: bool) -> Callable:
    if not compile:
        return _iteration
    if "it" not in _COMPILED:
        _COMPILED["it"] = torch.compile(_iteration, dynamic=True)
    return _COMPILED["it"]


def _proc_one_scale(i0, i1, u, *, tau, lambda_, theta, warps, epsilon, inner_iterations, outer_iterations,
                    gamma, median_filtering, sync_every, iteration):
    """One pyramid level; ``u`` is a list of (B, H, W) flow components updated and returned."""
    b, h, w = i0.shape
    scaled_eps = float(torch.tensor(epsilon * epsilon * h * w, dtype=torch.float32))
    i1x, i1y = centered_gradient(i1)
    stack = torch.stack([i1, i1x, i1y], dim=1)  # (B, 3, H, W)
    p = tuple(torch.zeros_like(i0) for _ in range(2 * len(u)))
    l_t = float(torch.tensor(lambda_ * theta, dtype=torch.float32))
    taut = float(torch.tensor(tau / theta, dtype=torch.float32))
    theta32 = float(torch.tensor(theta, dtype=torch.float32))
    gamma32 = float(torch.tensor(gamma, dtype=torch.float32))
    xs = torch.arange(w, dtype=torch.float32, device=i0.device)
    ys = torch.arange(h, dtype=torch.float32, device=i0.device)
    u = tuple(u)
    for _ in range(warps):
        warped = ops.remap_cubic(stack, xs + u[0], ys[:, None] + u[1])
        i1w, ix, iy = warped[:, 0], warped[:, 1], warped[:, 2]
        grad = ix * ix + iy * iy
        rho_c = i1w - ix * u[0] - iy * u[1] - i0
        # (B, 1, 1) True while the pair's last error is above epsilon: OpenCV's loop condition
        active = torch.ones(b, 1, 1, dtype=torch.bool, device=i0.device)
        for _outer in range(outer_iterations):
            if _outer > 0 and not bool(active.any()):
                break
            if median_filtering > 1:
                u = tuple(torch.where(active, ops.median_blur5(c), c) if k < 2 else c for k, c in enumerate(u))
            for n_inner in range(inner_iterations):
                if n_inner > 0 and n_inner % sync_every == 0 and not bool(active.any()):
                    break
                new_u, new_p, error = iteration(ix, iy, grad, rho_c, u, p, l_t, theta32, taut, gamma32)
                u = tuple(torch.where(active, nu, ou) for nu, ou in zip(new_u, u))
                p = tuple(torch.where(active, np_, op) for np_, op in zip(new_p, p))
                active = active & (error > scaled_eps).view(b, 1, 1)
                import os
                if os.environ.get("DBG"):
                    _log.append((h, _outer, n_inner, float(error[0]), scaled_eps))
    return list(u)


def build_pyramid(img: torch.Tensor, nscales: int, scale_step: float) -> list[torch.Tensor]:
    """OpenCV TV-L1 pyramid: repeated cv::resize(fx=fy=scale_step), stopping before a side drops under 16."""
    levels = [img]
    for _ in range(1, nscales):
        h, w = levels[-1].shape[-2:]
        size = ops.resize_size(h, w, scale_step)
        nxt = ops.resize_linear(levels[-1], size, (scale_step, scale_step))
        if size[0] < 16 or size[1] < 16:
            break
        levels.append(nxt)
    return levels


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, *, tau: float = 0.25, lambda_: float = 0.15,
              theta: float = 0.3, nscales: int = 5, warps: int = 5, epsilon: float = 0.01,
              inner_iterations: int = 30, outer_iterations: int = 10, scale_step: float = 0.8,
              gamma: float = 0.0, median_filtering: int = 5, sync_every: int = 10,
              compile: bool = False) -> torch.Tensor:
    """TV-L1 flow of float32 (B, H, W) image pairs in 0..255 -> (B, H, W, 2) float32, x then y, pixels."""
    if median_filtering not in (0, 1, 5):
        raise ValueError(f"median_filtering={median_filtering}: only 5 (OpenCV's default) or 0/1 (off) "
                         "are implemented")
    iteration = _get_iteration(compile)
    i0s = build_pyramid(prev, nscales, scale_step)
    i1s = build_pyramid(nxt, nscales, scale_step)
    n = min(len(i0s), len(i1s))
    ncomp = 3 if gamma != 0 else 2
    inv = float(torch.tensor(1.0 / scale_step, dtype=torch.float32))
    u = [torch.zeros_like(i0s[n - 1]) for _ in range(ncomp)]
    for s in range(n - 1, -1, -1):
        u = _proc_one_scale(i0s[s], i1s[s], u, tau=tau, lambda_=lambda_, theta=theta, warps=warps,
                            epsilon=epsilon, inner_iterations=inner_iterations,
                            outer_iterations=outer_iterations, gamma=gamma, median_filtering=median_filtering,
                            sync_every=max(1, int(sync_every)), iteration=iteration)
        if s == 0:
            break
        size = tuple(i0s[s - 1].shape[-2:])
        # flow is rescaled by 1/scale_step (u3, the illumination term, is not)
        u = [ops.resize_linear(c, size) * (inv if k < 2 else 1.0) for k, c in enumerate(u)]
    return torch.stack([u[0], u[1]], dim=-1)
