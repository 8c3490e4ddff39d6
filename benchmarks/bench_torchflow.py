"""Throughput and parity of the PyTorch flow backend against OpenCV on the CPU, beside the static model.

For each algorithm: fields/s against batch size for torch on CUDA (when present) and on CPU, and for OpenCV
on CPU (one pair at a time, its own threads), on synthetic textured frames with known motion; the GPU
memory per field in flight on CUDA; and the parity of torch's fields with OpenCV's (mean end-point error,
share of pixels within 0.1 / 0.5 px, share of uint8 values identical / within +-1 after quantisation at
bound 20, share of fields that are bit-identical).

    python benchmarks/bench_torchflow.py                                  # 340x256, batches 1,8,32,128
    python benchmarks/bench_torchflow.py --size 170x128 --batches 1,4     # small, for a CPU-only machine
    python benchmarks/bench_torchflow.py --algos tvl1 --extract 200       # + `flowprep extract` end to end
    python benchmarks/bench_torchflow.py --kernels --model --devices none # no GPU: compile-time figures, model

On CUDA, TV-L1 is timed with the fused Triton kernels (the default there) and with the eager PyTorch path.
Beside each fused rate stands the static model (flowprep.flow.torchflow.tvl1_model): the kernels' bytes per
pixel times the work the pairs really ran (counted on the device), at the bandwidth a device-to-device copy
reaches in the same run and with the host's launches. --kernels prints each kernel's ahead-of-time CUDA build
(registers, local memory, occupancy); --model the model for H100 and H200 (work counted on CUDA, or on CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from flowprep.flow import torchflow
from flowprep.flow.compute import OpenCVFlow
from flowprep.flow.torchflow import parity


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
               compile: bool, fused: bool | None = None) -> tuple[float, float | None, np.ndarray]:
    """Seconds per field for batches of ``batch`` pairs, GPU MiB per field (CUDA), and the fields."""
    extra = {"compile": True} if compile and algo == "tvl1" else {}
    if fused is not None and algo == "tvl1":
        extra["fused"] = fused
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


def copy_bandwidth(gib: float = 1.0) -> float:
    """Device memory bandwidth in B/s that a plain copy reaches (bytes read + written per second)."""
    x = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    torch.cuda.synchronize()
    return 5 * 2 * x.numel() * 4 / (time.perf_counter() - t)


def fused_stats(prev: np.ndarray, nxt: np.ndarray, device: str) -> list[dict]:
    """The work the fused TV-L1 does on these pairs (stats; on CPU counted by the kernels' eager references)."""
    from flowprep.flow.torchflow import tvl1_model

    p = torch.from_numpy(prev).float().to(device)
    q = torch.from_numpy(nxt).float().to(device)
    return tvl1_model.count_work(p, q)


def bench_extract_cli(n_videos: int, frames: int, width: int, height: int, batch: int, jobs: int, algo: str
                      ) -> dict[str, float]:
    """`flowprep extract --device cuda` end to end on generated videos (a subprocess, as a user runs it).

    Returns the fields/s the run's summary reports and the same after taking off the fixed cost of a run
    (start-up, CUDA and Triton initialisation), measured on a 2-video run first.
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_extract import make_scene_video

    root_dir = Path(__file__).resolve().parents[1]

    def run(videos: Path, out: Path) -> tuple[float, int, float]:
        summary = out.with_suffix(".json")
        cmd = [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out),
               "--algo", algo, "--device", "cuda", "--size", f"{width}x{height}", "--jobs", str(jobs),
               "--batch-size", str(batch), "--no-progress", "--summary-json", str(summary)]
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=root_dir, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode:
            raise SystemExit(f"flowprep extract failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        info = json.loads(summary.read_text())
        return wall, int(info.get("flows", 0)), float(info.get("seconds", wall))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(n_videos):
            make_scene_video(tmp / "videos" / f"Class{i % 4}" / f"v_{i:04d}.avi", frames, width, height, i)
        for i in range(2):
            make_scene_video(tmp / "warm" / "Class0" / f"v_{i:04d}.avi", frames, width, height, 1000 + i)
        warm_wall, warm_flows, _ = run(tmp / "warm", tmp / "warm.h5")
        wall, flows, seconds = run(tmp / "videos", tmp / "flows.h5")
    fixed = warm_wall - warm_flows * wall / max(flows, 1)  # the 2-video run's time beyond its share of fields
    return {"videos": n_videos, "flows": flows, "wall_s": wall, "summary_fields_per_s": flows / seconds,
            "wall_fields_per_s": flows / wall, "fixed_s": fixed, "steady_fields_per_s": flows / max(wall - fixed, 1e-9)}


def parity_row(ours: np.ndarray, ref: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    figs = [parity.compare_flows(a, b) for a, b in zip(ours, ref)]
    row = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}
    row["bit_identical"] = float(np.mean([np.array_equal(a, b) for a, b in zip(ours, ref)]))
    row["max_abs"] = float(np.abs(ours - ref).max())
    row["epe_truth"] = float(np.mean([parity.compare_flows(a, t, margin=8)["epe"] for a, t in zip(ours, truth)]))
    return row


def launch_seconds(n: int = 2000) -> float:
    """Host seconds per fused-kernel launch (converged on one pair: the device work is nothing)."""
    from flowprep.flow.torchflow import _tvl1_fused

    run = _tvl1_fused.launch()
    partial = torch.zeros(1, 340, dtype=torch.float64, device="cuda")
    active = torch.ones(1, dtype=torch.int32, device="cuda")
    pairs = torch.zeros(1, dtype=torch.int32, device="cuda")
    run.converged(partial, active, pairs, 1.0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        run.converged(partial, active, pairs, -1.0)
    host = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    return host


def print_model(stats: list[dict], batches: list[int], copy_bw: float | None, launch_s: float | None = None
                ) -> dict:
    """The static model's fields/s for H100 and H200 (and, on a GPU, at this run's copy bandwidth)."""
    from flowprep.flow.torchflow import tvl1_model

    gpus = dict(tvl1_model.GPUS)
    print("\nStatic model of the fused TV-L1 (flowprep.flow.torchflow.tvl1_model):")
    print(tvl1_model.report(stats, batches, gpus))
    out = {gpu: {b: tvl1_model.predict(stats, b, bw, gpu).fields_per_s for b in batches} for gpu, bw in gpus.items()}
    if copy_bw:
        # what this device's copy reaches stands for the bandwidth the kernels get (efficiency 1 of it), and the
        # launch time is the one measured here
        out["this GPU"] = {b: tvl1_model.predict(stats, b, copy_bw, efficiency=1.0,
                                                 launch_s=launch_s or tvl1_model.LAUNCH_S).fields_per_s
                           for b in batches}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="340x256", help="WIDTHxHEIGHT of the frames (default 340x256)")
    ap.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    ap.add_argument("--algos", default="tvl1,farneback")
    ap.add_argument("--devices", default="auto", help="auto (cuda if present, and cpu), none, or e.g. cpu / cuda")
    ap.add_argument("--cpu-batches", default=None, help="batch sizes for torch on CPU (default: --batches "
                    "up to 8)")
    ap.add_argument("--pairs", type=int, default=None, help="distinct pairs (default: min(16, max batch))")
    ap.add_argument("--repeat", type=int, default=1, help="timed calls per batch size (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV CPU threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the TV-L1 inner iteration")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--kernels", action="store_true", help="print the fused kernels' sm_80/sm_90 builds first")
    ap.add_argument("--model", action="store_true", help="print the static model (always on CUDA with tvl1)")
    ap.add_argument("--extract", type=int, default=0, metavar="N", help="on CUDA, also time `flowprep extract` "
                    "end to end on N generated videos of --extract-frames frames")
    ap.add_argument("--extract-frames", type=int, default=50)
    ap.add_argument("--extract-batch", type=int, default=None, help="--batch-size of that run (default: the "
                    "largest of --batches)")
    ap.add_argument("--jobs", type=int, default=8, help="decode threads for --extract")
    args = ap.parse_args()

    width, height = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    cpu_batches = ([int(b) for b in args.cpu_batches.split(",")] if args.cpu_batches
                   else [b for b in batches if b <= 8] or batches[:1])
    algos = args.algos.split(",")
    if args.devices == "auto":
        devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = [] if args.devices == "none" else args.devices.split(",")
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

    results = {"size": [width, height], "gpu": gpu, "speed": [], "parity": []}
    if args.kernels:
        from flowprep.flow.torchflow import kernel_build

        builds = kernel_build.build_all()
        print("\nFused TV-L1 kernels compiled ahead of time (flowprep.flow.torchflow.kernel_build):")
        print(kernel_build.table(builds))
        results["kernels"] = [{"kernel": b.name, "arch": b.arch, "registers": b.registers, "stack": b.stack,
                               "shared": b.shared, "warps": b.num_warps, "occupancy_warps": b.occupancy}
                              for b in builds]
    for algo in algos if devices else []:
        t = time.perf_counter()
        try:
            ref = opencv_flow(algo, prev, nxt)
        except Exception as exc:  # e.g. an OpenCV without the contrib modules (no cv2.optflow)
            ref = None
            print(f"# OpenCV {algo} unavailable ({type(exc).__name__}: {exc}): no OpenCV baseline or parity")
        else:
            cv_per_field = (time.perf_counter() - t) / n_pairs
            results["speed"].append({"algo": algo, "backend": "opencv-cpu", "batch": 1,
                                     "fields_per_s": 1 / cv_per_field, "mib_per_field": None})
        fields_by_device = {}
        for device in devices:
            # on CUDA TV-L1 runs fused (the default) and eager, to show what the kernels buy
            variants = [(None, "")] if device == "cpu" or algo != "tvl1" else [(True, "-fused"), (False, "-eager")]
            for fused, label in variants:
                for b in (batches if device == "cuda" else cpu_batches):
                    per_field, mem, out = time_torch(algo, prev, nxt, device, b, args.repeat, args.compile, fused)
                    results["speed"].append({"algo": algo, "backend": f"torch-{device}{label}", "batch": b,
                                             "fields_per_s": 1 / per_field, "mib_per_field": mem})
                    if len(out) >= len(fields_by_device.get(device + label, [])):
                        fields_by_device[device + label] = out
        if ref is None and "cpu" in fields_by_device:  # no OpenCV: compare with the torch CPU fields
            ref = np.concatenate([fields_by_device["cpu"],
                                  time_torch(algo, prev, nxt, "cpu", n_pairs, 1, False)[2]])[:n_pairs]
            print(f"# {algo}: parity below is against torch on CPU (bit-identical to OpenCV on AVX2 CPUs)")
        for device, out in fields_by_device.items():
            k = len(out)
            if ref is not None:
                row = parity_row(out, ref[:k], truth[:k])
                results["parity"].append({"algo": algo, "device": device, "fields": k, **row})
        if ref is not None:
            results["parity"].append({"algo": algo, "device": "reference vs truth", "fields": n_pairs,
                                      "epe_truth": parity_row(ref, ref, truth)["epe_truth"]})

    if results["speed"]:
        print("\n| algo | backend | batch | fields/s | x OpenCV-cpu | GPU MiB/field |")
        print("|---|---|---:|---:|---:|---:|")
    for algo in algos:
        base = next((r["fields_per_s"] for r in results["speed"]
                     if r["algo"] == algo and r["backend"] == "opencv-cpu"), None)
        for r in (r for r in results["speed"] if r["algo"] == algo):
            mem = f"{r['mib_per_field']:.1f}" if r["mib_per_field"] is not None else "-"
            ratio = f"{r['fields_per_s'] / base:.2f}" if base else "-"
            print(f"| {algo} | {r['backend']} | {r['batch']} | {r['fields_per_s']:.2f} | {ratio} | {mem} |")
    if "tvl1" in algos and (args.model or "cuda" in devices):
        device = "cuda" if "cuda" in devices else "cpu"
        if device == "cpu":
            print("\n# counting the fused TV-L1's work on CPU (eager references of the kernels, ~5 s a pair)")
        stats = fused_stats(prev, nxt, device)
        copy_bw = copy_bandwidth() if device == "cuda" else None
        launch_s = launch_seconds() if device == "cuda" else None
        model = print_model(stats, batches, copy_bw, launch_s)
        results["model"] = {"copy_bandwidth": copy_bw, "launch_s": launch_s, "fields_per_s": model}
        if copy_bw:
            print(f"\nfused TV-L1 measured against the model at this GPU's copy bandwidth "
                  f"({copy_bw / 1e12:.2f} TB/s) and launch time ({launch_s * 1e6:.1f} us on the host per launch):")
            for r in results["speed"]:
                if r["backend"] == "torch-cuda-fused":
                    want = model["this GPU"][r["batch"]]
                    print(f"  batch {r['batch']}: measured {r['fields_per_s']:.0f} fields/s, model {want:.0f} "
                          f"({100 * r['fields_per_s'] / want:.0f}%)")
    if args.extract and "cuda" in devices:
        b = args.extract_batch or max(batches)
        ext = bench_extract_cli(args.extract, args.extract_frames, width, height, b, args.jobs, algos[0])
        kernel = max((r["fields_per_s"] for r in results["speed"]
                      if r["algo"] == algos[0] and r["backend"].startswith("torch-cuda") and r["batch"] <= b),
                     default=float("nan"))
        results["extract"] = {**ext, "kernel_fields_per_s": kernel, "batch": b, "jobs": args.jobs}
        print(f"\nend-to-end flowprep extract --device cuda ({algos[0]}, {ext['videos']} videos x "
              f"{args.extract_frames} frames, {ext['flows']} fields, batch {b}, {args.jobs} decode threads): "
              f"{ext['wall_fields_per_s']:.1f} fields/s over the whole command ({ext['wall_s']:.1f} s), "
              f"{ext['steady_fields_per_s']:.1f} without its fixed {ext['fixed_s']:.1f} s (start-up, CUDA, Triton); "
              f"summary {ext['summary_fields_per_s']:.1f}. Kernel rate at batch <= {b}: {kernel:.1f} fields/s -> "
              f"{100 * ext['steady_fields_per_s'] / kernel:.0f}% (target >= 70%)")
    if results["parity"]:
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
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
