"""Fused TV-L1 kernels in Triton: the CUDA path of flowprep.flow.torchflow's TV-L1 (``fused=True``).

The eager path (_tvl1) runs an inner iteration as about 50 whole-batch tensor operations, each one a kernel
that reads and writes (B, H, W) float32 arrays, and freezes converged pairs with torch.where, so a GPU
spends the iteration moving ~600 B per pixel and launching kernels. Here the iteration is three kernels
and the median filter one, doing the same float32 operations in the same order:

    warp      bicubic remap of I1 and its gradients at x + u, then rho_c (once per warp)
    median5   5x5 median of u1 or u2, replicated border: the 99-exchange network of ops.median_blur5 in
              registers (before each outer iteration)
    primal    estimateV (thresholding; grad = Ix^2 + Iy^2 recomputed, not stored), divergence of p,
              u <- v + theta div p, and each program's float64 sum of the squared update (no atomics, so
              the sum is deterministic)
    dual      forward gradient of the new u and p <- (p + taut grad u) / (1 + taut |grad u|)
    converged sums a pair's partial sums and clears its ``active`` flag when the sum is <= epsilon^2 H W

A pair whose ``active`` flag is 0 is skipped (its loads are masked off), and at every host check the
launches shrink to the pairs still active (``pairs``), so converged pairs cost next to nothing while the
rest of the batch iterates.

Launches are declared once: each kernel has a builder (``_SPECS``) that turns the tensors of a call into a
Launch (grid, arguments, constexprs, compile options). ``launch()`` runs those; ``kernel_build`` compiles
the very same Launches ahead of time for sm_80 / sm_90 and reads registers and local memory from the
cubins. Every kernel is jitted with no value specialization (``_jit``), so one binary per kernel serves
every frame size, batch and pointer alignment, and the ahead-of-time build covers all the launches.

Arithmetic: kernels are compiled with enable_fp_fusion=False (no a*b+c contraction, as in the eager
path's separate kernels), divisions are IEEE (div_rn), and |grad u| is hypot in double rounded to float,
as the eager path computes it. On CUDA this is libdevice's hypot, the function torch.hypot calls, so the
fused and eager CUDA paths agree bit for bit apart from the order of the float64 error sums. On CPU the
kernels run in Triton's interpreter (numpy; slow, for tests): there hypot is sqrt(x^2 + y^2) in double,
which can differ from glibc's hypot in the last float bit about once in 10^9 evaluations. Without the
interpreter, the CPU runs each kernel's eager reference (``launch(reference=True)``): the same control
flow at eager speed, used to count the work of real frames for the performance model.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from flowprep.flow.torchflow import ops

# One pixel per thread: BLOCK = 32 * NUM_WARPS. More pixels per thread multiply the registers (median5:
# 40-42 at 1 pixel per thread, 64-66 at 2, 123-128 at 4, 248-254 at 8; the warp kernel spills from 8 on;
# benchmarks/bench_kernel_options.py) and these stencils are memory-bound: occupancy, not per-thread work,
# keeps the loads in flight. 8 warps rather than 4: the same registers, half the programs.
NUM_WARPS = 8
BLOCK = 32 * NUM_WARPS  # pixels per program
# enable_fp_fusion=False: no a*b + c contraction into FMA, so the float32 rounding is the eager path's.
OPTIONS = {"enable_fp_fusion": False, "num_warps": NUM_WARPS}
FLT_EPSILON = tl.constexpr(1.1920928955078125e-07)  # a constexpr: compiled kernels may read no other global

# Bytes each kernel moves per pixel (float32 loads and stores that reach memory; neighbours' loads hit the
# caches): primal reads ix, iy, rho_c, u1, u2 and the 4 dual fields and writes u1, u2 (44 B); dual reads u1,
# u2 and p and writes p (40 B); warp reads u1, u2, I0 and the 3 images of the stack and writes ix, iy, rho_c
# (36 B); median5 reads and writes one field (8 B, twice per filter). The performance model (tvl1_model)
# multiplies these by the work counted in ``stats``.
BYTES = {"primal": 4 * (9 + 2), "dual": 4 * (6 + 4), "warp": 4 * (6 + 3), "median5": 4 * 2}


def _jit(fn: Callable) -> Any:
    """triton.jit specializing on no argument value: ints equal to 1 or divisible by 16 and 16-byte aligned
    pointers would otherwise each compile a variant, which the ahead-of-time build could not enumerate."""
    names = [name for name, p in inspect.signature(fn).parameters.items() if "constexpr" not in str(p.annotation)]
    return triton.jit(fn, do_not_specialize=names)


@_jit
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
    centre = tl.load(src + offs, mask=inside & ~act, other=0.0)  # an inactive pair's field, copied
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


@_jit
def _primal(ix_ptr, iy_ptr, rhoc_ptr, u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, active_ptr, pairs_ptr,
            partial_ptr, H, W, l_t, theta, BLOCK: tl.constexpr):
    """estimateV, divergence and estimateU of one inner iteration, in place on u1, u2 (active pairs only);
    partial_ptr[b, program] = this program's sum of (du1^2 + du2^2) in float64 (0 for an inactive pair).
    Grid (programs per pair, listed pairs): pair pairs_ptr[j] on the j-th row."""
    pid = tl.program_id(0)
    b = tl.load(pairs_ptr + tl.program_id(1))
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
    rho_c = tl.load(rhoc_ptr + base + offs, mask=m, other=0.0)
    u1 = tl.load(u1_ptr + base + offs, mask=m, other=0.0)
    u2 = tl.load(u2_ptr + base + offs, mask=m, other=0.0)
    # thresholding step (estimateV): one factor per pixel; OpenCV's tests rho < -l_t grad, i.e. -rho > lg
    grad = ix * ix + iy * iy  # as the eager path computes it once per warp: two products, one sum
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
    tl.store(partial_ptr + b * tl.num_programs(0) + pid, tl.sum(tl.where(m, err.to(tl.float64), 0.0), axis=0))


@_jit
def _dual(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, active_ptr, pairs_ptr, H, W, taut,
          BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    """estimateDualVariables in place on p (active pairs only), from the u that _primal just wrote."""
    pid = tl.program_id(0)
    b = tl.load(pairs_ptr + tl.program_id(1))
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


@_jit
def _converged(partial_ptr, active_ptr, pairs_ptr, n_blocks, eps, BLOCK: tl.constexpr):
    """active[b] = 0 where the pair's summed squared update is <= eps (OpenCV's loop condition)."""
    b = tl.load(pairs_ptr + tl.program_id(0))
    row = partial_ptr + b.to(tl.int64) * n_blocks
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(0, n_blocks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(row + idx, mask=idx < n_blocks, other=0.0)
    keep = tl.sum(acc, axis=0) > eps
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
def _tap(row, K2: tl.constexpr, xx, W, vy, m, w, col, seq, FIRST_ROW: tl.constexpr, FIRST: tl.constexpr):
    """One of the 16 taps of _cubic: column K2 of a support row (zero outside the image), added to the
    column's interior accumulator and to the border's sequential sum."""
    v = tl.load(row + K2, mask=m & vy & (xx >= 0) & (xx < W), other=0.0)  # masked taps are never read
    term = v * w
    if FIRST_ROW:
        col = term
    else:  # OpenCV's FMA, emulated in double as ops._fma does
        col = (v.to(tl.float64) * w.to(tl.float64) + col.to(tl.float64)).to(tl.float32)
    if FIRST:
        seq = term
    else:
        seq = seq + term
    return col, seq


@triton.jit
def _cubic(src, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside):
    """ops.remap_cubic of one image at the 4x4 supports (iy0, ix0) with table rows fy, fx: (BLOCK,) float32.

    Interior pixels: per-column accumulation down the 4 rows with an FMA, then (c0 + c2) + (c1 + c3);
    elsewhere the sequential float sum of the 16 taps, zeros outside the image. The four taps of a support
    row are addressed from one row pointer (unclamped: a tap outside the image is masked, never read), so
    they share its registers.
    """
    wx0 = tl.load(tab_ptr + fx * 4, mask=m, other=0.0)
    wx1 = tl.load(tab_ptr + fx * 4 + 1, mask=m, other=0.0)
    wx2 = tl.load(tab_ptr + fx * 4 + 2, mask=m, other=0.0)
    wx3 = tl.load(tab_ptr + fx * 4 + 3, mask=m, other=0.0)
    c0 = wx0  # placeholders: the first row assigns every accumulator
    c1 = wx0
    c2 = wx0
    c3 = wx0
    seq = wx0
    for k1 in tl.static_range(4):
        yy = iy0 + k1
        vy = (yy >= 0) & (yy < H)
        row = src + (yy * W + ix0)
        wy = tl.load(tab_ptr + fy * 4 + k1, mask=m, other=0.0)
        # w = wy * wx: the float32 product of OpenCV's 2-D weight table
        c0, seq = _tap(row, 0, ix0, W, vy, m, wy * wx0, c0, seq, k1 == 0, k1 == 0)
        c1, seq = _tap(row, 1, ix0 + 1, W, vy, m, wy * wx1, c1, seq, k1 == 0, False)
        c2, seq = _tap(row, 2, ix0 + 2, W, vy, m, wy * wx2, c2, seq, k1 == 0, False)
        c3, seq = _tap(row, 3, ix0 + 3, W, vy, m, wy * wx3, c3, seq, k1 == 0, False)
    return tl.where(inside, (c0 + c2) + (c1 + c3), seq)


@_jit
def _warp(stack_ptr, i0_ptr, u1_ptr, u2_ptr, tab_ptr, ix_ptr, iy_ptr, rhoc_ptr, H, W, BLOCK: tl.constexpr):
    """The start of a warp: bicubic remap of I1 and its gradients at x + u (cv::remap INTER_CUBIC,
    BORDER_CONSTANT 0), then rho_c = I1w - Ix u1 - Iy u2 - I0. stack: (B, 3, H, W): I1, Ix, Iy."""
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
    # one image at a time, each stored before the next is read: holding the three supports at once took
    # 110 registers (sm_90), this order 64-66
    ix = _cubic(src + hw, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside)
    tl.store(ix_ptr + base + offs, ix, mask=m)
    iy = _cubic(src + 2 * hw, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside)
    tl.store(iy_ptr + base + offs, iy, mask=m)
    i1w = _cubic(src, iy0, ix0, fy, fx, tab_ptr, H, W, m, inside)
    i0 = tl.load(i0_ptr + base + offs, mask=m, other=0.0)
    tl.store(rhoc_ptr + base + offs, i1w - ix * u1 - iy * u2 - i0, mask=m)


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 set before triton's import)."""
    return bool(triton.knobs.runtime.interpret)


