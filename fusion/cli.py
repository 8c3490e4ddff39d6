"""`fusion` command line: parse options, call the library, map domain errors to click errors."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from fusion import inputs
from fusion.aggregate import AGGREGATIONS, DEFAULT_AGGREGATION
from fusion.errors import FusionError
from fusion.evaluate import DEFAULT_BOOTSTRAP, DEFAULT_SEED, Options, evaluate
from plumbing.cli import EXIT_FAILURE, one_line_errors

REPORT_INTERRUPTED = ("report files are written whole or not at all, so none is half-written; re-run the same "
                      "command to make the report (it starts over, reading the same score files)")
_NUMBER = re.compile(r"^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _join_weights(args: list[str]) -> list[str]:
    """Let `--weights 2 1` take one number per stream: fold the bare numbers after it into one value."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        out.append(a)
        i += 1
        if a == "--":
            out += args[i:]
            break
        if a == "--weights" and i < len(args):
            out.append(args[i])
            i += 1
        if a == "--weights" or a.startswith("--weights="):
            while i < len(args) and _NUMBER.match(args[i]):
                out[-1] += " " + args[i]
                i += 1
    return out


class _WeightsCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _join_weights(list(args)))


def _parse_weights(text: str | None, num_streams: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    parts = [p for p in re.split(r"[\s,:]+", text.strip()) if p]
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        raise click.UsageError(f"--weights takes numbers, one per stream (e.g. --weights 2 1), got {text!r}")
    if num_streams < 2:
        raise click.UsageError(f"--weights needs at least two streams to fuse, got {num_streams}; give a second "
                               "stream (--spatial/--temporal or --scores NAME=PATH) or drop --weights")
    if len(weights) != num_streams:
        raise click.UsageError(f"--weights needs one number per stream ({num_streams}), got {len(weights)}: {text!r}")
    if any(not w >= 0 or w == float("inf") for w in weights) or sum(weights) <= 0:
        raise click.UsageError(f"--weights must be finite, >= 0 and not all 0, got {text!r}")
    return weights


def _named(values: tuple[str, ...], option: str) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name.strip() or not path:
            raise click.UsageError(f"{option} takes NAME=PATH, got {v!r}")
        out.append((name.strip(), Path(path)))
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Video predictions from per-view scores, stream fusion and trustworthy reports."""


@main.command(cls=_WeightsCommand)
@click.option("--split", type=click.Choice(["1", "2", "3", "all"]), default=None,
              help="Split to report (default 1); 'all' reports splits 1-3 and their mean.")
@click.option("--runs", type=click.Path(file_okay=False), default=inputs.DEFAULT_RUNS, show_default=True,
              help="Run directory holding {spatial,temporal}-split{k}/scores_test.npz.")
# Plain paths: a missing file or a directory is a domain error (exit 1, named with the fix), not misuse.
@click.option("--spatial", help="Spatial stream test score file.")
@click.option("--temporal", help="Temporal stream test score file.")
@click.option("--scores", multiple=True, metavar="NAME=PATH", help="Any stream's test score file (repeatable).")
@click.option("--val", multiple=True, metavar="NAME=PATH",
              help="Validation hold-out score file of a stream, to learn weights (default: scores_val.npz "
                   "beside each scores_test.npz).")
@click.option("--aggregate", "aggregation", type=click.Choice(list(AGGREGATIONS)), default=DEFAULT_AGGREGATION,
              show_default=True, help="Views to video: mean of logits, mean of softmax, or max of logits.")
@click.option("--weights", metavar="W1 W2 ...", help="Weights for the 'weighted' method, one per stream in "
              "stream order (spatial, temporal, then --scores), e.g. --weights 2 1.")
@click.option("--allow-missing", is_flag=True,
              help="Fuse only the videos every stream scores and list the ones dropped (default: fail).")
@click.option("--bootstrap", type=click.IntRange(min=1), default=DEFAULT_BOOTSTRAP, show_default=True,
              help="Bootstrap resamples for the top-1 95% interval.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Bootstrap seed.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output directory (default RUNS/fusion-split{k}, RUNS/fusion-all for --split all).")
def report(split, runs, spatial, temporal, scores, val, aggregation, weights, allow_missing, bootstrap, seed,
           out) -> None:
    """Per stream and fused: top-1, top-5, mean class accuracy, with a Markdown/JSON report.

    \b
    Examples:
      fusion report --split 1
      fusion report --split 1 --weights 2 1
      fusion report --spatial rgb.npz --temporal flow.npz --allow-missing
      fusion report --scores rgb=a.npz --scores flow=b.npz --scores audio=c.npz
      fusion report --split all
    """
    explicit = [("spatial", Path(spatial))] if spatial else []
    explicit += [("temporal", Path(temporal))] if temporal else []
    explicit += _named(scores, "--scores")
    val_named = _named(val, "--val")
    names = [n for n, _ in explicit]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.UsageError(f"stream name {', '.join(map(repr, twice))} given more than once; --spatial, "
                               "--temporal and every --scores NAME=PATH must name a different stream")
    with one_line_errors((FusionError,), interrupted=REPORT_INTERRUPTED):
        if split == "all":
            if explicit or val_named:
                raise click.UsageError("--split all reads the run directory; it cannot be combined with "
                                       "--spatial, --temporal, --scores or --val")
            _report_all(Path(runs), Path(out) if out else None, aggregation, weights, allow_missing,
                        bootstrap, seed)
            return
        k = int(split) if split is not None else (None if explicit else 1)
        if explicit:
            test_paths, hint = explicit, None
        else:
            test_paths, hint = inputs.default_paths(runs, k), lambda n: inputs.missing_hint(n, k)
        options = Options(aggregation=aggregation, weights=_parse_weights(weights, len(test_paths)),
                          allow_missing=allow_missing, bootstrap=bootstrap, seed=seed)
        out_dir = Path(out) if out else Path(runs) / (f"fusion-split{k}" if k is not None else "fusion")
        _report_one(test_paths, val_named, k, hint, options, out_dir)


def _val_paths(test_paths, val_named) -> tuple[list | None, list[str]]:
    """Validation files for the streams: the given --val ones, else scores_val.npz beside every test file."""
    names = [n for n, _ in test_paths]
    if val_named:
        given = [n for n, _ in val_named]
        if sorted(given) != sorted(names):
            raise click.UsageError(f"--val must name every stream once ({', '.join(names)}), got {', '.join(given)}")
        d = dict(val_named)
        return [(n, d[n]) for n in names], []
    found = [(n, inputs.val_path_for(p)) for n, p in test_paths]
    lacking = [(n, p) for n, p in found if p is None or not p.is_file()]
    if not lacking:
        return found, []
    if len(test_paths) < 2:
        return None, []
    where = ", ".join(f"{n} ({p})" if p else n for n, p in lacking)
    return None, [f"no learned weights: no validation scores for {where}; train with a validation hold-out "
                  "or pass --val NAME=PATH"]


def _report_one(test_paths, val_named, split, hint, options, out_dir):
    test = inputs.load(test_paths, hint)
    notes = inputs.check_meta(test, "test", split)
    val_paths, val_notes = _val_paths(test_paths, val_named)
    val = None
    if val_paths:
        val = inputs.load(val_paths)
        notes += inputs.check_meta(val, "val", split)
        notes += inputs.check_val_against_test(test, val)
    ev = evaluate(test, val, options, split)
    ev.notes[:0] = notes + val_notes
    del test, val  # the per-view arrays are no longer needed
    from fusion.report import results_table, write_report  # deferred: keeps --help fast

    files = write_report(ev, out_dir)
    title = f"split {split}" if split is not None else "given score files"
    click.echo(f"Fusion report, {title}: {len(ev.video_ids)} test videos, {len(ev.class_names)} classes "
               f"({ev.classes_with_videos} with test videos), {ev.frames} frames x {ev.crops} crops per video, "
               f"views -> video: {options.aggregation}\n")
    click.echo(results_table(ev))
    if len(ev.stream_names) > 1:
        click.echo(f"default fused method: {ev.row(ev.default_key).label}")
    else:
        click.echo(f"one stream ({ev.stream_names[0]}): nothing fused")
    for n in ev.notes:
        click.echo(f"note: {n}", err=True)
    click.echo("wrote " + ", ".join(str(p) for p in files.values()))
    return ev


def _report_all(runs, out, aggregation, weights, allow_missing, bootstrap, seed):
    paths = {k: inputs.default_paths(runs, k) for k in inputs.SPLITS}
    missing = [(k, n, p) for k, ps in paths.items() for n, p in ps if not p.is_file()]
    if missing:
        raise FusionError("\n".join(f"{p}: no such score file; {inputs.missing_hint(n, k)}" for k, n, p in missing))
    options = Options(aggregation=aggregation, weights=_parse_weights(weights, len(inputs.DEFAULT_STREAMS)),
                      allow_missing=allow_missing, bootstrap=bootstrap, seed=seed)
    evs = []
    for k in inputs.SPLITS:
        split_out = out / f"split{k}" if out else runs / f"fusion-split{k}"
        evs.append(_report_one(paths[k], [], k, None, options, split_out))
        click.echo("")
    from fusion.report import render_summary, write_summary

    files = write_summary(evs, out if out else runs / "fusion-all")
    click.echo(render_summary(evs))
    click.echo("wrote " + ", ".join(str(p) for p in files.values()))


@main.command(cls=_WeightsCommand)
@click.argument("videos", nargs=-1, required=True, metavar="VIDEO_OR_FOLDER...")
@click.option("--split", type=click.IntRange(1), default=1, show_default=True,
              help="Split whose models are applied: RUNS/{spatial,temporal}-split{k}/checkpoint_best.pt.")
@click.option("--runs", type=click.Path(file_okay=False), default=inputs.DEFAULT_RUNS, show_default=True,
              help="Run directory holding the two streams' run folders and fusion-split{k}/report.json.")
@click.option("--spatial", metavar="CHECKPOINT", help="Spatial stream checkpoint (default: from --runs).")
@click.option("--temporal", metavar="CHECKPOINT", help="Temporal stream checkpoint (default: from --runs).")
@click.option("--store", help="Flow store the models were trained on, for checkpoints that do not record "
              "their flow settings (older ones).")
@click.option("--report", help="Fusion report whose choice is applied (default RUNS/fusion-split{k}/report.json).")
@click.option("--method", type=click.Choice(["average", "max", "weighted", "confidence", "learned"]),
              help="Fusion method (default: the report's; without a report, average).")
@click.option("--weights", metavar="W_SPATIAL W_TEMPORAL", help="Weights for --method weighted, e.g. --weights 2 1.")
@click.option("--aggregate", "aggregation", type=click.Choice(list(AGGREGATIONS)),
              help="Views to video (default: the report's; without a report, mean-logits).")
@click.option("--views", default="test", show_default=True,
              help="test (each run's test protocol, e.g. 25 x 10), fast (5 frames or stacks x the centre crop) "
                   "or FRAMESxCROPS.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the models run; on CUDA, TV-L1 and Farneback flow use the batched PyTorch backend.")
@click.option("--json", "json_path", metavar="FILE", help="Write the predictions as JSON.")
@click.option("--show", metavar="DIR", help="Write one PNG per video: frames, their flow and the top-5.")
def predict(videos, split, runs, spatial, temporal, store, report, method, weights, aggregation, views, device,
            json_path, show) -> None:
    """The trained two-stream model of a split on new videos: top-5 per video, with a time breakdown.

    Frames and flow are made exactly as the training store's (recorded in the checkpoints); a video that
    cannot be decoded gets its own error and the others are still predicted (exit 1).

    \b
    Examples:
      fusion predict clip.avi other.mp4
      fusion predict videos/ --split 1 --views fast --json predictions.json --show pictures/
      fusion predict clip.avi --method weighted --weights 2 1
    """
    from fusion.predict import PredictOptions, predict as run_predict

    checkpoints = {k: v for k, v in (("spatial", spatial), ("temporal", temporal)) if v}
    options = PredictOptions(paths=tuple(videos), split=split, runs=runs, checkpoints=checkpoints, store=store,
                             report=report, method=method, weights=_parse_weights(weights, 2), aggregation=aggregation,
                             views=views, device=device, json=json_path, show=show)
    with one_line_errors((FusionError,), interrupted="nothing was written except the --show pictures already made"):
        results = run_predict(options, echo=click.echo)
    if any(r.error for r in results):
        sys.exit(EXIT_FAILURE)
