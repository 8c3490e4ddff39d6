"""Throughput and parity of the PyTorch flow backend against OpenCV on the CPU.

For each algorithm: fields/s against batch size for torch on CUDA (when present) and on CPU, and for OpenCV
on CPU (one pair at a time, its own threads), on synthetic textured frames with known motion; the GPU
memory per field in flight on CUDA; and the parity of torch's fields with OpenCV's (mean end-point error,
share of pixels within 0.1 / 0.5 px, share of uint8 values identical / within +-1 after quantisation at
bound 20, share of fields that are bit-identical).

    python benchmarks/bench_torchflow.py                                  # 340x256, batches 1,8,32,128
    python benchmarks/bench_torchflow.py --size 170x128 --batches 1,4     # small, for a CPU-only machine
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from flowprep import torchflow
from flowprep.flow import OpenCVFlow
from flowprep.torchflow import parity


def make_pairs(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n synthetic pairs with varied motion (shift up to ~3 px, rotation up to 2 deg), every third JPEG'd."""
    rng = np.random.default_rng(1234)
    prev, nxt, truth = [], [], []
    for i in range(n):
        p, q, f = parity.synthetic_pair(height, width, seed=i, shift=tuple(rng.uniform(-3, 3, 2)),
                                        angle_deg=float(rng.uniform(-2, 2)),
                                        jpeg_quality=85 if i % 3 == 2 else None)
        prev.append(p)
        nxt.append(q)
        truth.append(f)
    return np.stack(prev), np.stack(nxt), np.stack(truth)


def opencv_flow(algo: str, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """OpenCV's CPU flow with the defaults, pair by pair: (B, H, W) -> (B, H, W, 2)."""
    flow = OpenCVFlow(algo)
    return np.stack([flow(a, b) for a, b in zip(prev, nxt)])


def time_torch(algo: str, prev: np.ndarray, nxt: np.ndarray, device: str, batch: int, repeat: int,
               compile: bool) -> tuple[float, float | None, np.ndarray]:
    """Seconds per field for batches of ``batch`` pairs, GPU MiB per field (CUDA), and the fields."""
    extra = {"compile": True} if compile and algo == "tvl1" else {}
    n = prev.shape[0]
    calls = max(1, repeat)
    warm = torchflow.compute_flow_batch(prev[:1], nxt[:1], algo=algo, device=device, **extra)
    del warm
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    idx = np.arange(batch) % n
    p_b, n_b = prev[idx], nxt[idx]
    t = time.perf_counter()
    for _ in range(calls):
        out = torchflow.compute_flow_batch(p_b, n_b, algo=algo, device=device, **extra)
    if device == "cuda":
        torch.cuda.synchronize()
    per_field = (time.perf_counter() - t) / (calls * batch)
    mem = None
    if device == "cuda":
        mem = (torch.cuda.max_memory_allocated() - base) / batch / 2**20
    return per_field, mem, out.cpu().numpy()[: min(batch, n)]


def parity_row(ours: np.ndarray, ref: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    figs = [parity.compare_flows(a, b) for a, b in zip(ours, ref)]
    row = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}
    row["bit_identical"] = float(np.mean([np.array_equal(a, b) for a, b in zip(ours, ref)]))
    row["max_abs"] = float(np.abs(ours - ref).max())
    row["epe_truth"] = float(np.mean([parity.compare_flows(a, t, margin=8)["epe"] for a, t in zip(ours, truth)]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="340x256", help="WIDTHxHEIGHT of the frames (default 340x256)")
    ap.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    ap.add_argument("--algos", default="tvl1,farneback")
    ap.add_argument("--devices", default="auto", help="auto (cuda if present, and cpu), or e.g. cpu / cuda")
    ap.add_argument("--cpu-batches", default=None, help="batch sizes for torch on CPU (default: --batches "
                    "up to 8)")
    ap.add_argument("--pairs", type=int, default=None, help="distinct pairs (default: min(16, max batch))")
    ap.add_argument("--repeat", type=int, default=1, help="timed calls per batch size (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV CPU threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the TV-L1 inner iteration")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    width, height = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    cpu_batches = ([int(b) for b in args.cpu_batches.split(",")] if args.cpu_batches
                   else [b for b in batches if b <= 8] or batches[:1])
    algos = args.algos.split(",")
    devices = (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]) if args.devices == "auto" \
        else args.devices.split(",")
    import cv2

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    n_pairs = args.pairs or min(16, max(batches + cpu_batches))
    prev, nxt, truth = make_pairs(n_pairs, height, width)
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "-"
    print(f"# {width}x{height}, {n_pairs} distinct pairs; torch {torch.__version__} ({torch.get_num_threads()} "
          f"CPU threads), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
          f"{platform.processor() or platform.machine()}, GPU: {gpu}")

    results = {"size": [width, height], "speed": [], "parity": []}
    for algo in algos:
        t = time.perf_counter()
        ref = opencv_flow(algo, prev, nxt)
        cv_per_field = (time.perf_counter() - t) / n_pairs
        results["speed"].append({"algo": algo, "backend": "opencv-cpu", "batch": 1,
                                 "fields_per_s": 1 / cv_per_field, "mib_per_field": None})
        fields_by_device = {}
        for device in devices:
            for b in (batches if device == "cuda" else cpu_batches):
                per_field, mem, out = time_torch(algo, prev, nxt, device, b, args.repeat, args.compile)
                results["speed"].append({"algo": algo, "backend": f"torch-{device}", "batch": b,
                                         "fields_per_s": 1 / per_field, "mib_per_field": mem})
                if len(out) >= len(fields_by_device.get(device, [])):
                    fields_by_device[device] = out
        for device, out in fields_by_device.items():
            k = len(out)
            row = parity_row(out, ref[:k], truth[:k])
            results["parity"].append({"algo": algo, "device": device, "fields": k, **row})
        results["parity"].append({"algo": algo, "device": "opencv-cpu vs truth", "fields": n_pairs,
                                  "epe_truth": parity_row(ref, ref, truth)["epe_truth"]})

    print("\n| algo | backend | batch | fields/s | x OpenCV-cpu | GPU MiB/field |")
    print("|---|---|---:|---:|---:|---:|")
    for algo in algos:
        base = next(r["fields_per_s"] for r in results["speed"]
                    if r["algo"] == algo and r["backend"] == "opencv-cpu")
        for r in (r for r in results["speed"] if r["algo"] == algo):
            mem = f"{r['mib_per_field']:.1f}" if r["mib_per_field"] is not None else "-"
            print(f"| {algo} | {r['backend']} | {r['batch']} | {r['fields_per_s']:.2f} | "
                  f"{r['fields_per_s'] / base:.2f} | {mem} |")
    print("\n| algo | torch device | fields | EPE vs OpenCV (px) | max diff (px) | <=0.1 px | <=0.5 px | "
          "u8 equal | u8 +-1 | bit-identical | EPE vs truth (px) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["parity"]:
        if "epe" not in r:
            print(f"| {r['algo']} | {r['device']} | {r['fields']} | | | | | | | | {r['epe_truth']:.4f} |")
            continue
        print(f"| {r['algo']} | {r['device']} | {r['fields']} | {r['epe']:.2e} | {r['max_abs']:.1e} | "
              f"{100 * r['within_0.1']:.2f}% | {100 * r['within_0.5']:.2f}% | {100 * r['u8_equal']:.2f}% | "
              f"{100 * r['u8_within1']:.2f}% | {100 * r['bit_identical']:.0f}% | {r['epe_truth']:.4f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
