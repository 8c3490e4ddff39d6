"""One split's evaluation: align streams, views -> video, fuse, and measure every stream and method."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from data_manifest.holdout import too_small_to_choose
from trainer.scores import Scores

from fusion import combine, metrics
from fusion.aggregate import AGGREGATIONS, DEFAULT_AGGREGATION, aggregate, video_probabilities
from fusion.align import align
from fusion.errors import CoverageError, FusionError

DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 0
CI_LEVEL = 0.95
TIE_RULE = "argmax; equal scores rank the lower class index first"
SWEEP_LABEL = "tuned on test (optimistic)"
DROPPED_SHOWN = 10  # dropped ids named in a console note; report.md and report.json list them all


@dataclass(frozen=True)
class Options:
    """How to turn score files into numbers; recorded in every report."""

    aggregation: str = DEFAULT_AGGREGATION
    weights: tuple[float, ...] | None = None  # one per stream, in stream order; None: no "weighted" row
    allow_missing: bool = False
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = DEFAULT_SEED
    grid_steps: int | None = None  # None: combine.default_grid_steps


@dataclass
class Row:
    """One line of the results table: a single stream or a fusion method, measured on the test videos."""

    key: str  # stream name, or average | max | weighted | confidence | learned | sweep
    label: str  # as shown in the table
    kind: str  # "stream" or "fused"
    preds: np.ndarray  # (V,) int64
    top1: float
    top5: float
    mean_class_accuracy: float
    top1_ci: tuple[float, float]
    per_class: np.ndarray  # (C,) float64, NaN for classes without videos
    weights: list[float] | None = None  # normalised, stream order
    tuned_on: str | None = None  # "val" or "test" for searched weights


@dataclass
class Evaluation:
    """Everything a report shows about one split; holds no per-view arrays."""

    split: int | None
    options: Options
    stream_names: list[str]
    class_names: list[str]
    video_ids: list[str]
    labels: np.ndarray  # (V,) int64
    frames: int
    crops: int
    crop_names: list[str] | None
    top5_k: int
    rows: list[Row]
    default_key: str
    files: list[dict]
    val_files: list[dict]
    dropped: list[str]
    missing_from: dict[str, list[str]]
    learned: dict | None = None  # weights, val videos, val top-1, grid table
    sweep: list[dict] | None = None  # grid table on test (optimistic)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    @property
    def classes_with_videos(self) -> int:
        """How many classes have test videos: the classes mean class accuracy averages over."""
        return int(np.unique(self.labels).size)


def ratio(weights: Sequence[float]) -> str:
    """'2:1' style text for weights."""
    return ":".join(f"{w:g}" for w in weights)


def file_info(name: str, s: Scores, subset: str) -> dict:
    """What a report records about one score file."""
    v, f, k, c = s.logits.shape
    return {"stream": name, "subset": subset, "path": s.path, "sha256": s.sha256, "videos": v, "frames": f,
            "crops": k, "classes": c, "meta": s.meta}


def _row(key, label, kind, scores, labels, num_classes, top5_k, boot, weights=None, tuned_on=None) -> Row:
    preds = metrics.predictions(scores)
    correct = preds == labels
    return Row(key=key, label=label, kind=kind, preds=preds, top1=float(correct.mean()),
               top5=metrics.topk_accuracy(scores, labels, top5_k),
               mean_class_accuracy=metrics.mean_class_accuracy(labels, preds, num_classes),
               top1_ci=metrics.bootstrap_interval(correct, boot, CI_LEVEL),
               per_class=metrics.per_class_accuracy(labels, preds, num_classes),
               weights=None if weights is None else [float(w) for w in weights], tuned_on=tuned_on)


def evaluate(test: Sequence[tuple[str, Scores]], val: Sequence[tuple[str, Scores]] | None = None,
             options: Options = Options(), split: int | None = None) -> Evaluation:
    """Measure each stream and each fusion method on the test scores.

    ``test`` and ``val`` are (stream name, Scores) in stream order; ``val`` (the validation hold-out) is
    used only to learn fusion weights. Raises CoverageError / FusionError with the streams and files named.
    """
    if options.aggregation not in AGGREGATIONS:
        raise FusionError(f"unknown aggregation {options.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    if options.bootstrap < 1:
        raise FusionError(f"bootstrap resamples must be >= 1, got {options.bootstrap}")
    names = [n for n, _ in test]
    if len(set(names)) != len(names):
        raise FusionError(f"stream names must be unique, got {names}")
    if options.weights is not None:
        if len(test) < 2:
            raise FusionError("weights need at least two streams to fuse")
        combine.normalise_weights(options.weights, len(test))

    al = align(test, options.allow_missing, "test")
    c = len(al.class_names)
    top5_k = min(metrics.TOP5, c)
    video_scores = [aggregate(x, options.aggregation) for x in al.logits]
    boot = metrics.bootstrap_indices(len(al.video_ids), options.bootstrap, options.seed)

    def add(key, label, kind, scores, **kw):
        rows.append(_row(key, label, kind, scores, al.labels, c, top5_k, boot, **kw))

    rows: list[Row] = []
    for name, vs in zip(names, video_scores):
        add(name, name, "stream", vs)
    notes: list[str] = []
    learned = sweep = None
    val_files: list[dict] = []
    default_key = names[0]
    if len(test) >= 2:
        add("average", "average", "fused", combine.average(video_scores), weights=[1 / len(names)] * len(names))
        add("max", "max", "fused", combine.maximum(video_scores))
        if options.weights is not None:
            w = combine.normalise_weights(options.weights, len(names))
            add("weighted", f"weighted {ratio(options.weights)}", "fused",
                combine.weighted(video_scores, w), weights=w)
        probs = [video_probabilities(vs, options.aggregation) for vs in video_scores]
        fused, _ = combine.confidence(video_scores, probs)
        add("confidence", "confidence (softmax margin)", "fused", fused)

        grid = combine.weight_grid(len(names), options.grid_steps)
        if val:
            learned, val_files, val_notes = _learn(val, names, al, options, grid)
            notes += val_notes
            if learned["too_small"]:  # fixed weights instead: equal (average), or the user's --weights
                notes.append(f"no learned weights: {learned['too_small']}; the default fused method is "
                             f"{'weighted (--weights)' if options.weights is not None else 'average (equal weights)'}")
            else:
                w = np.asarray(learned["weights"])
                add("learned", f"learned on val {ratio(np.round(w, 2))}", "fused",
                    combine.weighted(video_scores, w), weights=w, tuned_on="val")
        w_test, sweep = combine.search_weights(video_scores, al.labels, grid)
        add("sweep", f"{SWEEP_LABEL} {ratio(np.round(w_test, 2))}", "fused",
            combine.weighted(video_scores, w_test), weights=w_test, tuned_on="test")
        default_key = ("weighted" if options.weights is not None
                       else "learned" if learned and not learned["too_small"] else "average")

    if al.dropped:
        notes.append(dropped_note(al, "test"))
    return Evaluation(
        split=split, options=options, stream_names=names, class_names=al.class_names, video_ids=al.video_ids,
        labels=al.labels, frames=al.frames, crops=al.crops, crop_names=_crop_names(test, al.crops),
        top5_k=top5_k, rows=rows, default_key=default_key, files=[file_info(n, s, "test") for n, s in test],
        val_files=val_files, dropped=al.dropped, missing_from=al.missing_from, learned=learned, sweep=sweep,
        notes=notes)


def _learn(val, names, test_al, options, grid) -> tuple[dict, list[dict], list[str]]:
    """Grid-search stream weights on the validation scores (never on test)."""
    val_names = [n for n, _ in val]
    if val_names != names:
        raise FusionError(f"validation streams {val_names} do not match test streams {names}")
    va = align(val, options.allow_missing, "validation")
    if va.class_names != test_al.class_names:
        raise CoverageError(f"validation score files ({', '.join(s.path for _, s in val)}) have other classes "
                            f"({len(va.class_names)}) than the test files ({len(test_al.class_names)}, or in "
                            "another order); they must come from the same trained models")
    overlap = sorted(set(va.video_ids) & set(test_al.video_ids))
    if overlap:
        raise CoverageError(f"{len(overlap)} videos are in both the validation and the test scores (e.g. "
                            f"{', '.join(overlap[:5])}); weights tuned on them would be tuned on test. "
                            "Use the hold-out scores (scores_val.npz) as validation")
    scores = [aggregate(x, options.aggregation) for x in va.logits]
    weights, table = combine.search_weights(scores, va.labels, grid)
    best = table[int(np.argmin([np.abs(np.asarray(r["weights"]) - weights).sum() for r in table]))]
    notes = [dropped_note(va, "validation")] if va.dropped else []
    learned = {"weights": [float(w) for w in weights], "videos": len(va.video_ids), "val_top1": best["top1"],
               "val_mean_class_accuracy": best["mean_class_accuracy"], "grid": table,
               "dropped": va.dropped, "missing_from": va.missing_from,
               "too_small": too_small_to_choose(len(va.video_ids), len(va.class_names))}
    return learned, [file_info(n, s, "val") for n, s in val], notes


def dropped_note(al, subset: str) -> str:
    """The console / report note on videos --allow-missing dropped: counts, then the first DROPPED_SHOWN ids."""
    per = "; ".join(f"{len(m)} missing from {n}" for n, m in al.missing_from.items())
    shown = ", ".join(al.dropped[:DROPPED_SHOWN])
    if len(al.dropped) > DROPPED_SHOWN:
        shown += f" and {len(al.dropped) - DROPPED_SHOWN} more"
    return (f"--allow-missing: dropped {len(al.dropped)} {subset} videos not scored by every stream ({per}): "
            f"{shown}; {len(al.video_ids)} {subset} videos remain (every dropped id is in report.md and report.json)")


def _crop_names(test, crops: int) -> list[str] | None:
    names = (test[0][1].meta or {}).get("crop_names")
    if isinstance(names, list) and len(names) == crops:
        return [str(x) for x in names]
    return None
