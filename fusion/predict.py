"""`fusion predict`: the trained two-stream model of a split on new video files, in one command.

Per video: decode and make its frames and flow exactly as the training store's (fusion.predict_source),
cut the views with the trainer's own test code (trainer.data.VideoFrames, trainer.evaluation.video_logits),
views -> video and fuse as the split's fusion report chose (fusion.aggregate, fusion.combine), and print the
top-5 with a time breakdown. A video that cannot be used gets its own error; the others are still predicted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fusion import combine
from fusion.aggregate import aggregate, video_probabilities
from fusion.errors import PredictError
from fusion.predict_models import Stream, default_checkpoints, load_stream, parse_views, read_fusion
from plumbing.ranking import ranked

TOP = 5
STREAMS = ("spatial", "temporal")


@dataclass(frozen=True)
class PredictOptions:
    """What `fusion predict` is asked to do (the command's options)."""

    paths: tuple[str, ...]
    split: int = 1
    runs: str = "runs"
    checkpoints: dict[str, str] = field(default_factory=dict)  # stream -> checkpoint given on the command line
    store: str | None = None  # read the flow settings of checkpoints that lack them from this store
    report: str | None = None  # default RUNS/fusion-split{k}/report.json
    method: str | None = None
    weights: tuple[float, ...] | None = None
    aggregation: str | None = None
    views: str = "test"
    device: str = "auto"
    json: str | None = None
    show: str | None = None


@dataclass
class VideoResult:
    """One video's outcome: the fused top classes, or the error that stopped it; notes and timing (s)."""

    path: str
    prediction: str | None = None
    top: list[dict[str, Any]] = field(default_factory=list)  # [{"class", "score", "probability"}], best first
    error: str | None = None
    streams: list[str] = field(default_factory=list)  # the streams that scored it
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # decode, flow, <stream>..., fusion, total

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "prediction": self.prediction, "top": self.top, "error": self.error,
                "streams": self.streams, "notes": self.notes,
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def video_files(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """The files to predict: each path as given, and every video under a folder (recursive, sorted); a file
    named twice (also through its folder) once, where it first appears."""
    from data_manifest.splits import is_video_name

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_video_name(f.name))
        else:
            out.append(p)  # a missing file is that video's error, not the run's
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


class Predictor:
    """The streams, their frame and flow settings, and the fusion of one split, loaded once for many videos."""

    def __init__(self, options: PredictOptions):
        from flowprep import FlowprepError
        from flowprep.settings import settings_from_recorded

        from fusion.predict_source import FlowComputer

        views = parse_views(options.views)
        if options.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise PredictError("--device cuda: torch sees no CUDA device; use --device auto or cpu")
        paths = default_checkpoints(options.runs, options.split)
        paths.update({k: Path(v) for k, v in options.checkpoints.items()})
        missing = [f"{p} ({n})" for n, p in paths.items() if not p.is_file()]
        if missing:
            raise PredictError(f"no such checkpoint: {', '.join(missing)}; train the streams of split "
                               f"{options.split} (`trainer run spatial`, `trainer run temporal`), or give "
                               "--runs DIR, --split K or --spatial/--temporal CHECKPOINT")
        self.notes: list[str] = []
        self.streams: dict[str, Stream] = {}
        for name in STREAMS:
            self.streams[name], self.env = load_stream(name, paths[name], options.device, views, options.store)
            self.notes += self.streams[name].notes
        spatial, temporal = self.streams["spatial"], self.streams["temporal"]
        if spatial.classes != temporal.classes:
            raise PredictError(f"{spatial.checkpoint} and {temporal.checkpoint} were trained on other classes "
                               f"({len(spatial.classes)} and {len(temporal.classes)}); give the two streams of one "
                               "dataset")
        self.classes = spatial.classes
        device = self.env.device.type
        self.settings: dict[str, Any] = {}
        for name, stream in self.streams.items():
            try:
                self.settings[name] = settings_from_recorded(stream.flow, device)
            except FlowprepError as exc:
                raise PredictError(f"{stream.checkpoint}: {exc}") from exc
        self.flow = FlowComputer(self.settings["temporal"], device)
        s, t = self.settings["spatial"], self.settings["temporal"]
        self.shared = (s.resize, s.codec, s.jpeg_quality) == (t.resize, t.codec, t.jpeg_quality)
        if options.report and not Path(options.report).is_file():
            raise PredictError(f"--report {options.report}: no such file; give the report.json `fusion report` "
                               "wrote, or leave --report out")
        report = Path(options.report or Path(options.runs) / f"fusion-split{options.split}" / "report.json")
        self.fusion, notes = read_fusion(report, list(STREAMS), paths, options.method, options.weights,
                                         options.aggregation)
        self.notes += notes

    def describe(self) -> list[str]:
        """Lines on what is applied: models, views, frames and flow, fusion, device."""
        t = self.settings["temporal"]
        lines = [f"{n}: {s.checkpoint} ({s.cfg.arch}, {s.cfg.test_frames} {'stacks' if n == 'temporal' else 'frames'}"
                 f" x {s.cfg.test_crops} crops)" for n, s in self.streams.items()]
        lines.append(f"frames: {t.resize.describe()}, codec {t.codec}; flow: {self.flow.describe}, bound {t.bound:g}")
        if not self.shared:
            lines.append(f"spatial frames: {self.settings['spatial'].resize.describe()}, codec "
                         f"{self.settings['spatial'].codec} (its own store's settings)")
        w = f" weights {':'.join(f'{x:g}' for x in self.fusion.weights)}" if self.fusion.weights else ""
        lines.append(f"fusion: {self.fusion.method}{w}, views -> video {self.fusion.aggregation} ("
                     f"{self.fusion.source}); device {self.env.device}")
        return lines

    def predict(self, path: Path) -> tuple[VideoResult, Any]:
        """One video: (its result, its VideoSource for a picture, or None when it could not be decoded)."""
        from fusion.predict_source import VideoSource

        result, source = VideoResult(str(path)), None
        start = time.perf_counter()
        try:
            flow_before = self.flow.seconds
            source = VideoSource(path, path.stem, self.settings["temporal"], self.flow)
            result.seconds["decode"] = source.decode_seconds
            sources = {"temporal": source, "spatial": source}
            if not self.shared:
                sources["spatial"] = VideoSource(path, path.stem, self.settings["spatial"], None)
                result.seconds["decode"] += sources["spatial"].decode_seconds
            scores = {}
            for name, stream in self.streams.items():
                t, f0 = time.perf_counter(), self.flow.seconds
                logits = self._score(stream, sources[name], result)
                if logits is not None:
                    scores[name] = aggregate(logits[None], self.fusion.aggregation)  # (1, C)
                result.seconds[name] = time.perf_counter() - t - (self.flow.seconds - f0)
            result.seconds["flow"] = self.flow.seconds - flow_before
            t = time.perf_counter()
            self._fuse(scores, result)
            result.seconds["fusion"] = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001  one video's failure must not end the others' predictions
            result.error = _reason(exc, path)
        result.seconds["total"] = time.perf_counter() - start
        return result, source

    def _score(self, stream: Stream, source, result: VideoResult):
        """(F, K, C) float32 logits of the stream's views of the video, or None when it has nothing to show
        that stream (one frame: no flow); short videos are noted."""
        from trainer.data import VideoFrames
        from trainer.evaluation import video_logits

        cfg, vid = stream.cfg, source.video_id
        count = source.num_flows(vid) if stream.name == "temporal" else source.num_frames(vid)
        what = "flow fields" if stream.name == "temporal" else "frames"
        if count < 1:
            result.notes.append(f"{source.num_frames(vid)} frame: no flow, so no temporal stream; predicted from "
                                "the spatial stream alone")
            return None
        if count < cfg.length:
            result.notes.append(f"{count} {what}, fewer than one {stream.name} sample's {cfg.length}: its "
                                f"{'stacks' if stream.name == 'temporal' else 'clips'} repeat the last one (as "
                                "the trainer pads short videos)")
        dataset = VideoFrames(source, [vid], {vid: 0}, cfg, cfg.test_frames, cfg.test_crops)
        out = video_logits(stream.model, dataset, cfg, self.env)
        if out.skipped:
            raise PredictError(next(iter(out.skipped.values())))
        result.streams.append(stream.name)
        return out.logits[0]

    def _fuse(self, scores: dict[str, np.ndarray], result: VideoResult) -> None:
        """Fused (1, C) scores -> the top classes with score and probability."""
        f = self.fusion
        names = [n for n in STREAMS if n in scores]
        if len(names) == 1:
            fused = scores[names[0]]
        else:
            streams = [scores[n] for n in names]
            if f.method == "average":
                fused = combine.average(streams)
            elif f.method == "max":
                fused = combine.maximum(streams)
            elif f.method == "confidence":
                fused, _ = combine.confidence(streams, [video_probabilities(s, f.aggregation) for s in streams])
            else:
                fused = combine.weighted(streams, f.weights)
        fused = fused[0]
        probs = video_probabilities(fused[None], f.aggregation)[0]
        if f.aggregation == "mean-softmax":  # already probabilities; a max over streams no longer sums to 1
            probs = probs / probs.sum()
        order = ranked(fused)[:TOP]
        result.top = [{"class": self.classes[i], "score": float(fused[i]), "probability": float(probs[i])}
                      for i in order]
        result.prediction = result.top[0]["class"]


def _reason(exc: Exception, path: Path) -> str:
    """One line on why a video failed, naming the file."""
    from flowprep import FlowprepError

    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (FlowprepError, PredictError)):
        text = f"{type(exc).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def format_result(r: VideoResult) -> list[str]:
    """The console lines of one video: prediction and top-5, notes, time breakdown (or its error)."""
    if r.error:
        return [f"{r.path}: ERROR {r.error}"]
    lines = [f"{r.path}: {r.prediction}" + ("" if len(r.streams) == 2 else f" ({' + '.join(r.streams)} only)")]
    width = max(len(t["class"]) for t in r.top)
    lines += [f"  {k}. {t['class']:<{width}}  score {t['score']:9.4f}  p {t['probability']:.3f}"
              for k, t in enumerate(r.top, 1)]
    lines += [f"  note: {n}" for n in r.notes]
    s = r.seconds
    parts = [f"{k} {s[k]:.3f}" for k in ("decode", "flow", *STREAMS, "fusion") if k in s]
    lines.append(f"  time (s): {', '.join(parts)}; total {s['total']:.3f}")
    return lines


