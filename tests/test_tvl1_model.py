"""The static performance model of the fused TV-L1 (flowprep.flow.torchflow.tvl1_model): the host schedule it
simulates is the one the fused loop runs, and its bytes are the kernels' bytes times the counted work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowprep.flow.torchflow import _tvl1_fused, tvl1_model


def test_schedule_by_hand():
    # pairs stop after 5, 12 and 30 of 3 x 10 iterations; the host looks every 10
    windows, syncs = tvl1_model.schedule(np.array([5, 12, 30]), inner=10, outer=3, sync_every=10, median=True)
    assert windows == [(0, 10, 3), (10, 10, 2), (20, 10, 1)] and syncs == 2
    windows, syncs = tvl1_model.schedule(np.array([3, 7]), inner=10, outer=3, sync_every=5, median=True)
    assert windows == [(0, 5, 2), (5, 5, 1)] and syncs == 2  # the check at 10 finds no pair left


def test_schedule_is_the_one_the_fused_loop_runs():
    torch.set_num_threads(1)
    prev, nxt = tvl1_model.scene_pairs(3, 40, 52)
    stats = tvl1_model.count_work(prev, nxt, sync_every=3, outer_iterations=3, inner_iterations=7)
    for level in stats:
        windows, syncs, medians = [], 0, 0
        for counts in level["iterations"].numpy():
            w, s = tvl1_model.schedule(counts, 7, 3, 3, True)
            windows += [[n, pairs] for _, n, pairs in w]
            syncs += s
            medians += sum(1 for start, n, _ in w for j in range(start, start + n) if j % 7 == 0)
        assert windows == [w for w in level["windows"] if w[0]], level
        assert syncs == level["syncs"] and medians == level["median_launches"]


def test_bytes_are_the_kernels_bytes_times_the_work():
    level = {"height": 10, "width": 20, "warps": 1, "inner_iterations": 10, "outer_iterations": 1,
             "sync_every": 10, "median": True, "iterations": torch.tensor([[4, 2]])}
    p = tvl1_model.predict([level], batch=2, bandwidth=1e12)
    by = _tvl1_fused.BYTES
    assert p.bytes_per_field["primal"] == pytest.approx((4 + 2) * 200 * by["primal"] / 2)
    assert p.bytes_per_field["dual"] == pytest.approx((4 + 2) * 200 * by["dual"] / 2)
    assert p.bytes_per_field["median5"] == pytest.approx(200 * 2 * by["median5"])  # one filter, both pairs
    assert p.bytes_per_field["warp"] == pytest.approx(200 * by["warp"])
    assert p.bytes_per_field["converged"] == pytest.approx(10 * 2 * 1 * 8 / 2)  # 10 launches, 2 pairs, 1 program
    assert p.idle_share == pytest.approx(1 - 6 / 20)
    assert p.ceiling == pytest.approx(2 * 1e12 / (2 * sum(p.bytes_per_field.values())))
    assert p.launches == 1 + 10 * 3 + 2 and p.syncs == 0