class Launch(NamedTuple):
    """One kernel launch as Triton receives it: ``kernel[grid](*args, **constexprs, **options)``."""
    name: str
    kernel: Any  # the @triton.jit function
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    options: dict


@dataclass(frozen=True)
class ArgSpec:
    """What Triton's launcher reads of a tensor argument (dtype, address): a Launch kept without its tensor."""
    dtype: torch.dtype
    shape: tuple[int, ...]
    ptr: int

    def data_ptr(self) -> int:
        return self.ptr


def describe(spec: Launch) -> Launch:
    """The Launch with its tensors replaced by ArgSpecs, to keep without holding their memory."""
    args = tuple(ArgSpec(a.dtype, tuple(a.shape), a.data_ptr()) if isinstance(a, torch.Tensor) else a
                 for a in spec.args)
    return spec._replace(args=args)


def _grid(t: torch.Tensor, rows: int) -> tuple[int, int]:
    """(programs per (H, W) image, rows): the grid of the per-pixel kernels."""
    return triton.cdiv(t.shape[1] * t.shape[2], BLOCK), rows


def n_blocks(height: int, width: int) -> int:
    """Programs per pair of the per-pixel kernels: the columns of primal's partial sums."""
    return triton.cdiv(height * width, BLOCK)


def _warp_launch(stack, i0, u1, u2, table, ix, iy, rho_c) -> Launch:
    _, h, w = i0.shape
    return Launch("warp", _warp, _grid(i0, i0.shape[0]), (stack, i0, u1, u2, table, ix, iy, rho_c, h, w),
                  {"BLOCK": BLOCK}, OPTIONS)


