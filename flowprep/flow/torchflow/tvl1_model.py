"""A static performance model of the fused TV-L1: bytes per pixel per kernel, times the work counted on
frames, against a GPU's memory bandwidth and the host's launch rate -> expected fields/s.

The kernels are memory-bound stencils, so a kernel's time is the bytes it moves over the bandwidth it gets
(``_tvl1_fused.BYTES``: each float32 load and store that reaches memory once per pixel). The work is what a
real run does: the inner iterations and median filters each pair runs in each warp, counted by the fused
control flow itself (``stats``; on a CPU each kernel runs as its eager reference, so this needs no GPU).
Early stopping makes that work per pair, and the host's schedule makes it per batch: every ``sync_every``
iterations the host looks, ends the warp when every pair has converged, and launches the next ones over
the pairs still active. The batch is simulated from per-pair counts: within a window between two host
checks the device needs max(launch time on the host, bytes / bandwidth), as the host enqueues while the
device runs, and each check waits for the device.

Costs it leaves out: programs launched for a pair that converged inside a window (no traffic: their loads
are masked; their share is reported), the eager operations around the kernels (pyramid, gradients,
allocations: under 3% of the bytes at 340x256) and L2 hits (a batch's fields are far larger than L2).

    python -m flowprep.flow.torchflow.tvl1_model --pairs 16 --batches 32,128,256
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from flowprep.flow.torchflow import _tvl1, _tvl1_fused

# Peak memory bandwidth: H100 SXM (HBM3) and H200 (HBM3e), from NVIDIA's data sheets.
GPUS = {"H100": 3.35e12, "H200": 4.8e12}
# Assumptions (the device check measures what it can): the share of peak bandwidth that stencils of
# coalesced 4-byte loads sustain; the host time of one Triton launch (Triton's binder and cache key ~8-17 us
# measured on a CPU here, plus the driver call); one host check (nonzero of the flags, waiting for the
# device); torch launches per pyramid level outside the kernels (pyramid, gradients, allocations).
EFFICIENCY = 0.8
LAUNCH_S = 20e-6
SYNC_S = 40e-6
EAGER_LAUNCHES_PER_LEVEL = 80
TORCH_LAUNCH_S = 6e-6
KERNELS_PER_ITERATION = ("primal", "dual", "converged")


def count_work(prev: torch.Tensor, nxt: torch.Tensor, **params) -> list[dict]:
    """The ``stats`` of a fused TV-L1 of (B, H, W) float32 pairs in 0..255 (on CPU: the eager references)."""
    stats: list[dict] = []
    with torch.no_grad():
        _tvl1.tvl1_flow(prev, nxt, fused=True, stats=stats, **params)
    return stats


def schedule(counts: np.ndarray, inner: int, outer: int, sync_every: int, median: bool
             ) -> tuple[list[tuple[int, int, int]], int]:
    """The host's launches in one warp of a batch whose pairs ran ``counts`` (B,) inner iterations.

    Returns (windows, syncs): a window is (first iteration, iterations, pairs covered) between two host
    checks, as _tvl1._proc_one_scale_fused launches them. A pair is active after n iterations while its
    count is above n.
    """
    windows, syncs = [], 0
    start, pairs = 0, len(counts)
    for n_done in range(inner * outer):
        if n_done and n_done % sync_every == 0:
            syncs += 1
            windows.append((start, n_done - start, pairs))
            start, pairs = n_done, int((counts > n_done).sum())
            if pairs == 0:
                return windows, syncs
    windows.append((start, inner * outer - start, pairs))
    return windows, syncs


@dataclass
class Prediction:
    """Expected fields/s of one batch size on one GPU, and what they come from."""
    gpu: str
    batch: int
    bytes_per_field: dict  # kernel -> bytes per field
    iterations_per_field: float  # inner iterations a pair ran, in full-size (finest level) equivalents
    idle_share: float  # share of launched pair-iterations spent on pairs already converged
    launches: int  # per batch
    syncs: int
    ceiling: float  # fields/s at the peak bandwidth, no launch or sync cost
    fields_per_s: float  # at EFFICIENCY of the peak, with launches and host checks


def predict(stats: list[dict], batch: int, bandwidth: float, gpu: str = "", efficiency: float = EFFICIENCY,
            launch_s: float = LAUNCH_S, sync_s: float = SYNC_S) -> Prediction:
    """The model for batches of ``batch`` pairs drawn from the counted pairs in turn (pair k % P)."""
    by = _tvl1_fused.BYTES
    per_iteration = by["primal"] + by["dual"]
    full = max(level["height"] * level["width"] for level in stats)  # the finest level
    total = {"warp": 0.0, "median5": 0.0, "primal": 0.0, "dual": 0.0, "converged": 0.0}
    seconds, launches, syncs, active_total, listed_total, fine_iterations = 0.0, 0, 0, 0, 0, 0.0
    eff_bw = bandwidth * efficiency
    for level in stats:
        px = level["height"] * level["width"]
        blocks = _tvl1_fused.n_blocks(level["height"], level["width"])
        iterations = level["iterations"].cpu().numpy()  # (warps, P)
        order = np.arange(batch) % iterations.shape[1]
        seconds += EAGER_LAUNCHES_PER_LEVEL * TORCH_LAUNCH_S
        for counts in iterations[:, order]:
            windows, n_sync = schedule(counts, level["inner_iterations"], level["outer_iterations"],
                                       level["sync_every"], level["median"])
            syncs += n_sync
            launches += 1
            warp_bytes = px * batch * by["warp"]
            total["warp"] += warp_bytes
            seconds += max(launch_s, warp_bytes / eff_bw)
            fine_iterations += counts.sum() * px / full
            for start, n_it, pairs in windows:
                # active pairs in iteration j (1-based): those that ran at least j iterations
                active = sum(int((counts > j).sum()) for j in range(start, start + n_it))
                active_total += active
                listed_total += n_it * pairs
                medians = (sum(1 for j in range(start, start + n_it) if j % level["inner_iterations"] == 0)
                           if level["median"] else 0)
                med_bytes = medians * batch * px * 2 * by["median5"]  # every pair: filtered or copied
                it_bytes = active * px * per_iteration
                conv_bytes = n_it * pairs * blocks * 8
                total["median5"] += med_bytes
                total["primal"] += active * px * by["primal"]
                total["dual"] += active * px * by["dual"]
                total["converged"] += conv_bytes
                n_launch = n_it * len(KERNELS_PER_ITERATION) + 2 * medians
                launches += n_launch
                seconds += max(n_launch * launch_s, (med_bytes + it_bytes + conv_bytes) / eff_bw)
    seconds += syncs * sync_s
    moved = sum(total.values())
    return Prediction(gpu, batch, {k: v / batch for k, v in total.items()}, fine_iterations / batch,
                      1 - active_total / max(listed_total, 1), launches, syncs, batch * bandwidth / moved,
                      batch / seconds)


def report(stats: list[dict], batches: list[int], gpus: dict[str, float] = GPUS) -> str:
    """The model as text: bytes per pixel per kernel, the counted work, and fields/s per GPU and batch."""
    by = _tvl1_fused.BYTES
    lines = ["bytes per pixel: primal %d, dual %d per inner iteration (%d); median5 %d per component and "
             "filter; warp %d per warp; converged 8 per program" % (by["primal"], by["dual"],
                                                                   by["primal"] + by["dual"], by["median5"],
                                                                   by["warp"])]
    finest = max(stats, key=lambda level: level["height"] * level["width"])
    n_pairs = finest["iterations"].shape[1]
    lines.append(f"work counted on {n_pairs} pairs at {finest['width']}x{finest['height']}, inner iterations "
                 f"per pair and level (of {finest['warps'] * finest['inner_iterations'] * finest['outer_iterations']}"
                 " allowed; per warp mean / max):")
    for level in stats:
        it = level["iterations"].double()
        lines.append(f"  {level['width']}x{level['height']}: {float(it.sum(0).mean()):.0f} "
                     f"({float(it.mean()):.1f} / {int(it.max())})")
    lines.append("")
    lines.append("| GPU | batch | GB/field | of which primal+dual | inner it./field (full size) | launches/batch "
                 "| idle share | ceiling fields/s | model fields/s |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for gpu, bw in gpus.items():
        for b in batches:
            p = predict(stats, b, bw, gpu)
            moved = sum(p.bytes_per_field.values())
            lines.append(f"| {gpu} ({bw / 1e12:.2f} TB/s) | {b} | {moved / 1e9:.2f} | "
                         f"{100 * (p.bytes_per_field['primal'] + p.bytes_per_field['dual']) / moved:.0f}% | "
                         f"{p.iterations_per_field:.0f} | {p.launches} | {100 * p.idle_share:.0f}% | "
                         f"{p.ceiling:.0f} | {p.fields_per_s:.0f} |")
    lines.append(f"(model: {100 * EFFICIENCY:.0f}% of peak bandwidth, {LAUNCH_S * 1e6:.0f} us per kernel launch, "
                 f"{SYNC_S * 1e6:.0f} us per host check; ceiling: peak bandwidth, no launch cost)")
    return "\n".join(lines)


def scene_pairs(n: int, height: int = 256, width: int = 340) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs of varied synthetic motion (parity.synthetic_pair: texture, shapes, noise, some JPEG'd)."""
    from flowprep.flow.torchflow import parity

    rng = np.random.default_rng(1234)
    prev, nxt = [], []
    for i in range(n):
        p, q, _ = parity.synthetic_pair(height, width, seed=i, shift=tuple(rng.uniform(-3, 3, 2)),
                                        angle_deg=float(rng.uniform(-2, 2)), jpeg_quality=85 if i % 3 == 2 else None)
        prev.append(p)
        nxt.append(q)
    return (torch.from_numpy(np.stack(prev)).float(), torch.from_numpy(np.stack(nxt)).float())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="synthetic pairs to count the work on (default 8)")
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--batches", default="1,32,128,256")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    prev, nxt = scene_pairs(args.pairs, height, width)
    print(report(count_work(prev, nxt), [int(b) for b in args.batches.split(",")]))


if __name__ == "__main__":
    main()
