"""Memory traffic and kernel launches of the eager PyTorch flow paths, counted on CPU, and the fields/s
they allow on an H100 / H200 at best.

On a GPU each eager tensor operation is a kernel that reads its inputs and writes its output from and to
memory, so the bytes of every operation's tensors, summed over a field, bound the eager path's rate by the
memory bandwidth (operations that only make views are not counted; L2 hits between consecutive kernels are
ignored, which at a batch of (B, 256, 340) float32 arrays much larger than L2 is close). This is why
Farneback on CUDA needs fused kernels to reach its 3,000 fields/s target, and why TV-L1 has them.

    python benchmarks/bench_eager_traffic.py --size 340x256
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flowprep.flow.torchflow import _farneback, _tvl1, parity, tvl1_model


class Traffic(TorchDispatchMode):
    """Counts the tensor bytes read and written, and the operations, of everything run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # a view: no memory moved
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor) and t.dim() > 0]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        self.ops += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="340x256")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    p, q, _ = parity.synthetic_pair(height, width, seed=1, shift=(1.3, -0.7))
    prev, nxt = torch.from_numpy(p)[None].float(), torch.from_numpy(q)[None].float()
    print(f"| eager path at {width}x{height} | GB per field | operations per call | "
          + " | ".join(f"{g} bound (fields/s)" for g in tvl1_model.GPUS) + " | CPU s per field (1 thread) |")
    print("|---|---:|---:|" + "---:|" * len(tvl1_model.GPUS) + "---:|")
    runs = {"farneback (defaults)": lambda: _farneback.farneback_flow(prev, nxt),
            "tvl1 (defaults, fused=False)": lambda: _tvl1.tvl1_flow(prev, nxt, lazy_sync=True)}
    for name, fn in runs.items():
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        seconds = time.perf_counter() - t
        count = Traffic()
        with torch.no_grad(), count:
            fn()
        bounds = " | ".join(f"{bw / count.bytes:.0f}" for bw in tvl1_model.GPUS.values())
        print(f"| {name} | {count.bytes / 1e9:.2f} | {count.ops} | {bounds} | {seconds:.2f} |")
    print("(bound: peak bandwidth over the bytes; the operations are kernel launches per call, whatever the batch)")


if __name__ == "__main__":
    main()