def _median5_launch(src, dst, active) -> Launch:
    _, h, w = src.shape
    return Launch("median5", _median5, _grid(src, src.shape[0]), (src, dst, active, h, w), {"BLOCK": BLOCK},
                  OPTIONS)


def _primal_launch(ix, iy, rho_c, u1, u2, p, active, pairs, partial, l_t, theta) -> Launch:
    _, h, w = u1.shape
    return Launch("primal", _primal, _grid(u1, pairs.shape[0]),
                  (ix, iy, rho_c, u1, u2, *p, active, pairs, partial, h, w, l_t, theta), {"BLOCK": BLOCK}, OPTIONS)


def _dual_launch(u1, u2, p, active, pairs, taut) -> Launch:
    _, h, w = u1.shape
    return Launch("dual", _dual, _grid(u1, pairs.shape[0]), (u1, u2, *p, active, pairs, h, w, taut),
                  {"BLOCK": BLOCK, "LIBDEVICE": not interpreted()}, OPTIONS)


def _converged_launch(partial, active, pairs, eps) -> Launch:
    return Launch("converged", _converged, (pairs.shape[0],), (partial, active, pairs, partial.shape[1], eps),
                  {"BLOCK": BLOCK}, OPTIONS)


# The launch builders, one per kernel: launch() runs them, kernel_build compiles what they return.
_SPECS: dict[str, Callable[..., Launch]] = {"warp": _warp_launch, "median5": _median5_launch,
                                            "primal": _primal_launch, "dual": _dual_launch,
                                            "converged": _converged_launch}


