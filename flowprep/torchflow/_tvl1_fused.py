"""Fused TV-L1 kernels in Triton: the CUDA path of flowprep.torchflow's TV-L1 (``fused=True``).

The eager path (_tvl1) runs an inner iteration as about 50 whole-batch tensor operations, each one a kernel
that reads and writes (B, H, W) float32 arrays, and freezes converged pairs with torch.where, so a GPU
spends the iteration moving ~600 B per pixel and launching kernels. Here the iteration is two kernels and
the median filter one, doing the same float32 operations in the same order:

    median5   5x5 median of u1 and u2, replicated border: the 99-exchange network of ops.median_blur5 in
              registers (25 loads, one store per pixel)
    primal    estimateV (thresholding), divergence of p, u <- v + theta div p, and the pair's partial sums of
              the squared update (float64, one per block: no atomics, so the sum is deterministic)
    dual      forward gradient of the new u and p <- (p + taut grad u) / (1 + taut |grad u|)
    converged sums a pair's partial sums and clears its ``active`` flag when the sum is <= epsilon^2 H W

About 88 B per pixel per iteration cross memory (REFERENCE.md's bandwidth figure), and a pair whose
``active`` flag is 0 is skipped by every kernel (its loads are masked off), so converged pairs cost next to
nothing while the rest of the batch iterates.

Arithmetic: kernels are compiled with enable_fp_fusion=False (no a*b+c contraction, as in the eager
path's separate kernels), divisions are IEEE (div_rn), and |grad u| is hypot in double rounded to float,
as the eager path computes it. On CUDA this is libdevice's hypot, the function torch.hypot calls, so the
fused and eager CUDA paths agree bit for bit apart from the order of the float64 error sums. On CPU the
kernels run in Triton's interpreter (numpy; slow, for tests): there hypot is sqrt(x^2 + y^2) in double,
which can differ from glibc's hypot in the last float bit about once in 10^9 evaluations.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

BLOCK = 1024  # pixels per program
# Bytes each kernel moves per pixel (float32 loads and stores that reach memory; neighbours' loads hit the
# caches): primal reads ix, iy, grad, rho_c, u1, u2 and the 4 dual fields, writes u1, u2; dual reads u1, u2
# and p, writes p; warp reads the 3 images of the stack, I0, u1, u2 and writes 4 fields; median5 reads and
# writes one field. The benchmark turns these into the memory-bandwidth ceiling of a field.
BYTES_ITERATION = 4 * (12 + 10)
BYTES_WARP = 4 * (6 + 4)
BYTES_MEDIAN = 4 * 2 * 2  # both flow components


def traffic(stats: list[dict]) -> "torch.Tensor":
    """Bytes the kernels moved per pair, from the ``stats`` of _tvl1.tvl1_flow(fused=True): (B,) float64."""
    total = 0
    for level in stats:
        pixels = level["height"] * level["width"]
        total = total + pixels * (BYTES_ITERATION * level["iterations"].double()
                                  + BYTES_MEDIAN * level["medians"].double() + BYTES_WARP * level["warps"])
    return total
FLT_EPSILON = 1.1920928955078125e-07


@triton.jit
def _median5(src_ptr, dst_ptr, active_ptr, H, W, BLOCK: tl.constexpr):
    """dst = 5x5 median of src (replicated border) for active pairs, dst = src for the others."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    hw = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < hw
    act = tl.load(active_ptr + b) != 0
    m = inside & act
    src = src_ptr + b.to(tl.int64) * hw
    y = offs // W
    x = offs - y * W
    r0 = tl.minimum(tl.maximum(y - 2, 0), H - 1) * W
    r1 = tl.minimum(tl.maximum(y - 1, 0), H - 1) * W
    r2 = y * W
    r3 = tl.minimum(y + 1, H - 1) * W
    r4 = tl.minimum(y + 2, H - 1) * W
    c0 = tl.minimum(tl.maximum(x - 2, 0), W - 1)
    c1 = tl.minimum(tl.maximum(x - 1, 0), W - 1)
    c2 = x
    c3 = tl.minimum(x + 1, W - 1)
    c4 = tl.minimum(x + 2, W - 1)
    v0 = tl.load(src + r0 + c0, mask=m, other=0.0)
    v1 = tl.load(src + r0 + c1, mask=m, other=0.0)
    v2 = tl.load(src + r0 + c2, mask=m, other=0.0)
    v3 = tl.load(src + r0 + c3, mask=m, other=0.0)
    v4 = tl.load(src + r0 + c4, mask=m, other=0.0)
    v5 = tl.load(src + r1 + c0, mask=m, other=0.0)
    v6 = tl.load(src + r1 + c1, mask=m, other=0.0)
    v7 = tl.load(src + r1 + c2, mask=m, other=0.0)
    v8 = tl.load(src + r1 + c3, mask=m, other=0.0)
    v9 = tl.load(src + r1 + c4, mask=m, other=0.0)
    v10 = tl.load(src + r2 + c0, mask=m, other=0.0)
    v11 = tl.load(src + r2 + c1, mask=m, other=0.0)
    v12 = tl.load(src + r2 + c2, mask=m, other=0.0)
    v13 = tl.load(src + r2 + c3, mask=m, other=0.0)
    v14 = tl.load(src + r2 + c4, mask=m, other=0.0)
    v15 = tl.load(src + r3 + c0, mask=m, other=0.0)
    v16 = tl.load(src + r3 + c1, mask=m, other=0.0)
    v17 = tl.load(src + r3 + c2, mask=m, other=0.0)
    v18 = tl.load(src + r3 + c3, mask=m, other=0.0)
    v19 = tl.load(src + r3 + c4, mask=m, other=0.0)
    v20 = tl.load(src + r4 + c0, mask=m, other=0.0)
    v21 = tl.load(src + r4 + c1, mask=m, other=0.0)
    v22 = tl.load(src + r4 + c2, mask=m, other=0.0)
    v23 = tl.load(src + r4 + c3, mask=m, other=0.0)
    v24 = tl.load(src + r4 + c4, mask=m, other=0.0)
    centre = tl.load(src + offs, mask=inside, other=0.0)
    v0, v1 = tl.minimum(v0, v1), tl.maximum(v0, v1)
    v3, v4 = tl.minimum(v3, v4), tl.maximum(v3, v4)
    v2, v4 = tl.minimum(v2, v4), tl.maximum(v2, v4)
    v2, v3 = tl.minimum(v2, v3), tl.maximum(v2, v3)
    v6, v7 = tl.minimum(v6, v7), tl.maximum(v6, v7)
    v5, v7 = tl.minimum(v5, v7), tl.maximum(v5, v7)
    v5, v6 = tl.minimum(v5, v6), tl.maximum(v5, v6)
    v9, v10 = tl.minimum(v9, v10), tl.maximum(v9, v10)
    v8, v10 = tl.minimum(v8, v10), tl.maximum(v8, v10)
    v8, v9 = tl.minimum(v8, v9), tl.maximum(v8, v9)
    v12, v13 = tl.minimum(v12, v13), tl.maximum(v12, v13)
    v11, v13 = tl.minimum(v11, v13), tl.maximum(v11, v13)
    v11, v12 = tl.minimum(v11, v12), tl.maximum(v11, v12)
    v15, v16 = tl.minimum(v15, v16), tl.maximum(v15, v16)
    v14, v16 = tl.minimum(v14, v16), tl.maximum(v14, v16)
    v14, v15 = tl.minimum(v14, v15), tl.maximum(v14, v15)
    v18, v19 = tl.minimum(v18, v19), tl.maximum(v18, v19)
    v17, v19 = tl.minimum(v17, v19), tl.maximum(v17, v19)
    v17, v18 = tl.minimum(v17, v18), tl.maximum(v17, v18)
    v21, v22 = tl.minimum(v21, v22), tl.maximum(v21, v22)
    v20, v22 = tl.minimum(v20, v22), tl.maximum(v20, v22)
    v20, v21 = tl.minimum(v20, v21), tl.maximum(v20, v21)
    v23, v24 = tl.minimum(v23, v24), tl.maximum(v23, v24)
    v2, v5 = tl.minimum(v2, v5), tl.maximum(v2, v5)
    v3, v6 = tl.minimum(v3, v6), tl.maximum(v3, v6)
    v0, v6 = tl.minimum(v0, v6), tl.maximum(v0, v6)
    v0, v3 = tl.minimum(v0, v3), tl.maximum(v0, v3)
    v4, v7 = tl.minimum(v4, v7), tl.maximum(v4, v7)
    v1, v7 = tl.minimum(v1, v7), tl.maximum(v1, v7)
    v1, v4 = tl.minimum(v1, v4), tl.maximum(v1, v4)
    v11, v14 = tl.minimum(v11, v14), tl.maximum(v11, v14)
    v8, v14 = tl.minimum(v8, v14), tl.maximum(v8, v14)
    v8, v11 = tl.minimum(v8, v11), tl.maximum(v8, v11)
    v12, v15 = tl.minimum(v12, v15), tl.maximum(v12, v15)
    v9, v15 = tl.minimum(v9, v15), tl.maximum(v9, v15)
    v9, v12 = tl.minimum(v9, v12), tl.maximum(v9, v12)
    v13, v16 = tl.minimum(v13, v16), tl.maximum(v13, v16)
    v10, v16 = tl.minimum(v10, v16), tl.maximum(v10, v16)
    v10, v13 = tl.minimum(v10, v13), tl.maximum(v10, v13)
    v20, v23 = tl.minimum(v20, v23), tl.maximum(v20, v23)
    v17, v23 = tl.minimum(v17, v23), tl.maximum(v17, v23)
    v17, v20 = tl.minimum(v17, v20), tl.maximum(v17, v20)
    v21, v24 = tl.minimum(v21, v24), tl.maximum(v21, v24)
    v18, v24 = tl.minimum(v18, v24), tl.maximum(v18, v24)
    v18, v21 = tl.minimum(v18, v21), tl.maximum(v18, v21)
    v19, v22 = tl.minimum(v19, v22), tl.maximum(v19, v22)
    v8, v17 = tl.minimum(v8, v17), tl.maximum(v8, v17)
    v9, v18 = tl.minimum(v9, v18), tl.maximum(v9, v18)
    v0, v18 = tl.minimum(v0, v18), tl.maximum(v0, v18)
    v0, v9 = tl.minimum(v0, v9), tl.maximum(v0, v9)
    v10, v19 = tl.minimum(v10, v19), tl.maximum(v10, v19)
    v1, v19 = tl.minimum(v1, v19), tl.maximum(v1, v19)
    v1, v10 = tl.minimum(v1, v10), tl.maximum(v1, v10)
    v11, v20 = tl.minimum(v11, v20), tl.maximum(v11, v20)
    v2, v20 = tl.minimum(v2, v20), tl.maximum(v2, v20)
    v2, v11 = tl.minimum(v2, v11), tl.maximum(v2, v11)
    v12, v21 = tl.minimum(v12, v21), tl.maximum(v12, v21)
    v3, v21 = tl.minimum(v3, v21), tl.maximum(v3, v21)
    v3, v12 = tl.minimum(v3, v12), tl.maximum(v3, v12)
    v13, v22 = tl.minimum(v13, v22), tl.maximum(v13, v22)
    v4, v22 = tl.minimum(v4, v22), tl.maximum(v4, v22)
    v4, v13 = tl.minimum(v4, v13), tl.maximum(v4, v13)
    v14, v23 = tl.minimum(v14, v23), tl.maximum(v14, v23)
    v5, v23 = tl.minimum(v5, v23), tl.maximum(v5, v23)
    v5, v14 = tl.minimum(v5, v14), tl.maximum(v5, v14)
    v15, v24 = tl.minimum(v15, v24), tl.maximum(v15, v24)
    v6, v24 = tl.minimum(v6, v24), tl.maximum(v6, v24)
    v6, v15 = tl.minimum(v6, v15), tl.maximum(v6, v15)
    v7, v16 = tl.minimum(v7, v16), tl.maximum(v7, v16)
    v7, v19 = tl.minimum(v7, v19), tl.maximum(v7, v19)
    v13, v21 = tl.minimum(v13, v21), tl.maximum(v13, v21)
    v15, v23 = tl.minimum(v15, v23), tl.maximum(v15, v23)
    v7, v13 = tl.minimum(v7, v13), tl.maximum(v7, v13)
    v7, v15 = tl.minimum(v7, v15), tl.maximum(v7, v15)
    v1, v9 = tl.minimum(v1, v9), tl.maximum(v1, v9)
    v3, v11 = tl.minimum(v3, v11), tl.maximum(v3, v11)
    v5, v17 = tl.minimum(v5, v17), tl.maximum(v5, v17)
    v11, v17 = tl.minimum(v11, v17), tl.maximum(v11, v17)
    v9, v17 = tl.minimum(v9, v17), tl.maximum(v9, v17)
    v4, v10 = tl.minimum(v4, v10), tl.maximum(v4, v10)
    v6, v12 = tl.minimum(v6, v12), tl.maximum(v6, v12)
    v7, v14 = tl.minimum(v7, v14), tl.maximum(v7, v14)
    v4, v6 = tl.minimum(v4, v6), tl.maximum(v4, v6)
    v4, v7 = tl.minimum(v4, v7), tl.maximum(v4, v7)
    v12, v14 = tl.minimum(v12, v14), tl.maximum(v12, v14)
    v10, v14 = tl.minimum(v10, v14), tl.maximum(v10, v14)
    v6, v7 = tl.minimum(v6, v7), tl.maximum(v6, v7)
    v10, v12 = tl.minimum(v10, v12), tl.maximum(v10, v12)
    v6, v10 = tl.minimum(v6, v10), tl.maximum(v6, v10)
    v6, v17 = tl.minimum(v6, v17), tl.maximum(v6, v17)
    v12, v17 = tl.minimum(v12, v17), tl.maximum(v12, v17)
    v7, v17 = tl.minimum(v7, v17), tl.maximum(v7, v17)
    v7, v10 = tl.minimum(v7, v10), tl.maximum(v7, v10)
    v12, v18 = tl.minimum(v12, v18), tl.maximum(v12, v18)
    v7, v12 = tl.minimum(v7, v12), tl.maximum(v7, v12)
    v10, v18 = tl.minimum(v10, v18), tl.maximum(v10, v18)
    v12, v20 = tl.minimum(v12, v20), tl.maximum(v12, v20)
    v10, v20 = tl.minimum(v10, v20), tl.maximum(v10, v20)
    v10, v12 = tl.minimum(v10, v12), tl.maximum(v10, v12)
    tl.store(dst_ptr + b.to(tl.int64) * hw + offs, tl.where(act, v12, centre), mask=inside)


