"""Every kernel the fused TV-L1 launches, compiled ahead of time for sm_80 and sm_90 (kernel_build).

No GPU needed: Triton compiles for an absent target, with the signatures, constexprs and options that its
launcher derives from the Launches a real run records. Triton's interpreter, which the bit-identity tests
use, accepts kernels the compiler refuses (a module global that is not a constexpr, for one), so only a
build shows that the CUDA path can run at all. A kernel that spills to local memory fails here too.
"""
from __future__ import annotations

import pytest
import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # CI and every CUDA build of torch have it: its absence is a broken install
    raise RuntimeError("tests/test_kernel_build.py needs Triton (pip install triton)") from exc

from flowprep.flow.torchflow import _tvl1_fused, kernel_build

PER_ITERATION = ("primal", "dual", "median5")  # the kernels run every inner iteration (or outer, median5)
MAX_REGISTERS = 64  # per thread: 32 of 64 warps resident per SM with 8-warp blocks, or more


@pytest.fixture(scope="module")
def builds() -> dict[tuple[str, int], kernel_build.Build]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recording run is tiny; OpenMP hand-offs on a busy machine are not
    try:
        return {(b.name, b.arch): b for b in kernel_build.build_all()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", kernel_build.ARCHS)
@pytest.mark.parametrize("name", list(_tvl1_fused._SPECS))
def test_kernel_compiles_for_cuda_without_local_memory(builds, name, arch):
    build = builds[name, arch]
    assert build.stack == 0, (f"{name} uses {build.stack} B of local memory per thread on sm_{arch} "
                              f"(spills or a local array)\n{kernel_build.table(list(builds.values()))}")


def test_per_iteration_kernels_fit_in_64_registers(builds):
    over = [b for b in builds.values() if b.name in PER_ITERATION and b.registers > MAX_REGISTERS]
    assert not over, f"over {MAX_REGISTERS} registers per thread:\n{kernel_build.table(over)}"


def test_one_binary_per_kernel_serves_every_size_and_batch():
    torch.set_num_threads(1)
    # 21x27: one program per pair (an int equal to 1, which Triton would otherwise make a constexpr);
    # 256x340 has a height divisible by 16, 96x72 a width that is
    specs = [s for size, batch in (((256, 340), 2), ((72, 96), 3), ((21, 27), 1))
             for s in kernel_build.fused_launches(*size, batch=batch)]
    names = [s.name for s in kernel_build.unique(specs)]
    assert sorted(names) == sorted(_tvl1_fused._SPECS), names


def test_every_kernel_the_fused_path_launches_is_recorded():
    torch.set_num_threads(1)
    assert {s.name for s in kernel_build.fused_launches(48, 64, batch=1)} == set(_tvl1_fused._SPECS)


NOT_A_CONSTEXPR = 0.5


@triton.jit
def _reads_a_global(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) * NOT_A_CONSTEXPR)


def test_a_kernel_that_does_not_compile_is_reported():
    spec = _tvl1_fused.Launch("reads_a_global", _reads_a_global, (1,), (torch.zeros(64),), {"BLOCK": 64},
                              _tvl1_fused.OPTIONS)
    with pytest.raises(kernel_build.BuildError, match="(?s)reads_a_global does not compile for sm_90.*NOT_A_CONSTEXPR"):
        kernel_build.build(spec, 90)


def test_missing_cuda_tools_fail_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(triton, "__file__", str(tmp_path / "triton" / "__init__.py"))
    with pytest.raises(kernel_build.BuildError, match="cuobjdump is missing"):
        kernel_build.tool("cuobjdump")


def test_occupancy_counts_warps_per_sm():
    def occ(registers, warps, shared=0):
        return kernel_build.Build("k", 90, {}, {}, warps, registers, 0, shared, b"").occupancy

    assert occ(255, 4) == 8  # 8192 registers a warp: two 128-thread blocks
    assert occ(64, 4) == 32
    assert occ(30, 8) == 64  # capped by the 64 warps an SM holds
    assert occ(42, 8) == 40  # 42 -> 48 per thread in units of 256 a warp: 5 blocks of 8 warps
    assert occ(32, 8, shared=100 * 1024) == 16  # two blocks fit in 228 KB
