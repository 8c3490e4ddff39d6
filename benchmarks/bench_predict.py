"""`fusion predict` per-video time: decode, flow, each stream, fusion, on one synthetic video.

    python benchmarks/bench_predict.py                                   # the demo's size: 64x48 TV-L1, demo views
    python benchmarks/bench_predict.py --video 320x240 --seconds 10 --size 340x256 --arch resnet101 \
        --input 224 --flow-length 10 --views 25x10 --classes 101         # the paper's protocol (GPU target: < 1 s)

Models need no training for a timing: two checkpoints with random weights are written the way `trainer run`
writes them (config, classes, the flow settings of a store made with --algo at --size), and the video is a
synthetic clip (`data-manifest synth`'s motion) of --seconds at 25 fps and --video size. Each repeat predicts
the video afresh (decode, flow, views); the first repeat also warms up (cuDNN autotuning, Triton kernels)
and is reported apart from the mean of the others.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STREAMS = ("spatial", "temporal")


def make_video(path: Path, size: tuple[int, int], frames: int) -> Path:
    import cv2

    from data_manifest.synth import render_video

    clip = render_video("SpinClockwise", np.random.default_rng(0), frames, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    for frame in clip:
        writer.write(frame)
    writer.release()
    return path


def make_runs(runs: Path, args) -> None:
    """runs/{spatial,temporal}-split1/checkpoint_best.pt with random weights and the flow settings of a store
    extracted with --algo at --size (what `trainer run` records)."""
    from flowprep.flow.params import resolve_params
    from flowprep.settings import RunSettings
    from flowprep.video.decode import parse_size
    from trainer.checkpoint import save_checkpoint
    from trainer.config import load_config
    from trainer.models import build_model

    flow = RunSettings(args.algo, resolve_params(args.algo, {}, "opencv"), "opencv", "cpu",
                       resize=parse_size(args.size)).recorded()
    frames, crops = (int(x) for x in args.views.split("x"))
    classes = [f"class{i:03d}" for i in range(args.classes)]
    for stream in STREAMS:
        cfg = load_config(stream, overrides={"arch": args.arch, "pretrained": "none", "input_size": args.input,
                                             "flow_length": args.flow_length, "test_frames": frames,
                                             "test_crops": crops, "out": str(runs), "device": args.device})
        model, init = build_model(cfg, len(classes), warn=False)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(cfg.run_dir / "checkpoint_best.pt", {
            "kind": "best", "model": model.state_dict(), "epoch": 1, "iteration": 1, "config": cfg.to_dict(),
            "derived": cfg.derived(), "classes": classes, "best": {}, "init": init, "flow": flow})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default="160x120", help="synthetic video size WxH (default 160x120, the demo's)")
    p.add_argument("--seconds", type=float, default=0.96, help="video length at 25 fps (default: the demo's 24 frames)")
    p.add_argument("--size", default="64x48", help="the training store's frame size (default 64x48, the demo's)")
    p.add_argument("--algo", default="tvl1", choices=("tvl1", "farneback", "dis"))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input", type=int, default=48, help="network input side (demo: 48)")
    p.add_argument("--flow-length", type=int, default=5, help="L (demo: 5)")
    p.add_argument("--views", default="10x5", help="FRAMESxCROPS the runs were tested with (demo: 10x5)")
    p.add_argument("--predict-views", default="test", help="--views of fusion predict: test, fast or FxK")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from fusion.predict import Predictor, PredictOptions, format_result

    w, h = (int(x) for x in args.video.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = make_video(tmp / "clip.avi", (w, h), max(2, int(round(args.seconds * 25))))
        make_runs(tmp / "runs", args)
        t = time.perf_counter()
        predictor = Predictor(PredictOptions(paths=(str(video),), runs=str(tmp / "runs"), views=args.predict_views,
                                             device=args.device))
        print(f"models loaded in {time.perf_counter() - t:.2f} s")
        for line in predictor.describe():
            print(line)
        totals = []
        for k in range(args.repeats):
            result, _ = predictor.predict(video)
            if result.error:
                print(result.error)
                return 1
            print(f"repeat {k + 1}{' (warm-up)' if k == 0 and args.repeats > 1 else ''}:")
            for line in format_result(result)[-1:]:
                print(line)
            totals.append(result.seconds)
        keep = totals[1:] or totals
        mean = {key: float(np.mean([s.get(key, 0.0) for s in keep])) for key in keep[0]}
        print(f"{args.video} video, {args.seconds:g} s, {args.algo} at {args.size}, {args.arch} at {args.input} px, "
              f"views {args.predict_views} ({args.views} tested), {predictor.env.device}: "
              f"mean of {len(keep)} repeat(s): "
              + ", ".join(f"{k} {v:.3f} s" for k, v in mean.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