@triton.jit
def _primal(ix_ptr, iy_ptr, grad_ptr, rhoc_ptr, u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr,
            active_ptr, partial_ptr, H, W, n_blocks, l_t, theta, BLOCK: tl.constexpr):
    """estimateV, divergence and estimateU of one inner iteration, in place on u1, u2 (active pairs only);
    partial_ptr[b, block] = this block's sum of (du1^2 + du2^2) in float64 (0 for an inactive pair)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    hw = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    act = tl.load(active_ptr + b) != 0
    m = (offs < hw) & act
    base = b.to(tl.int64) * hw
    y = offs // W
    x = offs - y * W
    has_l = m & (x > 0)
    has_u = m & (y > 0)
    ix = tl.load(ix_ptr + base + offs, mask=m, other=0.0)
    iy = tl.load(iy_ptr + base + offs, mask=m, other=0.0)
    grad = tl.load(grad_ptr + base + offs, mask=m, other=0.0)
    rho_c = tl.load(rhoc_ptr + base + offs, mask=m, other=0.0)
    u1 = tl.load(u1_ptr + base + offs, mask=m, other=0.0)
    u2 = tl.load(u2_ptr + base + offs, mask=m, other=0.0)
    # thresholding step (estimateV): one factor per pixel; OpenCV's tests rho < -l_t grad, i.e. -rho > lg
    rho = rho_c + (ix * u1 + iy * u2)
    neg_rho = -rho
    lg = l_t * grad
    small = grad > FLT_EPSILON
    q = tl.where(small, tl.div_rn(neg_rho, tl.where(small, grad, 1.0)), 0.0)
    factor = tl.where(neg_rho > lg, l_t, tl.where(rho > lg, -l_t, q))
    # divergence of (p11, p12) and (p21, p22): backward differences, p taken as 0 before the first row and
    # column; the first column of rows below the first is summed as OpenCV does, (v1 + v2) - v2_above
    first_col = (x == 0) & (y > 0)
    a = tl.load(p11_ptr + base + offs, mask=m, other=0.0)
    a_l = tl.load(p11_ptr + base + offs - 1, mask=has_l, other=0.0)
    c = tl.load(p12_ptr + base + offs, mask=m, other=0.0)
    c_u = tl.load(p12_ptr + base + offs - W, mask=has_u, other=0.0)
    div1 = tl.where(first_col, (a + c) - c_u, (a - a_l) + (c - c_u))
    a = tl.load(p21_ptr + base + offs, mask=m, other=0.0)
    a_l = tl.load(p21_ptr + base + offs - 1, mask=has_l, other=0.0)
    c = tl.load(p22_ptr + base + offs, mask=m, other=0.0)
    c_u = tl.load(p22_ptr + base + offs - W, mask=has_u, other=0.0)
    div2 = tl.where(first_col, (a + c) - c_u, (a - a_l) + (c - c_u))
    un1 = (u1 + factor * ix) + theta * div1
    un2 = (u2 + factor * iy) + theta * div2
    du1 = un1 - u1
    du2 = un2 - u2
    err = du1 * du1 + du2 * du2
    tl.store(u1_ptr + base + offs, un1, mask=m)
    tl.store(u2_ptr + base + offs, un2, mask=m)
    tl.store(partial_ptr + b * n_blocks + pid, tl.sum(tl.where(m, err.to(tl.float64), 0.0), axis=0))


@triton.jit
def _dual(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, active_ptr, H, W, taut,
          BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    """estimateDualVariables in place on p (active pairs only), from the u that _primal just wrote."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    hw = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    act = tl.load(active_ptr + b) != 0
    m = (offs < hw) & act
    base = b.to(tl.int64) * hw
    y = offs // W
    x = offs - y * W
    has_r = x < W - 1
    has_d = y < H - 1
    # forward differences of each flow component, 0 in the last column / row
    u = tl.load(u1_ptr + base + offs, mask=m, other=0.0)
    gx1 = tl.where(has_r, tl.load(u1_ptr + base + offs + 1, mask=m & has_r, other=0.0) - u, 0.0)
    gy1 = tl.where(has_d, tl.load(u1_ptr + base + offs + W, mask=m & has_d, other=0.0) - u, 0.0)
    u = tl.load(u2_ptr + base + offs, mask=m, other=0.0)
    gx2 = tl.where(has_r, tl.load(u2_ptr + base + offs + 1, mask=m & has_r, other=0.0) - u, 0.0)
    gy2 = tl.where(has_d, tl.load(u2_ptr + base + offs + W, mask=m & has_d, other=0.0) - u, 0.0)
    # |grad u| as OpenCV's hypotf gives it: computed in double, rounded to float
    if LIBDEVICE:
        g1 = libdevice.hypot(gx1.to(tl.float64), gy1.to(tl.float64)).to(tl.float32)
        g2 = libdevice.hypot(gx2.to(tl.float64), gy2.to(tl.float64)).to(tl.float32)
    else:
        g1 = tl.sqrt(gx1.to(tl.float64) * gx1.to(tl.float64) + gy1.to(tl.float64) * gy1.to(tl.float64))
        g2 = tl.sqrt(gx2.to(tl.float64) * gx2.to(tl.float64) + gy2.to(tl.float64) * gy2.to(tl.float64))
        g1 = g1.to(tl.float32)
        g2 = g2.to(tl.float32)
    ng1 = 1.0 + taut * g1
    ng2 = 1.0 + taut * g2
    pv = tl.load(p11_ptr + base + offs, mask=m, other=0.0)
    tl.store(p11_ptr + base + offs, tl.div_rn(pv + taut * gx1, ng1), mask=m)
    pv = tl.load(p12_ptr + base + offs, mask=m, other=0.0)
    tl.store(p12_ptr + base + offs, tl.div_rn(pv + taut * gy1, ng1), mask=m)
    pv = tl.load(p21_ptr + base + offs, mask=m, other=0.0)
    tl.store(p21_ptr + base + offs, tl.div_rn(pv + taut * gx2, ng2), mask=m)
    pv = tl.load(p22_ptr + base + offs, mask=m, other=0.0)
    tl.store(p22_ptr + base + offs, tl.div_rn(pv + taut * gy2, ng2), mask=m)


