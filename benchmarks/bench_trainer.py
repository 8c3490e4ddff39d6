"""Trainer throughput: training samples/s and data-wait share per stream, and test views/s.

    python benchmarks/bench_trainer.py                      # CPU: resnet18 at 112 px on a synthetic store
    python benchmarks/bench_trainer.py --data flows.h5 --device cuda --arch resnet101 --batch 128 \
        --input 224 --workers 12                            # GPU: bf16 autocast, channels_last

Without --data a small synthetic store is made first (Farneback flow, frames at --size, default 340x256,
the paper's frame size, so JPEG decoding and cropping cost what they cost on UCF101). Figures printed:
samples/s, step time, data-wait share (time blocked on the DataLoader / step time), test views/s and the
UCF101 split-1 protocol projected from it (3,783 videos x 25 frames x 10 crops = 945,750 views).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

UCF101_SPLIT1_VIEWS = 3783 * 25 * 10
TARGET_RATE = 2500  # samples/s that one H100 trains ResNet-101 at (bf16, channels_last): what the loader must feed


def make_store(folder: Path, size: str) -> Path:
    from data_manifest import make_synthetic
    from flowprep.video.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    videos = make_synthetic(folder / "synth", classes=4, videos_per_class=6, frames=24)
    summary = extract(ExtractConfig(videos=videos, out=folder / "flows.h5", algo="farneback", jobs=2,
                                    resize=parse_size(size), progress=False))
    return Path(summary.store)


def bench_stream(store_path: str, stream: str, decode: str, args) -> dict:
    from trainer.config import load_config
    from trainer.data import open_store, split_subsets
    from trainer.distributed import setup
    from trainer.evaluation import score_subset
    from trainer.train import build_training, train_one_epoch

    cfg = load_config(stream, overrides={
        "data": store_path, "arch": args.arch, "pretrained": "none", "input_size": args.input,
        "batch_size": args.batch, "micro_batch": args.micro or 0, "workers": args.workers, "device": args.device,
        "schedule": "cosine", "epochs": 1, "samples_per_video": 1000, "val_fraction": 0.0, "lr": 1e-3,
        "test_frames": args.test_frames, "test_batch": args.test_batch, "compile": args.compile,
        "precision": args.precision, "decode": decode})
    env = setup(cfg.device)
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    # as `trainer run` builds it: channels_last (channels_last_3d for clips), bf16 autocast on CUDA, ...
    training = build_training(cfg, env, store, subsets, state=None)
    # warm-up (allocator, cuDNN autotuning, worker start), then the measured iterations
    training.plan.max_iters = args.warmup
    train_one_epoch(training, cfg, env, 0, 0, progress=False)
    training.plan.max_iters = args.iters
    row, _ = train_one_epoch(training, cfg, env, 1, 0, progress=False)
    net, decode = training.model, training.loader.dataset.decode
    del training.loader
    test_ids = subsets.test[:args.test_videos] if args.test_videos else subsets.test
    t0 = time.perf_counter()
    scores = score_subset(net, store, test_ids, subsets.labels, cfg, env)
    wall = time.perf_counter() - t0
    views = scores.logits.shape[0] * scores.logits.shape[1] * scores.logits.shape[2]
    return {"stream": stream, "decode": decode, "arch": cfg.arch, "device": str(env.device),
            "input": cfg.input_size,
            "batch": cfg.batch_size, "precision": training.precision, "workers": cfg.workers,
            "train_samples_per_s": row["samples_per_s"], "step_s": row["batch_time"],
            "data_wait": row["data_wait"], "test_views": views, "test_views_per_s": views / wall,
            "test_data_wait": scores.data_wait,
            "ucf101_test_projected_min": UCF101_SPLIT1_VIEWS / (views / wall) / 60.0}


class _Stamped:
    """TrainViews whose batches carry the worker's id and its process CPU time when the batch was begun:
    the differences between one worker's stamps are its CPU time per batch (reading, decoding, cropping,
    and handing the previous batch over), idle waits excluded."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __getitems__(self, keys):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return self.inner.__getitems__(keys), info.id if info else -1, time.process_time()