def predict(options: PredictOptions, echo: Callable[[str], None] = print) -> list[VideoResult]:
    """Load the models once, predict every video, print each as it finishes, write --json / --show."""
    files = video_files(options.paths)
    if not files:
        raise PredictError(f"no video files in {', '.join(options.paths)}")
    _check_outputs(options)  # before the long part: a typo in --json must not cost the predictions
    predictor = Predictor(options)
    for line in predictor.describe():
        echo(line)
    for note in predictor.notes:
        echo(f"note: {note}")
    results, pictures = [], set()
    for path in files:
        result, source = predictor.predict(path)
        if options.show and source is not None and not result.error:
            from fusion.predict_show import write_picture

            t = time.perf_counter()
            try:
                result.notes.append(f"picture: {write_picture(result, source, Path(options.show), pictures)}")
            except (OSError, ValueError) as exc:
                result.notes.append(f"no picture: {exc}")
            result.seconds["show"] = time.perf_counter() - t
        results.append(result)
        for line in format_result(result):
            echo(line)
    failed = [r for r in results if r.error]
    done = [r for r in results if not r.error]
    if done:
        keys = ("decode", "flow", *STREAMS, "fusion", "total")
        mean = {k: float(np.mean([r.seconds.get(k, 0.0) for r in done])) for k in keys}
        echo(f"{len(done)} predicted, {len(failed)} failed; mean time per video (s): "
             + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    else:
        echo(f"0 predicted, {len(failed)} failed")
    if options.json:
        write_json(Path(options.json), results, predictor)
        echo(f"wrote {options.json}")
    return results


def _check_outputs(options: PredictOptions) -> None:
    """--json's folder must exist and be writable, --show's folder must be makeable; PredictError otherwise."""
    import os

    if options.json:
        folder = Path(options.json).absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK) or Path(options.json).is_dir():
            raise PredictError(f"--json {options.json}: cannot write there (is {folder} a folder you can write to, "
                               "and the name a file?)")
    if options.show:
        try:
            Path(options.show).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PredictError(f"--show {options.show}: cannot make the folder ({exc.strerror or exc})") from exc


def write_json(path: Path, results: list[VideoResult], predictor: Predictor) -> None:
    """{"videos": [{"path", "prediction", "top": [{"class", "score", "probability"}], "error", ...}], ...}."""
    from plumbing.atomic import atomic_write

    f = predictor.fusion
    data = {"videos": [r.to_json() for r in results],
            "models": {n: str(s.checkpoint) for n, s in predictor.streams.items()},
            "views": {n: [s.cfg.test_frames, s.cfg.test_crops] for n, s in predictor.streams.items()},
            "fusion": {"method": f.method, "weights": list(f.weights) if f.weights else None,
                       "aggregation": f.aggregation, "source": f.source},
            "flow": predictor.flow.describe, "notes": predictor.notes}
    try:
        atomic_write(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise PredictError(f"--json {path}: cannot write it ({exc.strerror or exc})") from exc
