"""The only writer of fusion reports: Markdown, JSON, per-class CSV, confusion-matrix PNG, split summaries.

Markdown shows accuracies in percent; JSON and CSV hold fractions in [0, 1]. Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from plumbing.atomic import atomic_write
from fusion.aggregate import AGGREGATIONS
from fusion.combine import CONFIDENCE_EPS
from fusion.evaluate import CI_LEVEL, SWEEP_LABEL, TIE_RULE, Evaluation

REPORT_FORMAT = "twostream-fusion-report/1"
SUMMARY_FORMAT = "twostream-fusion-summary/1"
CONFIDENCE_FORMULA = (f"w_s(v) = p1_s(v) - p2_s(v) + {CONFIDENCE_EPS:g}; fused(v) = sum_s w_s(v) * score_s(v) / "
                      "sum_s w_s(v), where p1, p2 are the two highest class probabilities of stream s for video v")
MAX_SWEEP_ROWS_MD = 30
MEAN_CLASS_ACCURACY = ("per-class recall (the share of a class's test videos predicted as that class), averaged "
                       "over the classes that have test videos; classes without test videos are left out")
# per_class.csv column of a row: its key, except where the key alone hides how the weights were chosen.
CSV_COLUMNS = {"learned": "learned_on_val", "sweep": "tuned_on_test_optimistic"}
METHOD_TEXT = {
    "average": "`average` is the plain mean of the stream scores",
    "weighted": "`weighted` is the mean of the stream scores with the given weights (normalised to sum 1)",
    "max": "`max` takes the per-class maximum over streams",
    "confidence": f"`confidence` weights each stream per video by its softmax margin: {CONFIDENCE_FORMULA}",
}
OUTPUT_NAMES = {"markdown": "report.md", "json": "report.json", "per_class": "per_class.csv",
                "confusion": "confusion.png"}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _left_out(ev: Evaluation) -> str:
    gone = len(ev.class_names) - ev.classes_with_videos
    return f"; {gone} without test videos left out" if gone else ""


def _top5_header(ev: Evaluation) -> str:
    return "top-5" if ev.top5_k == 5 else f"top-5 (= top-{ev.top5_k}: {len(ev.class_names)} classes)"


def results_table(ev: Evaluation) -> str:
    """The Markdown table: method | top-1 | top-5 | mean class accuracy | top-1 95% CI | videos (percent)."""
    lines = [f"| method | top-1 | {_top5_header(ev)} | mean class accuracy | top-1 {CI_LEVEL:.0%} CI | videos |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in ev.rows:
        lo, hi = r.top1_ci
        lines.append(f"| {r.label} | {_pct(r.top1)} | {_pct(r.top5)} | {_pct(r.mean_class_accuracy)} | "
                     f"{_pct(lo)}-{_pct(hi)} | {len(ev.video_ids)} |")
    return "\n".join(lines) + "\n"


def _title(ev: Evaluation) -> str:
    return f"split {ev.split}" if ev.split is not None else "given score files"


def render_markdown(ev: Evaluation) -> str:
    """The human report of one split."""
    o = ev.options
    default = ev.row(ev.default_key)
    views = ev.frames * ev.crops
    crops = f" ({', '.join(ev.crop_names)})" if ev.crop_names else ""
    if ev.dropped:
        coverage = f"{len(ev.dropped)} videos dropped with --allow-missing (listed below)"
    else:
        coverage = "every stream scores every video"
    if len(ev.stream_names) > 1:
        default_line = f"- Default fused method: **{default.label}** (per_class.csv, confusion.png)."
    else:
        default_line = (f"- One stream ({ev.stream_names[0]}): nothing fused; per_class.csv and confusion.png "
                        f"show {ev.stream_names[0]}.")
    out = [f"# Fusion report: {_title(ev)}", "",
           f"- Test videos: {len(ev.video_ids)}; classes: {len(ev.class_names)} in the score files, "
           f"{ev.classes_with_videos} of them with test videos; {coverage}.",
           f"- Mean class accuracy: {MEAN_CLASS_ACCURACY} (here averaged over {ev.classes_with_videos} classes"
           f"{_left_out(ev)}).",
           f"- Streams: {', '.join(ev.stream_names)}.",
           f"- Views per video: {ev.frames} frames x {ev.crops} crops = {views}{crops}.",
           f"- Views to video: {AGGREGATIONS[o.aggregation]} (`{o.aggregation}`).",
           f"- Ties: {TIE_RULE}.",
           f"- Top-1 {CI_LEVEL:.0%} CI: percentile bootstrap over videos, {o.bootstrap} resamples, seed {o.seed}; "
           "the interval ends are the 2.5% and 97.5% quantiles of the resampled top-1, linearly interpolated.",
           default_line, "",
           "## Results (percent)", "", results_table(ev)]
    fused = [r for r in ev.rows if r.kind == "fused"]
    if fused:
        described = [METHOD_TEXT[r.key] for r in fused if r.key in METHOD_TEXT]
        if described:
            out += ["Methods: " + "; ".join(described) + "."]
        if ev.learned and ev.learned.get("too_small"):
            out += [f"No `learned on val` row: {ev.learned['too_small']}, so fixed weights are used "
                    f"(the default method is **{default.label}**)."]
        elif ev.learned:
            out += [f"`learned on val`: weights chosen by grid search on the validation hold-out "
                    f"({ev.learned['videos']} videos, val top-1 {_pct(ev.learned['val_top1'])}), then applied to "
                    "test."]
        else:
            out += ["No `learned on val` row: there are no validation scores (scores_val.npz) for every stream."]
        if any(r.key == "sweep" for r in fused):
            out += [f"`{SWEEP_LABEL}`: the best weights found on the test scores themselves; an optimistic upper "
                    "bound, never a result to quote."]
        out += [""]
        out += ["## Weights", "", "| method | " + " | ".join(ev.stream_names) + " |",
                "|---|" + "---:|" * len(ev.stream_names)]
        for r in fused:
            if r.weights is not None:
                out.append(f"| {r.label} | " + " | ".join(f"{w:.3f}" for w in r.weights) + " |")
        out.append("")
    if ev.sweep:
        out += [f"## Weight sweep on test: {SWEEP_LABEL}", ""]
        if len(ev.sweep) <= MAX_SWEEP_ROWS_MD:
            out += ["| " + " | ".join(ev.stream_names) + " | top-1 | mean class accuracy |",
                    "|" + "---:|" * (len(ev.stream_names) + 2)]
            for s in ev.sweep:
                out.append("| " + " | ".join(f"{w:.2f}" for w in s["weights"]) +
                           f" | {_pct(s['top1'])} | {_pct(s['mean_class_accuracy'])} |")
        else:
            out.append(f"{len(ev.sweep)} weight vectors; see `sweep` in report.json.")
        out.append("")
    out += ["## Score files", "", "| stream | subset | videos | frames x crops | sha256 | path |",
            "|---|---|---:|---|---|---|"]
    for f in ev.files + ev.val_files:
        out.append(f"| {f['stream']} | {f['subset']} | {f['videos']} | {f['frames']} x {f['crops']} | "
                   f"`{f['sha256']}` | `{f['path']}` |")
    out.append("")
    val_dropped = (ev.learned or {}).get("dropped") or []
    for title, dropped, missing_from in (("Dropped videos", ev.dropped, ev.missing_from),
                                         ("Dropped validation videos", val_dropped,
                                          (ev.learned or {}).get("missing_from") or {})):
        if not dropped:
            continue
        out += [f"## {title} (--allow-missing)", "", "| video | missing from |", "|---|---|"]
        missing = {n: set(ids) for n, ids in missing_from.items()}
        for v in dropped:
            lacking = [n for n, ids in missing.items() if v in ids]
            out.append(f"| {v} | {', '.join(lacking)} |")
        out.append("")
    if ev.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in ev.notes] + [""]
    return "\n".join(out)


def _result_json(ev: Evaluation) -> list[dict]:
    return [{"key": r.key, "label": r.label, "kind": r.kind, "top1": r.top1, "top5": r.top5,
             "mean_class_accuracy": r.mean_class_accuracy, "top1_ci95": list(r.top1_ci),
             "videos": len(ev.video_ids), "weights": r.weights, "tuned_on": r.tuned_on} for r in ev.rows]


def _finite(x):
    """JSON-safe copy: non-finite floats (possible in a score file's free-form meta) become null."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dumps(obj: dict) -> str:
    return json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"


def report_json(ev: Evaluation) -> dict:
    """The machine-readable report of one split (accuracies as fractions in [0, 1])."""
    o = ev.options
    weights = {r.key: r.weights for r in ev.rows if r.kind == "fused" and r.weights is not None}
    protocol = {
        "frames": ev.frames, "crops": ev.crops, "crop_names": ev.crop_names,
        "views_per_video": ev.frames * ev.crops, "aggregation": o.aggregation,
        "aggregation_description": AGGREGATIONS[o.aggregation], "tie_rule": TIE_RULE, "top5_k": ev.top5_k,
        "mean_class_accuracy": MEAN_CLASS_ACCURACY,
        "bootstrap": {"resamples": o.bootstrap, "seed": o.seed, "level": CI_LEVEL,
                      "method": "percentile; videos resampled with replacement, same resamples for every row; "
                                "ends are quantiles with linear interpolation (numpy.quantile default)"},
        "weights_given": list(o.weights) if o.weights is not None else None, "weights": weights,
        "confidence_formula": CONFIDENCE_FORMULA, "stream_order": ev.stream_names,
        "default_method": ev.default_key,
    }
    return {"format": REPORT_FORMAT, "split": ev.split, "accuracy_unit": "fraction",
            "streams": ev.stream_names, "videos": len(ev.video_ids), "classes": len(ev.class_names),
            "classes_with_videos": ev.classes_with_videos, "class_names": ev.class_names, "protocol": protocol,
            "results": _result_json(ev), "fused": len(ev.stream_names) > 1,
            "default_method": ev.default_key, "score_files": ev.files, "val_files": ev.val_files,
            "coverage": {"allow_missing": o.allow_missing, "videos": len(ev.video_ids), "dropped": ev.dropped,
                         "missing_from": ev.missing_from,
                         "val_dropped": (ev.learned or {}).get("dropped", []),
                         "val_missing_from": (ev.learned or {}).get("missing_from", {})},
            "learned": ev.learned, "sweep": ev.sweep, "sweep_label": SWEEP_LABEL, "notes": ev.notes,
            "outputs": dict(OUTPUT_NAMES)}


def per_class_csv(ev: Evaluation) -> str:
    """class_index, class_name, videos, then the per-class accuracy of every row (fraction; empty: no videos).

    Row columns are named by key, except ``learned_on_val`` and ``tuned_on_test_optimistic`` (CSV_COLUMNS).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class_index", "class_name", "videos"] + [CSV_COLUMNS.get(r.key, r.key) for r in ev.rows])
    counts = np.bincount(ev.labels, minlength=len(ev.class_names))
    for i, name in enumerate(ev.class_names):
        accs = ["" if np.isnan(r.per_class[i]) else f"{r.per_class[i]:.6f}" for r in ev.rows]
        w.writerow([i, name, int(counts[i])] + accs)
    return buf.getvalue()


def confusion_png(ev: Evaluation, key: str | None = None) -> bytes:
    """PNG of the row-normalised confusion matrix (rows: true class) of one row, the default one if None."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib is slow to import
    from matplotlib.figure import Figure

    from fusion.metrics import confusion_matrix

    row = ev.row(key or ev.default_key)
    c = len(ev.class_names)
    cm = confusion_matrix(ev.labels, row.preds, c).astype(np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = float(np.clip(3 + 0.12 * c, 5, 18))
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fontsize = float(np.clip(160 / max(c, 1), 3, 9))
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(ev.class_names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(ev.class_names, fontsize=fontsize)
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{_title(ev)}: {row.label}, top-1 {_pct(row.top1)}%", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(ev: Evaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json, per_class.csv and confusion.png into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    files = {k: out_dir / v for k, v in OUTPUT_NAMES.items()}
    atomic_write(files["per_class"], per_class_csv(ev))
    atomic_write(files["confusion"], confusion_png(ev))
    atomic_write(files["json"], _dumps(report_json(ev)))
    atomic_write(files["markdown"], render_markdown(ev))
    return files


def _summary_label(key: str, labels: list[str]) -> str:
    if key == "learned":
        return "learned on val"
    if key == "sweep":
        return SWEEP_LABEL
    return labels[0]


def summary_json(evs: Sequence[Evaluation]) -> dict:
    """Per method: top-1, top-5 and mean class accuracy of every split and their mean (fractions)."""
    keys: list[str] = []
    for ev in evs:
        keys += [r.key for r in ev.rows if r.key not in keys]
    rows = []
    for key in keys:
        per = {ev.split: next((r for r in ev.rows if r.key == key), None) for ev in evs}
        labels = [r.label for r in per.values() if r is not None]
        entry = {"key": key, "label": _summary_label(key, labels), "splits": {}, "mean": None,
                 "default_in": [ev.split for ev in evs if ev.default_key == key]}
        for split, r in per.items():
            if r is not None:
                entry["splits"][str(split)] = {"top1": r.top1, "top5": r.top5,
                                               "mean_class_accuracy": r.mean_class_accuracy,
                                               "videos": len(r.preds), "weights": r.weights}
        if all(r is not None for r in per.values()):
            entry["mean"] = {m: float(np.mean([getattr(r, m) for r in per.values()]))
                             for m in ("top1", "top5", "mean_class_accuracy")}
        rows.append(entry)
    return {"format": SUMMARY_FORMAT, "accuracy_unit": "fraction", "splits": [ev.split for ev in evs],
            "aggregation": evs[0].options.aggregation if evs else None,
            "videos": {str(ev.split): len(ev.video_ids) for ev in evs},
            "default_method": {str(ev.split): ev.default_key for ev in evs}, "results": rows,
            "reports": {str(ev.split): [f["sha256"] for f in ev.files] for ev in evs}}


def render_summary(evs: Sequence[Evaluation]) -> str:
    """Markdown summary of several splits: top-1 per split, then means over the splits."""
    s = summary_json(evs)
    splits = [str(k) for k in s["splits"]]
    head = ("| method | " + " | ".join(f"split {k} top-1" for k in splits) +
            " | mean top-1 | mean top-5 | mean class accuracy (mean) |")
    videos = ", ".join(f"split {k}: {n}" for k, n in s["videos"].items())
    lines = [f"# Fusion summary: splits {', '.join(splits)}", "",
             f"Test videos per split: {videos}.", "",
             f"Views to video: `{s['aggregation']}`. Accuracies in percent; means over the splits "
             "(n/a where a method is missing from a split). Weights of `learned on val` and "
             f"`{SWEEP_LABEL}` are chosen per split. **(default)** marks each split's default fused method.",
             "", head, "|---|" + "---:|" * (len(splits) + 3)]
    for r in s["results"]:
        cells = [_pct(r["splits"][k]["top1"]) if k in r["splits"] else "n/a" for k in splits]
        mean = r["mean"]
        cells += ([_pct(mean["top1"]), _pct(mean["top5"]), _pct(mean["mean_class_accuracy"])] if mean
                  else ["n/a"] * 3)
        mark = ""
        if r["default_in"] and len(r["default_in"]) == len(splits):
            mark = " **(default)**"
        elif r["default_in"]:
            mark = f" **(default in split {', '.join(map(str, r['default_in']))})**"
        lines.append(f"| {r['label']}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(evs: Sequence[Evaluation], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write summary.md and summary.json into ``out_dir``."""
    out_dir = Path(out_dir)
    md = atomic_write(out_dir / "summary.md", render_summary(evs))
    js = atomic_write(out_dir / "summary.json", _dumps(summary_json(evs)))
    return {"markdown": md, "json": js}
