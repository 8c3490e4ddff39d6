"""Flow quality and speed of every flow flowprep computes, against rendered scenes with exactly known motion.

    python benchmarks/bench_flow_quality.py                  # the 20 scenes of flowprep.flow.scenes at 340x256
    python benchmarks/bench_flow_quality.py --quick          # 6 of them (one per kind of difficulty)
    python benchmarks/bench_flow_quality.py --raft-weights-small raft_small.pth --raft-weights-large raft_large.pth \
        --json quality.json

Scenes (flowprep.flow.scenes): translations from 0.4 px to 24.5 px (beyond the quantisation bound of 20 px),
rotations, zooms, two occluding objects over a differently moving background, smooth / fine / flat /
sharp-edged textures, and noise and JPEG variants; each frame is sampled from a continuous scene, so the
true flow is what the frames show. Flows: OpenCV TV-L1 and Farneback (opencv and torch backends), DIS
presets ultrafast / fast / medium, and RAFT small / large through torchvision, when weights are present
(--raft-weights-*, or the torch cache). Without weights a RAFT row says so, and its speed is measured
with randomly initialised weights (the same computation; the flow is meaningless and not scored).

Per flow: mean end-point error (EPE) over all pixels and over those visible in both frames (noc: not
occluded, not leaving the frame, not on an object's rim), the share of pixels within 1 px, the EPE on
occluded pixels (occlusion scenes), the EPE that quantising to uint8 at bound 20 adds, and fields/s on
this machine, also as a ratio to OpenCV TV-L1 timed in the same run. Scenes count equally in the means.
Speed is per core by default (--threads 1 for OpenCV and torch), as `flowprep extract` runs each job on
one core; it is timed in rounds, every flow in turn on the same pairs, and the median round is reported,
so a burst of load on a shared machine does not fall on one flow only. OpenCV runs one pair at a time
(as extraction does); the torch backends and RAFT run batches of --batch pairs. On CPU, torch TV-L1
(bit-identical to OpenCV's there, and slower) is scored on 3 scenes only (1 with --quick) and compared
with OpenCV's flow. Prints markdown tables; --json writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowprep.flow import scenes  # noqa: E402
from flowprep.errors import FlowprepError  # noqa: E402
from flowprep.flow.quantize import dequantize, quantize  # noqa: E402

BOUND = 20.0
# Entries scored on only this many of the --quick scenes when run on CPU (torch TV-L1: bit-identical to
# OpenCV's on CPU, see docs/torchflow.md, and slower; the row gives the largest difference to OpenCV's flow);
# with --quick on one
SLOW_ON_CPU = {"tvl1_torch": 3}


@dataclass
class Entry:
    """One flow to measure: a key, a label for the table, how it is computed."""

    key: str
    label: str
    backend: str
    algo: str
    params: dict[str, Any] = field(default_factory=dict)


ENTRIES = [
    Entry("tvl1", "TV-L1", "opencv", "tvl1"),
    Entry("tvl1_torch", "TV-L1", "torch", "tvl1"),
    Entry("farneback", "Farneback", "opencv", "farneback"),
    Entry("farneback_torch", "Farneback", "torch", "farneback"),
    Entry("dis_ultrafast", "DIS ultrafast", "opencv", "dis", {"preset": "ultrafast"}),
    Entry("dis_fast", "DIS fast", "opencv", "dis", {"preset": "fast"}),
    Entry("dis_medium", "DIS medium", "opencv", "dis", {"preset": "medium"}),
    Entry("raft_small", "RAFT small", "torch", "raft", {"model": "small"}),
    Entry("raft_large", "RAFT large", "torch", "raft", {"model": "large"}),
]


def batched(fn: Callable, batch: int) -> Callable:
    """(B, H, W) uint8 pairs -> (B, H, W, 2) float32 numpy, ``fn`` called on chunks of ``batch`` pairs."""
    def run(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        out = [np.asarray(fn(prev[i:i + batch], nxt[i:i + batch])) for i in range(0, len(prev), batch)]
        return np.concatenate(out)
    return run


def flow_function(entry: Entry, args, raft_file: str) -> Callable:
    """A function (B, H, W) uint8 pairs -> (B, H, W, 2) float32 numpy computing ``entry``'s flow."""
    if entry.backend == "opencv":
        from flowprep.flow.compute import OpenCVFlow

        flow = OpenCVFlow(entry.algo, **entry.params)  # one object reused across pairs, as extraction does
        return lambda prev, nxt: np.stack([flow(a, b) for a, b in zip(prev, nxt)])
    if entry.algo == "raft":
        from flowprep.flow.torchflow.raft import raft_flow

        def fn(p, n):
            return raft_flow(p, n, model=entry.params["model"], iterations=args.raft_iterations, weights=raft_file,
                             device=args.device).cpu().numpy()
        return batched(fn, args.batch)
    from flowprep.flow.compute import compute_flow_batch

    return batched(lambda p, n: compute_flow_batch(p, n, algo=entry.algo, device=args.device, **entry.params),
                   args.batch)