@triton.jit
def _converged(partial_ptr, active_ptr, n_blocks, eps, PBLOCK: tl.constexpr):
    """active[b] = 0 where the pair's summed squared update is <= eps (OpenCV's loop condition)."""
    b = tl.program_id(0)
    idx = tl.arange(0, PBLOCK)
    part = tl.load(partial_ptr + b * n_blocks + idx, mask=idx < n_blocks, other=0.0)
    keep = tl.sum(part, axis=0) > eps
    act = tl.load(active_ptr + b)
    tl.store(active_ptr + b, tl.where(keep, act, 0))


@triton.jit
def _round_half_even(v):
    """torch.round / cvRound of float32 values (|v| < 2^22, where v + 0.5 is exact)."""
    t = v + 0.5
    r = tl.floor(t)
    half = r * 0.5
    return tl.where((t == r) & (tl.floor(half) != half), r - 1.0, r)


@triton.jit
def _cubic(src, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside, BLOCK: tl.constexpr):
    """ops.remap_cubic of one image at the 4x4 supports (iy0, ix0) with table rows fy, fx: (BLOCK,) float32.

    Interior pixels: per-column accumulation down the 4 rows with an FMA (emulated in double, as ops._fma),
    then (c0 + c2) + (c1 + c3); elsewhere the sequential float sum of the 16 taps, zeros outside the image.
    """
    j = tl.arange(0, 4)
    xx = ix0[:, None] + j[None, :]  # (BLOCK, 4) columns of the support
    vx = (xx >= 0) & (xx < W)
    cx = tl.minimum(tl.maximum(xx, 0), W - 1)
    wx = tl.load(tab_ptr + fx[:, None] * 4 + j[None, :], mask=m[:, None], other=0.0)
    col = tl.zeros((BLOCK, 4), dtype=tl.float32)
    seq = tl.zeros((BLOCK,), dtype=tl.float32)
    for k1 in tl.static_range(4):
        yy = iy0 + k1
        vy = (yy >= 0) & (yy < H)
        ry = tl.minimum(tl.maximum(yy, 0), H - 1) * W
        wy = tl.load(tab_ptr + fy * 4 + k1, mask=m, other=0.0)
        v = tl.load(src + ry[:, None] + cx, mask=(m & vy)[:, None] & vx, other=0.0)
        w = wy[:, None] * wx  # the float32 product of OpenCV's 2-D weight table
        term = v * w
        if k1 == 0:
            col = term
        else:
            col = (v.to(tl.float64) * w.to(tl.float64) + col.to(tl.float64)).to(tl.float32)
        for k2 in tl.static_range(4):  # taking one column out is exact: the other three are 0
            seq = seq + tl.sum(tl.where(j[None, :] == k2, term, 0.0), axis=1)
    c0 = tl.sum(tl.where(j[None, :] == 0, col, 0.0), axis=1)
    c1 = tl.sum(tl.where(j[None, :] == 1, col, 0.0), axis=1)
    c2 = tl.sum(tl.where(j[None, :] == 2, col, 0.0), axis=1)
    c3 = tl.sum(tl.where(j[None, :] == 3, col, 0.0), axis=1)
    return tl.where(inside, (c0 + c2) + (c1 + c3), seq)


