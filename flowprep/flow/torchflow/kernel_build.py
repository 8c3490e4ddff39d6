"""Ahead-of-time CUDA builds of the fused TV-L1 kernels, on any machine: registers, local memory, occupancy.

Triton compiles for a GPU that is not there. This module takes the Launches that a real fused TV-L1 run
makes (recorded by _tvl1_fused.launch on CPU, where each kernel runs as its eager reference), turns each one
into the signature, constexprs, attributes and options that Triton's own launcher derives from those
arguments, compiles it for sm_80 / sm_90, and reads the cubin's resource usage with the ``cuobjdump``
shipped in the Triton wheel (triton/backends/nvidia/bin). A kernel that does not compile, or that uses local
memory (spills or local arrays: STACK > 0), is what tests/test_kernel_build.py fails on.

    python -m flowprep.flow.torchflow.kernel_build            # the table, sm_80 and sm_90
    python -m flowprep.flow.torchflow.kernel_build --arch 90 --size 170x128

Occupancy is that of an H100/H200 SM (the same limits hold for an A100 but for 48 KB less shared memory):
65,536 32-bit registers, at most 64 resident warps and 32 resident blocks, registers allocated per warp in
units of 256.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from flowprep.flow.torchflow import _tvl1, _tvl1_fused

ARCHS = (80, 90)
# A fused run's kernels, as the benchmark frames are sized; any size gives the same signatures (see
# _tvl1_fused._jit), which tests/test_kernel_build.py checks.
DEFAULT_SIZE = (256, 340)  # (height, width)
SM_REGISTERS = 65536
SM_WARPS = 64
SM_BLOCKS = 32
SM_SHARED = {80: 164 * 1024, 90: 228 * 1024}  # bytes a block may use, per SM
REG_UNIT = 256  # registers are allocated per warp in multiples of this


class BuildError(RuntimeError):
    """A kernel that did not compile, or a Triton without the tools to read its cubin."""


@dataclass(frozen=True)
class Build:
    """One kernel compiled for one target, with what its cubin says about resources."""
    name: str
    arch: int
    signature: dict
    constexprs: dict
    num_warps: int
    registers: int  # per thread
    stack: int  # bytes of local memory per thread
    shared: int  # bytes per block (static and Triton's dynamic)
    cubin: bytes

    @property
    def occupancy(self) -> int:
        """Resident warps per SM (of 64) on an H100-class SM, from registers, shared memory and blocks."""
        per_warp = -(-self.registers * 32 // REG_UNIT) * REG_UNIT
        by_regs = SM_REGISTERS // (per_warp * self.num_warps)
        by_shared = SM_SHARED[self.arch] // self.shared if self.shared else SM_BLOCKS
        blocks = min(by_regs, by_shared, SM_BLOCKS, SM_WARPS // self.num_warps)
        return blocks * self.num_warps


def tool(name: str) -> Path:
    """A CUDA binary shipped with the Triton wheel (ptxas, cuobjdump); BuildError if it is missing."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not os.access(path, os.X_OK):
        raise BuildError(f"{path} is missing or not executable: this Triton wheel cannot build CUDA kernels "
                         "ahead of time (install the CUDA-enabled triton wheel from PyPI)")
    return path


def fused_launches(height: int = DEFAULT_SIZE[0], width: int = DEFAULT_SIZE[1], batch: int = 2
                   ) -> list[_tvl1_fused.Launch]:
    """The Launches of a fused TV-L1 run on (batch, height, width) frames, one per kernel and pyramid level
    (described: no tensors). The run is a short schedule on CPU with every kernel as its eager reference;
    the launch code is the one a GPU run goes through."""
    g = torch.Generator().manual_seed(0)
    prev = torch.rand(batch, height, width, generator=g) * 255
    nxt = torch.roll(prev, 1, dims=2)
    stats: list[dict] = []
    with torch.no_grad():
        _tvl1.tvl1_flow(prev, nxt, fused=True, stats=stats, warps=1, outer_iterations=1, inner_iterations=2)
    return [spec for level in stats for spec in level["launches"]]