def seconds_per_field(fn: Callable, prev: np.ndarray, nxt: np.ndarray, min_seconds: float) -> float:
    """Seconds per field of ``fn`` on these pairs, run again until ``min_seconds`` have passed (so the
    fast flows are timed over more than a few milliseconds). Flows come back to the host, so CUDA work
    is finished when the clock stops."""
    runs = 0
    start = time.perf_counter()
    while True:
        fn(prev, nxt)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / (runs * len(prev))


def scene_metrics(est: np.ndarray, frames: scenes.Frames) -> dict[str, float]:
    """Errors of one (H, W, 2) flow against a scene's truth, pixels."""
    epe = np.linalg.norm(est - frames.flow, axis=-1)
    est_q = dequantize(quantize(est, BOUND), BOUND)
    epe_q = np.linalg.norm(est_q - frames.flow, axis=-1)
    occluded = frames.occluded & ~frames.outside
    return {"epe": float(epe.mean()), "epe_noc": float(epe[frames.valid].mean()),
            "within1": float((epe <= 1.0).mean()),
            "epe_occ": float(epe[occluded].mean()) if occluded.any() else None,
            "u8_added": float(epe_q.mean() - epe.mean())}


def truth_quantisation(frames: scenes.Frames) -> float:
    """EPE of the true flow quantised to uint8 at bound 20 and back."""
    q = dequantize(quantize(frames.flow, BOUND), BOUND)
    return float(np.linalg.norm(q - frames.flow, axis=-1).mean())


def raft_weights(model: str, given: str) -> tuple[str, str]:
    """(weights file or "", why not) for RAFT ``model``: the given file, else the torch cache."""
    from flowprep.flow.torchflow.raft import RaftWeightsError, weights_file

    try:
        return str(weights_file(model, given)), ""
    except RaftWeightsError as exc:
        return "", " ".join(str(exc).split())