@triton.jit
def _warp(stack_ptr, i0_ptr, u1_ptr, u2_ptr, tab_ptr, ix_ptr, iy_ptr, grad_ptr, rhoc_ptr, H, W,
          BLOCK: tl.constexpr):
    """The start of a warp: bicubic remap of I1 and its gradients at x + u (cv::remap INTER_CUBIC,
    BORDER_CONSTANT 0), then grad = Ix^2 + Iy^2 and rho_c = I1w - Ix u1 - Iy u2 - I0. stack: (B, 3, H, W)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    hw = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < hw
    base = b.to(tl.int64) * hw
    y = offs // W
    x = offs - y * W
    u1 = tl.load(u1_ptr + base + offs, mask=m, other=0.0)
    u2 = tl.load(u2_ptr + base + offs, mask=m, other=0.0)
    # coordinates rounded to 1/32 px: the integer part picks the support, the fraction the table row
    qx = _round_half_even((x.to(tl.float32) + u1) * 32.0).to(tl.int32)
    qy = _round_half_even((y.to(tl.float32) + u2) * 32.0).to(tl.int32)
    ix0 = (qx >> 5) - 1
    iy0 = (qy >> 5) - 1
    fx = qx & 31
    fy = qy & 31
    inside = (ix0 >= 0) & (ix0 < W - 3) & (iy0 >= 0) & (iy0 < H - 3)
    src = stack_ptr + base * 3
    i1w = _cubic(src, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside, BLOCK)
    ix = _cubic(src + hw, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside, BLOCK)
    iy = _cubic(src + 2 * hw, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside, BLOCK)
    i0 = tl.load(i0_ptr + base + offs, mask=m, other=0.0)
    tl.store(ix_ptr + base + offs, ix, mask=m)
    tl.store(iy_ptr + base + offs, iy, mask=m)
    tl.store(grad_ptr + base + offs, ix * ix + iy * iy, mask=m)
    tl.store(rhoc_ptr + base + offs, i1w - ix * u1 - iy * u2 - i0, mask=m)


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 set before triton's import)."""
    return bool(triton.knobs.runtime.interpret)


