"""The fused Triton TV-L1 kernels (flowprep.flow.torchflow._tvl1_fused) against the eager PyTorch path.

The kernels are compiled for CUDA; here they run in Triton's CPU interpreter, which evaluates the same
float32 operations with numpy. Triton reads TRITON_INTERPRET when it is imported, so each check runs in a
subprocess (tests/fused_cases.py). The interpreter is slow: the flow at OpenCV's default schedule is a slow
test; the GPU test runs the same cases compiled. Without the interpreter and without a GPU the fused control
flow runs each kernel's eager reference, which checks the loop (host checks, the pairs a launch covers,
median filters) at eager speed. That the kernels build for CUDA at all is tests/test_kernel_build.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowprep.flow import torchflow

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def run_cases(*cases: str, interpret: bool = True, cuda: bool = True, timeout: float = 600) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run([sys.executable, "-m", "tests.fused_cases", *cases], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    for case in cases:
        assert f"{case}: ok" in res.stdout


def test_warp_median_and_one_iteration_match_the_eager_path_bit_for_bit():
    run_cases("warp", "median", "iteration")


def test_fused_flow_equals_eager_flow_on_a_short_schedule():
    run_cases("flow")


@pytest.mark.slow
def test_fused_flow_equals_eager_flow_at_opencv_defaults():
    run_cases("flow_defaults")


def test_fused_control_flow_with_the_kernels_eager_references_equals_the_eager_flow():
    run_cases("iteration", "flow", "flow_defaults", interpret=False, cuda=False)


@pytest.mark.gpu
def test_fused_kernels_compiled_on_cuda_match_the_eager_cuda_path():
    run_cases("warp", "median", "iteration", "flow", "flow_defaults", interpret=False)


def test_fused_is_refused_where_it_cannot_run():
    frames = np.zeros((2, 24, 32), np.uint8)
    with pytest.raises(torchflow.TorchFlowError, match="TRITON_INTERPRET=1"):
        torchflow.tvl1(frames, frames, fused=True)
    with pytest.raises(torchflow.TorchFlowError, match="gamma = 0 only"):
        torchflow.tvl1(frames, frames, fused=True, gamma=0.1)
