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


def make_store(folder: Path, size: str) -> Path:
    from data_manifest import make_synthetic
    from flowprep.video.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    videos = make_synthetic(folder / "synth", classes=4, videos_per_class=6, frames=24)
    summary = extract(ExtractConfig(videos=videos, out=folder / "flows.h5", algo="farneback", jobs=2,
                                    resize=parse_size(size), progress=False))
    return Path(summary.store)


def bench_stream(store_path: str, stream: str, args) -> dict:
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
        "precision": args.precision})
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
    net = training.model
    del training.loader
    test_ids = subsets.test[:args.test_videos] if args.test_videos else subsets.test
    t0 = time.perf_counter()
    scores = score_subset(net, store, test_ids, subsets.labels, cfg, env)
    wall = time.perf_counter() - t0
    views = scores.logits.shape[0] * scores.logits.shape[1] * scores.logits.shape[2]
    return {"stream": stream, "arch": cfg.arch, "device": str(env.device), "input": cfg.input_size,
            "batch": cfg.batch_size, "precision": training.precision, "workers": cfg.workers,
            "train_samples_per_s": row["samples_per_s"], "step_s": row["batch_time"],
            "data_wait": row["data_wait"], "test_views": views, "test_views_per_s": views / wall,
            "test_data_wait": scores.data_wait,
            "ucf101_test_projected_min": UCF101_SPLIT1_VIEWS / (views / wall) / 60.0}


def bench_loader(store_path: str, stream: str, args) -> dict:
    """Data pipeline alone (read + decode + crop + resize, no model): samples/s of --workers processes."""
    from trainer.config import load_config
    from trainer.data import TrainViews, open_store, split_subsets, train_loader

    cfg = load_config(stream, overrides={"data": store_path, "input_size": args.input, "samples_per_video": 1000,
                                         "val_fraction": 0.0, "pretrained": "none"})
    store = open_store(cfg.data)
    subsets = split_subsets(store, cfg)
    dataset = TrainViews(store, subsets.train, subsets.labels, cfg)
    loader, sampler = train_loader(dataset, args.batch, 1, 0, 0, args.workers, pin=False)
    sampler.set_epoch(0)
    batches = iter(loader)
    for _ in range(args.warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        next(batches)
    rate = args.iters * args.batch / (time.perf_counter() - t0)
    return {"stream": stream, "input": cfg.input_size, "workers": args.workers, "samples_per_s": rate,
            "ms_per_sample_per_process": 1000.0 * max(args.workers, 1) / rate}


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
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            t0 = time.perf_counter()
            data = str(make_store(Path(tmp), args.size))
            print(f"synthetic store {args.size}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.loader_only:
            results = [bench_loader(data, s, args) for s in args.streams.split(",")]
            for r in results:
                print(f"{r['stream']:9} input {r['input']}: {r['samples_per_s']:.0f} samples/s with "
                      f"{r['workers']} worker(s) = {r['ms_per_sample_per_process']:.2f} ms per sample per process")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            return
        results = [bench_stream(data, s, args) for s in args.streams.split(",")]
    print(f"{'stream':9} {'arch':10} {'device':7} {'in':>4} {'batch':>5} {'samples/s':>9} {'step s':>7} "
          f"{'wait%':>6} {'views/s':>8} {'UCF101 test (min)':>17}")
    for r in results:
        print(f"{r['stream']:9} {r['arch']:10} {r['device']:7} {r['input']:>4} {r['batch']:>5} "
              f"{r['train_samples_per_s']:>9.1f} {r['step_s']:>7.3f} {100 * r['data_wait']:>6.1f} "
              f"{r['test_views_per_s']:>8.1f} {r['ucf101_test_projected_min']:>17.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