def item_costs(dataset, keys: list, repeat: int = 3) -> dict:
    """In-process CPU ms per sample (one thread): decode = cpu samples (read, decode, crop, resize, mirror),
    and the same samples' stored JPEGs decoded alone, by cv2.imdecode (the decode = cpu decoder) and by
    torchvision's decode_jpeg on a list (what decode = device calls)."""
    import cv2
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from trainer import transforms as T

    jpegs = [dataset._sample(key, dataset._jpegs)[1] for key in keys]  # the bytes each sample decodes
    tensors = [torch.from_numpy(image) for images in jpegs for image in images]
    flags = cv2.IMREAD_COLOR if dataset.kind == "rgb" else cv2.IMREAD_GRAYSCALE
    mode = ImageReadMode.RGB if dataset.kind == "rgb" else ImageReadMode.GRAY
    best_decode = best_item = best_tv = float("inf")
    out = np.zeros((len(keys), *dataset._shape()), np.uint8)
    for _ in range(repeat):  # the best of a few passes: this machine's other load only adds time
        t0 = time.process_time()
        for images in jpegs:
            for image in images:
                cv2.imdecode(image, flags)
        best_decode = min(best_decode, time.process_time() - t0)
        t0 = time.process_time()
        decode_jpeg(tensors, mode=mode)
        best_tv = min(best_tv, time.process_time() - t0)
        t0 = time.process_time()
        for b, key in enumerate(keys):  # TrainViews.__getitems__'s work, into a batch already paged in, as a
            _, fields, box, _, flipped = dataset._sample(key, dataset._pixels)  # worker's reused batch is
            T.crop_resize_fields(fields, box, dataset.size, flipped, dataset.clip, out=out[b], bgr=dataset._bgr)
        best_item = min(best_item, time.process_time() - t0)
    n = len(keys)
    return {"item_cpu_ms_per_sample": 1000 * best_item / n, "decode_only_cpu_ms_per_sample": 1000 * best_decode / n,
            "item_over_decode": best_item / max(best_decode, 1e-9),
            "decode_only_torchvision_cpu_ms_per_sample": 1000 * best_tv / n,
            "jpeg_bytes_per_sample": sum(len(image) for images in jpegs for image in images) / n}