def compile_args(spec: _tvl1_fused.Launch, arch: int) -> tuple:
    """(ASTSource, options dict) for ``spec`` on sm_``arch``, derived by Triton's own launch code.

    Triton's launcher binds the arguments, specializes them (pointer dtypes, i32 or i64, ints equal to 1 or
    divisible by 16, 16-byte aligned pointers, unless the kernel opts out) and parses the options; the same
    functions run here against a CUDA backend for the target, so the compile matches a real launch.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    kernel = spec.kernel
    kwargs = {**spec.constexprs, **spec.options, "debug": kernel.debug or triton.knobs.runtime.debug,
              "instrumentation_mode": triton.knobs.compilation.instrumentation_mode}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*spec.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options.__dict__


def resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers per thread, stack bytes per thread, static shared bytes) from ``cuobjdump -res-usage``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([str(tool("cuobjdump")), "-res-usage", str(path)], capture_output=True, text=True)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res.stdout)
    if res.returncode or not m:
        raise BuildError(f"cuobjdump -res-usage failed ({res.returncode}): {res.stdout[-500:]}{res.stderr[-500:]}")
    return int(m[1]), int(m[2]), int(m[3])


def build(spec: _tvl1_fused.Launch, arch: int) -> Build:
    """Compile one Launch for sm_``arch`` and read its resources; BuildError with Triton's message if it fails."""
    import triton
    from triton.backends.compiler import GPUTarget

    tool("ptxas")
    src, options = compile_args(spec, arch)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # Triton raises CompilationError, NameError, RuntimeError (ptxas), ...
        raise BuildError(f"{spec.name} does not compile for sm_{arch}: {type(exc).__name__}: {exc}") from exc
    regs, stack, shared = resource_usage(compiled.asm["cubin"])
    return Build(spec.name, arch, dict(src.signature), dict(spec.constexprs), options["num_warps"], regs, stack,
                 max(shared, compiled.metadata.shared), compiled.asm["cubin"])


def unique(specs: list[_tvl1_fused.Launch], arch: int = ARCHS[-1]) -> list[_tvl1_fused.Launch]:
    """One Launch per distinct compile (kernel, signature, constexprs, attributes, options)."""
    seen, out = set(), []
    for spec in specs:
        src, options = compile_args(spec, arch)
        key = (spec.name, tuple(src.signature.items()), repr(sorted(src.constants.items())),
               repr(sorted(src.attrs.items())), repr(sorted(options.items())))
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


def build_all(archs: tuple[int, ...] = ARCHS, size: tuple[int, int] = DEFAULT_SIZE) -> list[Build]:
    """Every distinct kernel compile of a fused run, for every target."""
    specs = unique(fused_launches(*size))
    return [build(spec, arch) for spec in specs for arch in archs]


def table(builds: list[Build]) -> str:
    """A markdown table: per kernel and target, registers, stack, shared memory, warps and occupancy."""
    lines = ["| kernel | target | registers | stack (B) | shared (B) | warps/block | pixels/program | "
             "resident warps/SM (of 64) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for b in builds:
        block = b.constexprs.get("BLOCK", "-")
        lines.append(f"| {b.name} | sm_{b.arch} | {b.registers} | {b.stack} | {b.shared} | {b.num_warps} | {block} | "
                     f"{b.occupancy} ({100 * b.occupancy // SM_WARPS}%) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=",".join(map(str, ARCHS)), help="compute capabilities (default 80,90)")
    ap.add_argument("--size", default=f"{DEFAULT_SIZE[1]}x{DEFAULT_SIZE[0]}", help="WIDTHxHEIGHT of the run")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    builds = build_all(tuple(int(a) for a in args.arch.split(",")), (height, width))
    print(table(builds))


if __name__ == "__main__":
    main()
