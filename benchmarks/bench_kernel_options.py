"""Registers and local memory of the fused TV-L1 kernels for other launch shapes, compiled ahead of time.

The project launches one pixel per thread with 8 warps per program (_tvl1_fused.NUM_WARPS, BLOCK = 256).
This rebuilds every kernel with other warps per program and pixels per thread, for sm_80 and sm_90, so the
choice can be checked on any machine (no GPU needed):

    python benchmarks/bench_kernel_options.py                       # warps 4,8 x pixels/thread 1,2,4,8
    python benchmarks/bench_kernel_options.py --warps 4 --pixels 1,2
"""
from __future__ import annotations

import argparse

import torch

from flowprep.flow.torchflow import _tvl1_fused, kernel_build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--pixels", default="1,2,4,8", help="pixels per thread")
    ap.add_argument("--arch", default="80,90")
    args = ap.parse_args()
    torch.set_num_threads(1)
    archs = [int(a) for a in args.arch.split(",")]
    names = list(_tvl1_fused._SPECS)
    print("| warps | pixels/thread | BLOCK | " + " | ".join(f"{n} sm_{a}" for n in names for a in archs) + " |")
    print("|---:|---:|---:|" + "---|" * (len(names) * len(archs)))
    for warps in (int(w) for w in args.warps.split(",")):
        for pixels in (int(p) for p in args.pixels.split(",")):
            # the launch builders read these module constants at every call
            _tvl1_fused.BLOCK = 32 * warps * pixels
            _tvl1_fused.OPTIONS = {**_tvl1_fused.OPTIONS, "num_warps": warps}
            specs = kernel_build.unique(kernel_build.fused_launches(batch=1))
            builds = {(b.name, b.arch): b for s in specs for b in (kernel_build.build(s, a) for a in archs)}
            cells = [f"{builds[n, a].registers}" + (f" +{builds[n, a].stack} B stack" if builds[n, a].stack else "")
                     for n in names for a in archs]
            print(f"| {warps} | {pixels} | {_tvl1_fused.BLOCK} | " + " | ".join(cells) + " |")
    print("(registers per thread; '+N B stack': local memory per thread, spills)")


if __name__ == "__main__":
    main()