def launch():
    """Callables that run the kernels on contiguous (B, H, W) float32 tensors (see _tvl1.proc_one_scale_fused)."""
    interpret = interpreted()
    k = SimpleNamespace(median5=_median5, primal=_primal, dual=_dual, converged=_converged, warp=_warp)
    options = {} if interpret else {"enable_fp_fusion": False, "num_warps": 4}

    def grid(t: torch.Tensor) -> tuple[int, int]:
        return triton.cdiv(t.shape[1] * t.shape[2], BLOCK), t.shape[0]

    def warp(stack, i0, u1, u2, table, ix, iy, grad, rho_c):
        k.warp[grid(i0)](stack, i0, u1, u2, table, ix, iy, grad, rho_c, i0.shape[1], i0.shape[2], BLOCK=BLOCK,
                         **options)

    def median5(src, dst, active):
        k.median5[grid(src)](src, dst, active, src.shape[1], src.shape[2], BLOCK=BLOCK, **options)

    def primal(ix, iy, grad, rho_c, u1, u2, p, active, partial, l_t, theta):
        k.primal[grid(u1)](ix, iy, grad, rho_c, u1, u2, *p, active, partial, u1.shape[1], u1.shape[2],
                           partial.shape[1], l_t, theta, BLOCK=BLOCK, **options)

    def dual(u1, u2, p, active, taut):
        k.dual[grid(u1)](u1, u2, *p, active, u1.shape[1], u1.shape[2], taut, BLOCK=BLOCK,
                         LIBDEVICE=not interpret, **options)

    def converged(partial, active, eps):
        n_blocks = partial.shape[1]
        k.converged[(partial.shape[0],)](partial, active, n_blocks, eps,
                                         PBLOCK=triton.next_power_of_2(n_blocks), **options)

    return SimpleNamespace(warp=warp, median5=median5, primal=primal, dual=dual, converged=converged)