def bench_loader(store_path: str, stream: str, decode: str, args) -> dict:
    """Data pipeline alone (no model): samples/s of --workers processes, and the CPU time it costs.

    worker_cpu_ms_per_sample: the workers' process CPU time per sample (stamped in the workers);
    main_cpu_ms_per_sample: the main process's CPU time per sample to receive the batches (unpickling,
    shared-memory mapping, pinning) and hand them to the device (network_input), counted only where the
    device is a GPU: on a CPU device that step is the device's work (decoding, with decode = device), given
    apart as device_cpu_ms_per_sample.
    """
    import torch

    from trainer.config import load_config
    from trainer.data import TrainViews, open_store, split_subsets, train_loader
    from trainer.device_decode import network_input

    cfg = load_config(stream, overrides={"data": store_path, "input_size": args.input, "samples_per_video": 1000,
                                         "val_fraction": 0.0, "pretrained": "none", "decode": decode})
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    dataset = TrainViews(store, subsets.train, subsets.labels, cfg, decode)
    loader, sampler = train_loader(_Stamped(dataset), args.batch, 1, 0, 0, args.workers, pin=device.type == "cuda")
    sampler.set_epoch(0)
    batches = iter(loader)
    stamps: dict[int, list[float]] = {}
    device_cpu = 0.0
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            t0, cpu0 = time.perf_counter(), time.process_time()
            device_cpu = 0.0
        batch, worker, stamp = next(batches)
        if i >= args.warmup - 1:  # the stamp before the first measured batch starts each worker's count
            stamps.setdefault(worker, []).append(stamp)
        t_dev = time.thread_time()
        x, _ = network_input(batch, dataset, device)
        device_cpu += time.thread_time() - t_dev
        if device.type == "cuda":  # outside the timed part: a synchronize spins on the CPU
            torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    del batches, loader
    per_worker = [(s[-1] - s[0]) / (len(s) - 1) for s in stamps.values() if len(s) > 1]  # CPU s per batch
    worker_ms = 1000.0 * sum(per_worker) / len(per_worker) / args.batch if per_worker else float("nan")
    if args.workers == 0:  # loaded in this process: its whole CPU time
        worker_ms = 1000.0 * (cpu - device_cpu) / (args.iters * args.batch)
    samples = args.iters * args.batch
    main_ms = 1000.0 * (cpu - device_cpu) / samples if args.workers else 0.0
    device_ms = 1000.0 * device_cpu / samples
    if device.type == "cuda":  # the decode call and the kernel launches are this process's CPU
        main_ms, device_ms = main_ms + device_ms, 0.0
    row = {"stream": stream, "decode": decode, "device": str(device), "input": cfg.input_size,
           "codec": store.attrs.get("codec"), "workers": args.workers, "batch": args.batch,
           "samples_per_s": samples / wall, "worker_cpu_ms_per_sample": worker_ms, "main_cpu_ms_per_sample": main_ms,
           "device_cpu_ms_per_sample": device_ms,
           "cores_for_2500_per_s": TARGET_RATE * (worker_ms + main_ms) / 1000.0}
    if decode == "cpu":
        keys = [(0, i) for i in range(min(args.item_samples, len(dataset)))]
        row.update(item_costs(dataset, keys))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="flow store (default: a synthetic one made in a temporary folder)")
    p.add_argument("--size", default="340x256", help="frame size of the synthetic store")
    p.add_argument("--streams", default="spatial,temporal")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input", type=int, default=112)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--test-frames", type=int, default=25)
    p.add_argument("--test-batch", type=int, default=250)
    p.add_argument("--test-videos", type=int, default=4, help="test videos to time (0 = all)")
    p.add_argument("--loader-only", action="store_true", help="time the data pipeline alone (no model)")
    p.add_argument("--decode", default="cpu,device", help="decode modes to compare, in one run")
    p.add_argument("--item-samples", type=int, default=32, help="samples of the in-process item timing")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            t0 = time.perf_counter()
            data = str(make_store(Path(tmp), args.size))
            print(f"synthetic store {args.size}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.loader_only:
            import cv2
            import torch

            cv2.setNumThreads(1)  # as in the workers: the figures are per core
            torch.set_num_threads(1)
            results = [bench_loader(data, s, d, args) for s in args.streams.split(",") for d in args.decode.split(",")]
            print(f"{'stream':9} {'decode':6} {'codec':7} {'in':>4} {'samples/s':>9} {'worker ms':>9} {'main ms':>7} "
                  f"{'dev ms':>6} {'cores@2500/s':>12}  (CPU ms per sample; workers {args.workers})")
            for r in results:
                print(f"{r['stream']:9} {r['decode']:6} {r['codec']:7} {r['input']:>4} {r['samples_per_s']:>9.0f} "
                      f"{r['worker_cpu_ms_per_sample']:>9.2f} {r['main_cpu_ms_per_sample']:>7.2f} "
                      f"{r['device_cpu_ms_per_sample']:>6.2f} {r['cores_for_2500_per_s']:>12.1f}")
            for r in results:
                if "item_cpu_ms_per_sample" in r:
                    print(f"{r['stream']:9} cpu item in one process: {r['item_cpu_ms_per_sample']:.2f} ms, its "
                          f"{r['jpeg_bytes_per_sample'] / 1000:.0f} kB of JPEGs ({r['codec']}) decoded alone "
                          f"{r['decode_only_cpu_ms_per_sample']:.2f} ms by OpenCV ({r['item_over_decode']:.2f}x), "
                          f"{r['decode_only_torchvision_cpu_ms_per_sample']:.2f} ms by torchvision")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            return
        results = [bench_stream(data, s, d, args) for s in args.streams.split(",") for d in args.decode.split(",")]
    print(f"{'stream':9} {'decode':6} {'arch':10} {'device':7} {'in':>4} {'batch':>5} {'samples/s':>9} {'step s':>7} "
          f"{'wait%':>6} {'views/s':>8} {'UCF101 test (min)':>17}")
    for r in results:
        print(f"{r['stream']:9} {r['decode']:6} {r['arch']:10} {r['device']:7} {r['input']:>4} {r['batch']:>5} "
              f"{r['train_samples_per_s']:>9.1f} {r['step_s']:>7.3f} {100 * r['data_wait']:>6.1f} "
              f"{r['test_views_per_s']:>8.1f} {r['ucf101_test_projected_min']:>17.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
