"""Checks of the fused Triton TV-L1 kernels against the eager PyTorch path, run by test_torchflow_fused.py.

Run as ``TRITON_INTERPRET=1 python -m tests.fused_cases CASE`` (Triton reads the variable when it is
imported, so the checks need a process of their own); exits non-zero with the reason on a mismatch.
With a CUDA device and no TRITON_INTERPRET, the same cases run compiled on the GPU.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from flowprep.flow.torchflow import _tvl1, _tvl1_fused, ops, parity

# compiled on a GPU; in the interpreter on CPU; otherwise (CPU, no interpreter) as the eager references
DEVICE = "cuda" if not _tvl1_fused.interpreted() and torch.cuda.is_available() else "cpu"


EAGER_KERNELS = DEVICE == "cpu" and not _tvl1_fused.interpreted()


def _launch():
    return _tvl1_fused.launch(reference=EAGER_KERNELS)


def _float64_sums(err: torch.Tensor) -> torch.Tensor:
    """The fused kernels sum a pair's squared update in float64, as the eager CUDA path does."""
    return err.sum(dim=(1, 2), dtype=torch.float64)


def _pairs(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """b synthetic pairs with different motion, so their warps converge after different iterations."""
    prev, nxt = [], []
    for i in range(b):
        p, q, _ = parity.synthetic_pair(h, w, seed=11 + i, shift=(1.5 - i, 0.5 * i), angle_deg=0.7 * i,
                                        jpeg_quality=85 if i == 2 else None)
        prev.append(p)
        nxt.append(q)
    t = lambda a: torch.from_numpy(np.stack(a)).float().to(DEVICE)  # noqa: E731
    return t(prev), t(nxt)


def warp() -> None:
    """The fused start of a warp against ops.remap_cubic and the eager rho_c, border taps included."""
    g = torch.Generator().manual_seed(2)
    b, h, w = 2, 21, 27
    r = lambda s: (torch.randn(b, h, w, generator=g) * s).to(DEVICE)  # noqa: E731
    stack = torch.stack([r(50), r(5), r(5)], dim=1).contiguous()
    i0 = r(50)
    u1, u2 = r(3), r(3)  # large enough to push supports across the border and outside the image
    u1[0, 0, :4] = torch.tensor([0.5 / 32, 1.5 / 32, -0.5 / 32, 2.5 / 32])  # exact ties of the 1/32 rounding
    xs = torch.arange(w, dtype=torch.float32, device=DEVICE)
    ys = torch.arange(h, dtype=torch.float32, device=DEVICE)[:, None]
    warped = ops.remap_cubic(stack, xs + u1, ys + u2)
    i1w, ix, iy = warped[:, 0], warped[:, 1], warped[:, 2]
    out = [torch.empty_like(i0) for _ in range(3)]
    _launch().warp(stack, i0, u1, u2, ops.cubic_table(DEVICE), *out)
    want = (ix, iy, i1w - ix * u1 - iy * u2 - i0)
    for name, got, ref in zip(("ix", "iy", "rho_c"), out, want):
        assert torch.equal(got, ref), f"{name} differs by up to {float((got - ref).abs().max())}"


def median() -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 29, 37, generator=g) * 3)
    x[1] = torch.round(x[1])  # many ties
    x = x.to(DEVICE)
    dst = torch.empty_like(x)
    active = torch.tensor([1, 0, 1], dtype=torch.int32, device=DEVICE)
    _launch().median5(x, dst, active)
    ref = ops.median_blur5(x)
    assert torch.equal(dst[0], ref[0]) and torch.equal(dst[2], ref[2]), "median of an active pair differs"
    assert torch.equal(dst[1], x[1]), "an inactive pair must be copied unchanged"


def iteration() -> None:
    g = torch.Generator().manual_seed(1)
    b, h, w = 3, 23, 31
    r = lambda s: (torch.randn(b, h, w, generator=g) * s).to(DEVICE)  # noqa: E731
    ix, iy, rho_c = r(10), r(10), r(20)
    ix[0, :2], iy[0, :2] = 0.0, 0.0  # grad = 0 and, next, 0 < grad < FLT_EPSILON: the thresholding's
    ix[0, 2], iy[0, 2] = 1e-4, 0.0  # third branch, where the kernel recomputes grad from ix and iy
    grad = ix * ix + iy * iy
    u = (r(1), r(1))
    p = tuple(r(0.3) for _ in range(4))
    l_t, theta, taut = _tvl1._f32(0.15 * 0.3), _tvl1._f32(0.3), _tvl1._f32(0.25 / 0.3)
    new_u, new_p, err = _tvl1._iteration(ix, iy, grad, rho_c, u, p, l_t, theta, taut, 0.0)
    run = _launch()
    u1, u2 = u[0].clone(), u[1].clone()
    pk = tuple(c.clone() for c in p)
    partial = torch.zeros(b, _tvl1_fused.n_blocks(h, w), dtype=torch.float64, device=DEVICE)
    active = torch.tensor([1, 1, 0], dtype=torch.int32, device=DEVICE)
    pairs = torch.arange(b, dtype=torch.int32, device=DEVICE)
    run.primal(ix, iy, rho_c, u1, u2, pk, active, pairs, partial, l_t, theta)
    run.dual(u1, u2, pk, active, pairs, taut)
    for k in (0, 1):  # active pairs updated exactly as the eager iteration, the inactive one untouched
        assert torch.equal(u1[k], new_u[0][k]) and torch.equal(u2[k], new_u[1][k]), f"u of pair {k} differs"
        for c in range(4):
            assert torch.equal(pk[c][k], new_p[c][k]), f"p{c} of pair {k} differs"
    assert torch.equal(u1[2], u[0][2]) and all(torch.equal(pk[c][2], p[c][2]) for c in range(4))
    # the kernels sum in float64; the references as the eager path on CPU does (OpenCV's float32 order)
    sums = _tvl1._error_sums(err) if EAGER_KERNELS else err.sum(dim=(1, 2), dtype=torch.float64)
    assert torch.allclose(partial.sum(1)[:2], sums[:2], rtol=1e-12, atol=0), (partial.sum(1), sums)
    assert float(partial[2].abs().sum()) == 0.0
    threshold = float(sums[0] + sums[1]) / 2  # one pair above it, one below
    run.converged(partial, active, pairs, threshold)
    want = [int(sums[0] > threshold), int(sums[1] > threshold), 0]
    assert active.tolist() == want, (active.tolist(), want)


def flow(small: bool = True) -> None:
    """The whole TV-L1 of a batch: fused and eager results bit-identical (float64 error sums in both)."""
    _tvl1._error_sums = _float64_sums
    if small:  # a short schedule that still has pyramid, warps, median filter and early stopping (pairs
        # stopping after 9-19 iterations of a warp: the launches after the host check at 10 skip one)
        prev, nxt = _pairs(3, 20, 26)
        params = dict(nscales=2, warps=2, outer_iterations=2, inner_iterations=6, epsilon=0.1)
    else:  # OpenCV's defaults
        prev, nxt = _pairs(3, 48, 64)
        params = {}
    eager = _tvl1.tvl1_flow(prev, nxt, lazy_sync=True, **params)
    fused = _tvl1.tvl1_flow(prev, nxt, fused=True, **params)
    diff = float((eager - fused).abs().max())
    assert torch.equal(eager, fused), f"fused and eager TV-L1 differ by up to {diff} px"


CASES = {"warp": warp, "median": median, "iteration": iteration, "flow": flow,
         "flow_defaults": lambda: flow(small=False)}

if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:]:
        CASES[name]()
        print(f"{name}: ok")
