"""Batched Farneback optical flow following cv::calcOpticalFlowFarneback (OpenCV video/src/optflowgf.cpp).

Same pyramid (each level: Gaussian blur of the full-size frame with sigma = (1/scale - 1) / 2, then
cv::resize INTER_LINEAR; levels stop before a side drops under 32 px), same polynomial expansion (separable,
float vertical pass, double horizontal pass, replicated border), same matrix update (bilinear sampling of
the second expansion, damped 5-pixel border), same box (double running sums) or Gaussian (float) window and
the same 2x2 solve in double. The arithmetic follows OpenCV's operation by operation, so on CPU the result
is bit-identical to opencv-contrib-python 4.14 in our tests. Farneback has no early stopping: every pair runs
the same iterations, so the batch needs no masks.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from flowprep.flow.torchflow import ops

OPTFLOW_FARNEBACK_GAUSSIAN = 256
MIN_SIZE = 32
_BORDER = (0.14, 0.14, 0.4472, 0.4472, 0.4472)


def _f32(x: float) -> float:
    return float(np.float32(x))


def poly_consts(n: int, sigma: float) -> tuple[list[float], list[float], list[float], tuple[float, ...]]:
    """FarnebackPrepareGaussian: float32 kernels g, x*g, x*x*g for offsets 0..n and (ig11, ig03, ig33, ig55)."""
    if sigma < 1.1920928955078125e-07:
        sigma = n * 0.3
    f32 = np.float32
    g = {x: f32(math.exp(-x * x / (2 * sigma * sigma))) for x in range(-n, n + 1)}
    s = 0.0
    for x in range(-n, n + 1):
        s += float(g[x])
    s = 1.0 / s
    g = {x: f32(float(g[x]) * s) for x in g}
    xg = {x: f32(f32(x) * g[x]) for x in g}
    xxg = {x: f32(f32(x * x) * g[x]) for x in g}
    G = np.zeros((6, 6))
    for y in range(-n, n + 1):
        for x in range(-n, n + 1):
            gg = f32(g[y] * g[x])
            G[0, 0] += float(gg)
            G[1, 1] += float(f32(f32(gg * f32(x)) * f32(x)))
            G[3, 3] += float(f32(f32(f32(f32(gg * f32(x)) * f32(x)) * f32(x)) * f32(x)))
            G[5, 5] += float(f32(f32(f32(f32(gg * f32(x)) * f32(x)) * f32(y)) * f32(y)))
    G[2, 2] = G[0, 3] = G[0, 4] = G[3, 0] = G[4, 0] = G[1, 1]
    G[4, 4] = G[3, 3]
    G[3, 4] = G[4, 3] = G[5, 5]
    inv = _cholesky_inverse(G)
    return ([float(g[k]) for k in range(n + 1)], [float(xg[k]) for k in range(n + 1)],
            [float(xxg[k]) for k in range(n + 1)], (inv[1, 1], inv[0, 3], inv[3, 3], inv[5, 5]))


def _cholesky_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix the way cv::invert(DECOMP_CHOLESKY) computes it."""
    n = a.shape[0]
    L = a.astype(np.float64).copy()
    for i in range(n):
        for j in range(i):
            s = L[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s * L[j, j]
        s = L[i, i]
        for k in range(i):
            s -= L[i, k] * L[i, k]
        L[i, i] = 1.0 / math.sqrt(s)  # the diagonal holds 1/sqrt
    b = np.eye(n)
    for i in range(n):
        for j in range(n):
            s = b[i, j]
            for k in range(i):
                s -= L[i, k] * b[k, j]
            b[i, j] = s * L[i, i]
    for i in range(n - 1, -1, -1):
        for j in range(n):
            s = b[i, j]
            for k in range(n - 1, i, -1):
                s -= L[k, i] * b[k, j]
            b[i, j] = s * L[i, i]
    return b


def poly_expansion(img: torch.Tensor, n: int, sigma: float) -> torch.Tensor:
    """FarnebackPolyExp: (B, H, W) float32 -> (B, 5, H, W) float32 coefficients, in OpenCV's channel
    order (y, x, xx, yy, xy), replicated border."""
    g, xg, xxg, (ig11, ig03, ig33, ig55) = poly_consts(n, sigma)
    _, h, w = img.shape
    f64 = torch.float64
    # vertical pass in float
    p = ops.pad_hw(img, 0, 0, n, n, "replicate")
    r0 = img * g[0]
    r1 = torch.zeros_like(img)
    r2 = torch.zeros_like(img)
    for k in range(1, n + 1):
        up, dn = p[:, n - k:n - k + h], p[:, n + k:n + k + h]
        s = up + dn
        r0 = r0 + g[k] * s
        r1 = r1 + xg[k] * (dn - up)
        r2 = r2 + xxg[k] * s
    # horizontal pass: float sums and products, accumulated in double
    q0, q1, q2 = (ops.pad_hw(t, n, n, 0, 0, "replicate") for t in (r0, r1, r2))
    b1 = (r0 * g[0]).to(f64)
    b3 = (r1 * g[0]).to(f64)
    b5 = (r2 * g[0]).to(f64)
    b2 = torch.zeros_like(b1)
    b4 = torch.zeros_like(b1)
    b6 = torch.zeros_like(b1)
    for k in range(1, n + 1):
        lo, hi = slice(n - k, n - k + w), slice(n + k, n + k + w)
        tg = (q0[..., hi] + q0[..., lo]).to(f64)
        b1 = b1 + tg * g[k]
        b4 = b4 + tg * xxg[k]
        b2 = b2 + ((q0[..., hi] - q0[..., lo]) * xg[k]).to(f64)
        b3 = b3 + ((q1[..., hi] + q1[..., lo]) * g[k]).to(f64)
        b6 = b6 + ((q1[..., hi] - q1[..., lo]) * xg[k]).to(f64)
        b5 = b5 + ((q2[..., hi] + q2[..., lo]) * g[k]).to(f64)
    out = torch.stack([b3 * ig11, b2 * ig11, b1 * ig03 + b5 * ig33, b1 * ig03 + b4 * ig33, b6 * ig55], dim=1)
    return out.float()


def _border_scale(h: int, w: int, device) -> torch.Tensor:
    """(H, W) float32 damping of the matrices within 5 px of the border (1 inside), multiplied in
    OpenCV's order: left, right, top, bottom factor."""
    f32 = np.float32

    def side(n: int, far: bool) -> np.ndarray:
        return np.array([f32(_BORDER[n - i - 1] if far else _BORDER[i]) if (i >= n - 5 if far else i < 5)
                         else f32(1) for i in range(n)], dtype=f32)

    scale = ((side(w, False)[None, :] * side(w, True)[None, :]) * side(h, False)[:, None]) * side(h, True)[:, None]
    return torch.from_numpy(scale.astype(f32)).to(device)


def update_matrices(r0: torch.Tensor, r1: torch.Tensor, flow: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """FarnebackUpdateMatrices: (B, 5, H, W) expansions and (B, 2, H, W) flow -> (B, 5, H, W) float32."""
    b, _, h, w = r0.shape
    dev = r0.device
    dx, dy = flow[:, 0], flow[:, 1]
    fx = torch.arange(w, device=dev, dtype=torch.float32) + dx
    fy = torch.arange(h, device=dev, dtype=torch.float32)[:, None] + dy
    x1 = torch.floor(fx)
    y1 = torch.floor(fy)
    fx = fx - x1
    fy = fy - y1
    x1 = x1.long()
    y1 = y1.long()
    inside = (x1 >= 0) & (x1 < w - 1) & (y1 >= 0) & (y1 < h - 1)
    xc = x1.clamp(0, max(w - 2, 0))
    yc = y1.clamp(0, max(h - 2, 0))
    a00 = (1.0 - fx) * (1.0 - fy)
    a01 = fx * (1.0 - fy)
    a10 = (1.0 - fx) * fy
    a11 = fx * fy
    flat = r1.reshape(b, 5, h * w)
    base = yc * w + xc

    def tap(off):
        idx = (base + off).reshape(b, 1, h * w).expand(b, 5, h * w)
        return torch.gather(flat, 2, idx).reshape(b, 5, h, w)

    samp = ((a00[:, None] * tap(0) + a01[:, None] * tap(1)) + a10[:, None] * tap(w)) + a11[:, None] * tap(w + 1)
    s2, s3, s4, s5, s6 = samp.unbind(1)
    q0, q1, q2, q3, q4 = r0.unbind(1)
    zero = torch.zeros((), dtype=r0.dtype, device=dev)
    r4 = torch.where(inside, (q2 + s4) * 0.5, q2)
    r5 = torch.where(inside, (q3 + s5) * 0.5, q3)
    r6 = torch.where(inside, (q4 + s6) * 0.25, q4 * 0.5)
    r2 = (q0 - torch.where(inside, s2, zero)) * 0.5
    r3 = (q1 - torch.where(inside, s3, zero)) * 0.5
    r2 = r2 + (r4 * dy + r6 * dx)
    r3 = r3 + (r6 * dy + r5 * dx)
    r2, r3, r4, r5, r6 = (t * border for t in (r2, r3, r4, r5, r6))
    return torch.stack([r4 * r4 + r6 * r6, (r4 + r5) * r6, r5 * r5 + r6 * r6, r4 * r2 + r6 * r3,
                        r6 * r2 + r5 * r3], dim=1)


def _solve(g11, g12, g22, h1, h2) -> torch.Tensor:
    """The 2x2 solve of OpenCV's flow update, in double; returns (B, 2, H, W) float32."""
    idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3)
    return torch.stack([((g11 * h2 - g12 * h1) * idet).float(), ((g22 * h1 - g12 * h2) * idet).float()], dim=1)


def _running_box(x: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """OpenCV's running box sum over 2m+1 samples along ``dim`` (2 = rows, 3 = columns of (B, 5, H, W)),
    replicated border, in double.

    OpenCV primes the sum with sample0 * (m+2) plus samples 1..m-1, then at every position adds the
    entering sample and subtracts the leaving one. In the vertical pass (float input) that difference is
    taken in float before it is added; the horizontal pass works on doubles. A sequential cumulative sum
    (torch.cumsum on CPU) reproduces the rounding.
    """
    n = x.shape[dim]
    pads = (0, 0, m + 1, m) if dim == 2 else (m + 1, m, 0, 0)
    p = F.pad(x, pads, mode="replicate")
    steps = p.narrow(dim, 2 * m + 1, n) - p.narrow(dim, 0, n)  # entering - leaving
    head = [x.narrow(dim, 0, 1) * float(m + 2)]
    if m > 1:
        head.append(p.narrow(dim, m + 2, m - 1))  # samples 1..m-1, clamped
    seq = torch.cat([t.double() for t in head] + [steps.double()], dim=dim)
    return torch.cumsum(seq, dim=dim).narrow(dim, seq.shape[dim] - n, n)


def update_flow_box(mat: torch.Tensor, block_size: int) -> torch.Tensor:
    """FarnebackUpdateFlow_Blur: box-filter the matrices (double running sums, 1/block_size^2), solve."""
    m = block_size // 2
    scale = 1.0 / (block_size * block_size)
    s = _running_box(_running_box(mat, m, 2), m, 3) * scale
    return _solve(*s.unbind(1))


def _gauss_window(m: int) -> list[float]:
    sigma = m * 0.3
    s = 1.0
    k = [1.0]
    for i in range(1, m + 1):
        t = _f32(math.exp(-i * i / (2 * sigma * sigma)))
        k.append(t)
        s += t * 2
    s = 1.0 / s
    return [_f32(v * s) for v in k]


def update_flow_gauss(mat: torch.Tensor, block_size: int) -> torch.Tensor:
    """FarnebackUpdateFlow_GaussianBlur: float Gaussian window (sigma = m*0.3, replicated border), solve."""
    m = block_size // 2
    k = _gauss_window(m)
    _, _, h, w = mat.shape
    p = F.pad(mat, (0, 0, m, m), mode="replicate")
    v = mat * k[0]
    for i in range(1, m + 1):
        v = v + (p[:, :, m + i:m + i + h] + p[:, :, m - i:m - i + h]) * k[i]
    q = F.pad(v, (m, m, 0, 0), mode="replicate")
    out = v * k[0]
    for i in range(1, m + 1):
        out = out + k[i] * (q[..., m - i:m - i + w] + q[..., m + i:m + i + w])
    return _solve(*out.double().unbind(1))


def farneback_flow(prev: torch.Tensor, nxt: torch.Tensor, *, pyr_scale: float = 0.5, levels: int = 3,
                   winsize: int = 15, iterations: int = 3, poly_n: int = 5, poly_sigma: float = 1.2,
                   flags: int = 0) -> torch.Tensor:
    """Farneback flow of float32 (B, H, W) pairs in 0..255 -> (B, H, W, 2) float32, x then y, in pixels."""
    b, rows, cols = prev.shape
    k = 0
    scale = 1.0
    while k < levels:
        scale *= pyr_scale
        if cols * scale < MIN_SIZE or rows * scale < MIN_SIZE:
            break
        k += 1
    nlev = k
    both = torch.cat([prev, nxt], dim=0)  # (2B, H, W): both frames go through the same pyramid
    flow = None
    for k in range(nlev, -1, -1):
        scale = 1.0
        for _ in range(k):
            scale *= pyr_scale
        sigma = (1.0 / scale - 1) * 0.5
        smooth = max(ops.cv_round(sigma * 5) | 1, 3)
        width, height = ops.cv_round(cols * scale), ops.cv_round(rows * scale)
        if flow is None:
            flow = torch.zeros(b, 2, height, width, dtype=torch.float32, device=prev.device)
        else:
            flow = ops.resize_linear_native(flow.reshape(b * 2, *flow.shape[-2:]), (height, width))
            flow = flow.reshape(b, 2, height, width) * _f32(1.0 / pyr_scale)
        img = ops.gaussian_blur(both, smooth, sigma)
        if (height, width) != (rows, cols):
            img = ops.resize_linear(img, (height, width))
        r = poly_expansion(img, poly_n, poly_sigma)
        r0, r1 = r[:b], r[b:]
        border = _border_scale(height, width, prev.device)
        mat = update_matrices(r0, r1, flow, border)
        for i in range(iterations):
            if flags & OPTFLOW_FARNEBACK_GAUSSIAN:
                flow = update_flow_gauss(mat, winsize)
            else:
                flow = update_flow_box(mat, winsize)
            if i < iterations - 1:
                mat = update_matrices(r0, r1, flow, border)
    return flow.permute(0, 2, 3, 1).contiguous()