def _warp_reference(stack, i0, u1, u2, table, ix, iy, rho_c) -> None:
    _, h, w = i0.shape
    xs = torch.arange(w, dtype=torch.float32, device=i0.device)
    ys = torch.arange(h, dtype=torch.float32, device=i0.device)[:, None]
    warped = ops.remap_cubic(stack, xs + u1, ys + u2)
    ix.copy_(warped[:, 1])
    iy.copy_(warped[:, 2])
    rho_c.copy_(warped[:, 0] - ix * u1 - iy * u2 - i0)


def _median5_reference(src, dst, active) -> None:
    dst.copy_(torch.where((active != 0)[:, None, None], ops.median_blur5(src), src))


def _primal_reference(ix, iy, rho_c, u1, u2, p, active, pairs, partial, l_t, theta) -> None:
    from flowprep.flow.torchflow import _tvl1

    # the primal half of the eager iteration (its dual half, with a dummy taut, is dropped)
    (n1, n2), _, err = _tvl1._iteration(ix, iy, ix * ix + iy * iy, rho_c, (u1, u2), p, l_t, theta, 1.0, 0.0)
    on = active != 0
    u1.copy_(torch.where(on[:, None, None], n1, u1))
    u2.copy_(torch.where(on[:, None, None], n2, u2))
    partial.zero_()
    partial[:, 0] = torch.where(on, _tvl1._error_sums(err), 0.0)  # on CPU OpenCV's sequential float sum


def _dual_reference(u1, u2, p, active, pairs, taut) -> None:
    from flowprep.flow.torchflow import _tvl1

    on = (active != 0)[:, None, None]
    new = _tvl1._dual_step(p[0], p[1], u1, taut) + _tvl1._dual_step(p[2], p[3], u2, taut)
    for c, n in zip(p, new):
        c.copy_(torch.where(on, n, c))


def _converged_reference(partial, active, pairs, eps) -> None:
    active.copy_(torch.where(partial.sum(1) > eps, active, 0))


# What each kernel computes, in eager torch (the functions of _tvl1 and ops the kernels reproduce).
_REFERENCES: dict[str, Callable[..., None]] = {"warp": _warp_reference, "median5": _median5_reference,
                                               "primal": _primal_reference, "dual": _dual_reference,
                                               "converged": _converged_reference}


def launch(reference: bool = False, record: list | None = None) -> SimpleNamespace:
    """Callables, one per kernel, that launch it on contiguous (B, H, W) tensors (see
    _tvl1._proc_one_scale_fused for the arguments).

    reference: run each kernel's eager torch equivalent instead of the kernel, after building the same
    Launch (for a CPU without Triton's interpreter: the fused control flow at eager speed).
    record: a list that receives each kernel's first Launch, described (without its tensors).
    """
    seen: set[str] = set()

    def runner(name: str, build: Callable[..., Launch]) -> Callable[..., None]:
        ref = _REFERENCES[name]

        def run(*args: Any) -> None:
            spec = build(*args)
            if record is not None and name not in seen:
                seen.add(name)
                record.append(describe(spec))
            if reference:
                ref(*args)
            else:
                spec.kernel[spec.grid](*spec.args, **spec.constexprs, **spec.options)

        return run

    return SimpleNamespace(**{name: runner(name, build) for name, build in _SPECS.items()})