def random_raft_file(model: str, tmp: str) -> str:
    """A randomly initialised RAFT saved to ``tmp``, to time RAFT where no trained weights exist."""
    import torch
    from torchvision.models import optical_flow

    torch.manual_seed(0)
    path = os.path.join(tmp, f"raft_{model}_random.pth")
    torch.save(getattr(optical_flow, f"raft_{model}")(weights=None).state_dict(), path)
    return path


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def run(args) -> dict:
    names = args.scenes.split(",") if args.scenes else list(scenes.QUICK if args.quick else scenes.SCENES)
    unknown = [n for n in names if n not in scenes.SCENES]
    if unknown:
        sys.exit(f"unknown scene {unknown[0]!r}; known: {', '.join(scenes.SCENES)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    rendered = {n: scenes.render(scenes.SCENES[n], height, width) for n in names}
    prev = np.stack([f.prev for f in rendered.values()])
    nxt = np.stack([f.nxt for f in rendered.values()])
    clipped = {n: bool(np.abs(f.flow).max() > BOUND) for n, f in rendered.items()}
    keys = args.algos.split(",") if args.algos else [e.key for e in ENTRIES]
    results: dict[str, dict] = {}
    functions: dict[str, Callable] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. accuracy: every flow on every scene (torch TV-L1 on CPU on a subset, see SLOW_ON_CPU)
        for entry in (e for e in ENTRIES if e.key in keys):
            row: dict[str, Any] = {"label": entry.label, "backend": entry.backend, "algo": entry.algo,
                                   "params": dict(entry.params), "note": ""}
            results[entry.key] = row
            weights, scored = "", True
            if entry.algo == "raft":
                model = entry.params["model"]
                row["params"]["iterations"] = args.raft_iterations
                weights, why = raft_weights(model, getattr(args, f"raft_weights_{model}"))
                if not weights:
                    scored = False
                    row["note"] = f"weights not available: {why}"
                    weights = random_raft_file(model, tmp)
            print(f"# {entry.key}: accuracy ...", file=sys.stderr, flush=True)
            try:
                fn = flow_function(entry, args, weights)
                fn(prev[:1], nxt[:1])  # imports, model loading, first allocations: not timed
            except (FlowprepError, ImportError) as exc:
                row["note"] = f"failed: {exc}"
                continue
            functions[entry.key] = fn
            if not scored:
                continue
            subset = names
            if entry.key in SLOW_ON_CPU and args.device == "cpu" and not args.scenes:
                subset = [n for n in names if n in scenes.QUICK][:1 if args.quick else SLOW_ON_CPU[entry.key]]
            idx = [names.index(n) for n in subset]
            flows = fn(prev[idx], nxt[idx])
            row["scenes"] = {n: scene_metrics(f, rendered[n]) for n, f in zip(subset, flows)}
            for m in ("epe", "epe_noc", "within1", "epe_occ"):
                row[m] = mean([sc[m] for sc in row["scenes"].values()])
            # what quantising adds, apart on the scenes whose true flow the bound clips
            row["u8_added"] = mean([sc["u8_added"] for n, sc in row["scenes"].items() if not clipped[n]])
            row["u8_added_clipped"] = mean([sc["u8_added"] for n, sc in row["scenes"].items() if clipped[n]])
            groups: dict[str, list] = {}
            for n in subset:
                groups.setdefault(rendered[n].scene.group, []).append(row["scenes"][n]["epe"])
            row["groups"] = {g: float(np.mean(v)) for g, v in groups.items()}
            if subset != names:
                reference = results.get("tvl1", {}).get("flows")
                diff = (float(np.abs(flows - reference[idx]).max()) if reference is not None else None)
                row["note"] = (f"scored on {len(subset)} of the {len(names)} scenes ({', '.join(subset)}) to save "
                               "time on CPU" + (f"; max |flow - OpenCV TV-L1's| on them: {diff:.2g} px"
                                                if diff is not None else ""))
                row["max_diff_opencv"] = diff
            row["flows"] = flows if entry.key == "tvl1" else None
        # 2. speed: rounds in which every flow runs the same pairs in turn, so that a burst of load from
        # other users of the machine hits all of them alike; the median over rounds is reported
        k = min(args.speed_pairs, len(names))
        speed_idx = list(range(0, len(names), max(1, len(names) // k)))[:k]  # spread over the kinds of scene
        per_round: dict[str, list[float]] = {key: [] for key in functions}
        for r in range(args.speed_rounds):
            print(f"# speed round {r + 1}/{args.speed_rounds} ...", file=sys.stderr, flush=True)
            for key, fn in functions.items():
                per_round[key].append(seconds_per_field(fn, prev[speed_idx], nxt[speed_idx], args.min_seconds))
    for key, times in per_round.items():
        results[key]["fields_per_s"] = 1.0 / float(np.median(times))
        if "tvl1" in per_round:
            results[key]["vs_tvl1"] = float(np.median([t0 / t for t0, t in zip(per_round["tvl1"], times)]))
        results[key]["seconds_per_round"] = times
    for row in results.values():
        row.pop("flows", None)
    import cv2
    import torch

    return {"size": [width, height], "speed_pairs": [names[i] for i in speed_idx], "threads": args.threads,
            "speed_rounds": args.speed_rounds,
            "scenes": {n: {"group": fr.scene.group, "description": fr.scene.description,
                           "truth_u8_epe": truth_quantisation(fr), "beyond_bound": clipped[n]}
                       for n, fr in rendered.items()},
            "results": results, "batch": args.batch, "device": args.device,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "cv2_threads": cv2.getNumThreads(), "python": platform.python_version(),
                        "torch": torch.__version__, "opencv": cv2.__version__, "processor": platform.processor()}}


def fmt(v: float | None, digits: int = 2, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"


def speed(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def tables(report: dict) -> str:
    """The markdown tables and the notes under them."""
    w, h = report["size"]
    results, names = report["results"], list(report["scenes"])
    threads = ("per core (1 OpenCV and 1 torch thread)" if report["threads"] == 1 else
               f"with {report['machine']['cv2_threads']} OpenCV and {report['machine']['torch_threads']} torch threads")
    lines = [f"Flow against known motion: {len(names)} rendered scenes at {w}x{h} (flowprep.flow.scenes); EPE in px, "
             f"scenes weighted equally; fields/s on this machine, {threads}.", "",
             "| flow | backend | EPE all | EPE noc | <= 1 px | EPE occluded | u8 adds | u8 adds, > 20 px "
             "| fields/s | x TV-L1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        label = r["label"] + (f" ({r['params']['iterations']} it.)" if r["algo"] == "raft" else "")
        if r.get("max_diff_opencv") == 0:  # scored on a subset, where it gave OpenCV's flow exactly
            cells = ["= opencv *"] + [""] * 5
        elif "epe" in r:
            mark = " *" if len(r["scenes"]) < len(names) else ""
            cells = [fmt(v, d, p) + mark if v is not None else "-" for v, d, p in (
                (r["epe"], 2, False), (r["epe_noc"], 2, False), (r["within1"], 2, True), (r["epe_occ"], 2, False),
                (r["u8_added"], 3, False), (r["u8_added_clipped"], 2, False))]
        else:
            cells = [r["note"].split(":")[0] if r["note"] else "-"] + [""] * 5
        lines.append(f"| {label} | {r['backend']} | " + " | ".join(cells)
                     + f" | {speed(r.get('fields_per_s'))} | {fmt(r.get('vs_tvl1'), 2) if r.get('vs_tvl1') else '-'} |")
    inside = [s["truth_u8_epe"] for s in report["scenes"].values() if not s["beyond_bound"]]
    beyond = {n: s["truth_u8_epe"] for n, s in report["scenes"].items() if s["beyond_bound"]}
    lines += ["", "Quantisation to uint8 at bound 20 (u8 = floor(255 (v + 20) / 40 + 0.5), then back: steps of "
              f"40/255 = 0.157 px) moves the true flow by {np.mean(inside):.3f} px on average on the scenes "
              "whose motion stays within +-20 px"
              + "".join(f", and by {v:.2f} px on {n}, whose motion the bound clips" for n, v in beyond.items())
              + ". 'u8 adds' is what it adds to each flow's EPE (all pixels) on the former scenes, "
              "'u8 adds, > 20 px' on the latter."]
    lines.append(f"Speed: median of {report['speed_rounds']} rounds over the same {len(report['speed_pairs'])} pairs "
                 f"({', '.join(report['speed_pairs'])}), every flow in turn in each round; the ratio to TV-L1 "
                 f"(opencv) is taken within each round. Torch backends and RAFT: batches of {report['batch']} "
                 f"on {report['device']}.")
    for key, r in results.items():
        if r["note"]:
            lines.append(f"- {r['label']} ({r['backend']}){' *' if r.get('max_diff_opencv') is not None else ''}: "
                         f"{r['note']}"
                         + ("; fields/s measured with randomly initialised weights (same computation)"
                            if r["note"].startswith("weights not available") and r.get("fields_per_s") else ""))
    groups = list(dict.fromkeys(s["group"] for s in report["scenes"].values()))
    lines += ["", "EPE (all pixels, px) by kind of scene:", "",
              "| flow | backend | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for r in results.values():
        if "groups" in r and len(r["scenes"]) == len(names):
            lines.append(f"| {r['label']} | {r['backend']} | "
                         + " | ".join(fmt(r["groups"].get(g)) for g in groups) + " |")
    return "\n".join(lines)


def per_scene_table(report: dict) -> str:
    scored = {k: r for k, r in report["results"].items() if "scenes" in r}
    lines = ["| scene | " + " | ".join(f"{r['label']} {r['backend']}" for r in scored.values()) + " |",
             "|---|" + "---|" * len(scored)]
    for n in report["scenes"]:
        lines.append(f"| {n} | " + " | ".join(fmt(r["scenes"][n]["epe"]) if n in r["scenes"] else "-"
                                             for r in scored.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"only the scenes {', '.join(scenes.QUICK)}; one speed round; torch TV-L1 on CPU on one")
    ap.add_argument("--scenes", default="", help="comma-separated scene names (default: all, or --quick's)")
    ap.add_argument("--algos", default="", help="comma-separated keys among " + ", ".join(e.key for e in ENTRIES))
    ap.add_argument("--size", default="340x256", help="WIDTHxHEIGHT (default 340x256, the two-stream size)")
    ap.add_argument("--batch", type=int, default=4, help="pairs per call for the torch backends and RAFT")
    ap.add_argument("--device", default="cpu", help="device of the torch backends and RAFT (cpu or cuda)")
    ap.add_argument("--raft-weights-small", default="", help="raft_small weights file (default: the torch cache)")
    ap.add_argument("--raft-weights-large", default="", help="raft_large weights file (default: the torch cache)")
    ap.add_argument("--raft-iterations", type=int, default=12, help="RAFT's recurrent updates (default 12)")
    ap.add_argument("--speed-pairs", type=int, default=4, help="pairs timed per flow and round (default 4)")
    ap.add_argument("--speed-rounds", type=int, default=0,
                    help="timing rounds; the median is reported (default 3, with --quick 1)")
    ap.add_argument("--min-seconds", type=float, default=0.5,
                    help="shortest timing of a flow in a round; fast flows repeat the pairs (default 0.5)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenCV and torch CPU threads (default 1: fields/s per core; 0: the libraries' defaults)")
    ap.add_argument("--per-scene", action="store_true", help="also print the EPE of every scene")
    ap.add_argument("--json", default="", help="also write everything, per scene, to this JSON file")
    args = ap.parse_args(argv)
    args.speed_rounds = args.speed_rounds or (1 if args.quick else 3)
    if args.threads:
        import cv2
        import torch

        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run(args)
    report["wall_s"] = time.perf_counter() - start
    print(tables(report))
    if args.per_scene:
        print("\n" + per_scene_table(report))
    print(f"\n({report['wall_s']:.0f} s in all; {report['machine']['cpus']} CPUs, shared: speeds are of this run)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
