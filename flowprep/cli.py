"""Command line: `flowprep extract | import | export | info | verify | show | merge`. Thin: parse, call the
library, map errors.

Exit status, every command: 0 success; 1 a problem of the data (videos failed, no videos found, a store
made with other settings, damaged or locked); 2 misuse (a bad option value, like click's own checks).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from plumbing.cli import one_line_errors
from flowprep.errors import FlowprepError, OptionError
from flowprep.flow.compute import DEVICES
from flowprep.flow.params import ALGORITHMS, BACKENDS
from flowprep.flow.quantize import DEFAULT_BOUND
from flowprep.interop.importing import DEFAULT_IMPORT_CODEC
from flowprep.interop.layouts import LAYOUTS
from flowprep.settings import DEFAULT_BATCH_SIZE, default_jobs, parse_shard
from flowprep.store.codec import CODECS, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY
from flowprep.video.decode import DEFAULT_SIZE

SIZE_TEXT = f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}"
CODEC_HELP = "; ".join(f"{c.name}: {c.description}" for c in CODECS.values())


def _errors(interrupted: str = "nothing was written; re-run the same command"):
    """OptionError as a usage error (exit 2), the other domain errors (a damaged manifest is a
    ManifestError) as one line (exit 1), Ctrl-C as a line saying what was kept (exit 130)."""
    from data_manifest import ManifestError

    return one_line_errors((FlowprepError, ManifestError), usage=(OptionError,), interrupted=interrupted)


# After a Ctrl-C or a kill, loky's resource tracker (a helper process of the worker pool) removes the pool's
# semaphores and warns "There appear to be N leaked semlock objects to clean up at shutdown". That is the
# clean-up working, not a problem of the run, so its warning is kept off this command's output.
TRACKER_QUIET = "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"


def quiet_pool_cleanup() -> None:
    """Keep the pool's resource-tracker warning (see TRACKER_QUIET) off the output of the processes this
    command starts; the user's own PYTHONWARNINGS are kept."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if TRACKER_QUIET not in current:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, TRACKER_QUIET]))


def _run_and_report(run, out: Path, summary_json: Path | None) -> None:
    """Run a store-building command (``run()`` -> ExtractSummary), print its summary (and write it as JSON),
    exit 0 when every video made it, else 1; domain errors and Ctrl-C as one line, and the worker pool's
    clean-up warning kept off the output."""
    from flowprep.pipeline import summary_json as to_json, summary_text

    quiet_pool_cleanup()
    with _errors(f"the videos finished so far are kept in {out.name}.parts/; re-run the same command to "
                 "resume where it stopped"):
        summary = run()
    click.echo(summary_text(summary))
    if summary_json:
        summary_json.write_text(to_json(summary))
    sys.exit(0 if summary.ok else 1)


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        params[key.strip()] = value.strip()
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twostream-toolkit")
def main() -> None:
    """Videos -> RGB frames and optical flow in resumable HDF5 flow stores.

    Exit status of every command: 0 success; 1 a problem of the data or the files (failed videos, a damaged,
    locked or differently made store); 2 misuse (a bad option value).
    """


@main.command()
@click.option("--videos", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: <Class>/<video> files, with UCF101 or HMDB51 split files if present.")
@click.option("--out", default="flows.h5", show_default=True, type=click.Path(path_type=Path),
              help="Store file to write (with --shard, one file per shard beside it).")
@click.option("--algo", type=click.Choice(list(ALGORITHMS)), default="tvl1", show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Flow parameter override, e.g. --param warps=3 (see `flowprep params`).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="auto: cuda when torch sees a GPU, else cpu.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Flow code: opencv (CPU default) or torch (batched PyTorch; the only one on cuda).")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Frame pairs per flow call with the torch backend.")
@click.option("--gpus", default=None, help="Comma-separated CUDA device ids (default: all visible).")
@click.option("--size", default=SIZE_TEXT, show_default=True, help="Output frame size WIDTHxHEIGHT.")
@click.option("--short-side", type=int, default=None, help="Resize the short side to this, keeping aspect ratio "
              "(instead of --size).")
@click.option("--bound", type=float, default=DEFAULT_BOUND, show_default=True, help="Flow clip bound in pixels.")
@click.option("--codec", type=click.Choice(list(CODECS)), default=DEFAULT_CODEC, show_default=True,
              help=CODEC_HELP + ".")
@click.option("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, show_default=True)
@click.option("--jobs", "-j", type=int, default=None,
              help="Parallel videos (default: number of CPU cores); decode threads with the torch backend.")
@click.option("--shard", default="1/1", show_default=True, help="Process the I-th of N deterministic parts.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the videos as tasks on a Dask cluster: tcp://HOST:8786 (a running scheduler) or local:N "
                   "(N worker processes here); each worker thread runs one video (--jobs: decode threads per "
                   "GPU task). Needs pip install 'twostream-toolkit[dask]'.")
@click.option("--dataset", type=click.Choice(["auto", "ucf101", "hmdb51", "folder"]), default="auto",
              show_default=True)
@click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder with the split files, if not inside --videos.")
@click.option("--allow-missing", is_flag=True, help="Extract what is on disk when split files name absent videos.")
@click.option("--group-regex", default=None, metavar="REGEX",
              help="Videos whose names give the same match (its first group) share footage: kept on one side of "
                   "the split made when there are no split files, and of the hold-out (see data-manifest build).")
@click.option("--follow-symlinks", is_flag=True,
              help="Use class folders and videos that are symbolic links leaving --videos (listed in the "
                   "manifest's notes); without it they are refused.")
@click.option("--overwrite", is_flag=True, help="Discard the existing store and unfinished work; start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
def extract(videos, out, algo, params, device, backend, batch_size, gpus, size, short_side, bound, codec,
            jpeg_quality, jobs, shard, dataset, splits_dir, allow_missing, group_regex, follow_symlinks, overwrite,
            no_progress, summary_json, scheduler):
    """Extract RGB frames and flow of every video into one store. Re-run the same command to resume.

    Exit status: 0 when every video was extracted; 1 when any failed (they are named) or the dataset or the
    store cannot be used (no videos, other settings, another run writing it); 2 on a bad option value.
    """
    from flowprep.video.decode import Resize, parse_size, quiet_decoders
    from flowprep.pipeline import ExtractConfig, extract as run_extract

    ctx = click.get_current_context()
    if short_side is not None and ctx.get_parameter_source("size") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --size or --short-side, not both")
    try:
        gpu_ids = tuple(int(g) for g in gpus.split(",")) if gpus else None
    except ValueError:
        raise click.BadParameter(f"expected comma-separated CUDA device numbers such as 0,1, got {gpus!r}",
                                 param_hint="--gpus") from None
    def run():
        resize = Resize(None, None, short_side) if short_side is not None else parse_size(size)
        cfg = ExtractConfig(videos=videos, out=out, algo=algo, params=_parse_params(params), device=device,
                            backend=backend, batch_size=batch_size, gpus=gpu_ids,
                            bound=bound, codec=codec, jpeg_quality=jpeg_quality, resize=resize,
                            jobs=jobs if jobs is not None else default_jobs(), shard=parse_shard(shard),
                            dataset=dataset, splits_dir=splits_dir, allow_missing=allow_missing,
                            follow_symlinks=follow_symlinks, group_regex=group_regex, overwrite=overwrite,
                            progress=not no_progress,
                            scheduler=scheduler)
        quiet_decoders()  # before the first video is opened, here or in a worker
        return run_extract(cfg)

    _run_and_report(run, out, summary_json)


@main.command("import")
@click.option("--layout", "layout_name", required=True, type=click.Choice(list(LAYOUTS)),
              help="Who wrote the files: feichtenhofer (twostreamfusion downloads), tsn (TSN's dense_flow), "
                   "denseflow (open-mmlab), mmaction2 (rawframes).")
@click.option("--frames", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the video folders (or of class folders holding them) with the RGB images.")
@click.option("--flow", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Flow folder: feichtenhofer's tvl1_flow/ (with u/ and v/); for the other layouts only when "
                   "the flow images are not beside the frames.")
@click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Official split files (ucfTrainTestlist/ or the HMDB51 split folder): classes, labels, splits.")
@click.option("--bound", type=float, default=DEFAULT_BOUND, show_default=True,
              help="The bound the flow was quantised with (the files do not say; recorded).")
@click.option("--rounding", type=click.Choice(["round", "truncate"]), default=None,
              help="How the tool quantised flow to u8 (the files do not say; recorded, and followed when the "
                   "store is read). Default: the layout's usual writer's (mmaction2: truncate, as its "
                   "flow_extraction.py; the others: round), or for a `flowprep export` the store's own.")
@click.option("--out", default="flows.h5", show_default=True, type=click.Path(path_type=Path),
              help="Store file to write.")
@click.option("--codec", type=click.Choice(list(CODECS)), default=DEFAULT_IMPORT_CODEC, show_default=True,
              help="jpeg-xy keeps the JPEGs as read; jpeg encodes each field again as one x | y image; raw pixels.")
@click.option("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, show_default=True, help="With --codec jpeg.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel videos (default: number of CPU cores).")
@click.option("--allow-missing", is_flag=True, help="Import what is there when split files name absent videos.")
@click.option("--overwrite", is_flag=True, help="Discard the existing store and unfinished work; start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
def import_(layout_name, frames, flow, splits_dir, bound, rounding, out, codec, jpeg_quality, jobs, allow_missing,
            overwrite, no_progress, summary_json):
    """Import frames and flow another tool wrote into a store like extract's. Re-run to resume.

    Every video's files are checked against the layout's numbering and count rules; a video that breaks them
    (missing frames, gaps, x and y counts that differ, 0- vs 1-based names) is recorded as failed with the
    reason. Exit status: 0 when every video was imported; 1 when any failed (they are named) or the folders
    or the store cannot be used; 2 on a bad option value.
    """
    from flowprep.interop.importing import ImportConfig, import_frames

    def run():
        cfg = ImportConfig(layout=layout_name, frames=frames, out=out, flow=flow, splits_dir=splits_dir, bound=bound,
                           rounding=rounding, codec=codec, jpeg_quality=jpeg_quality,
                           jobs=jobs if jobs is not None else default_jobs(), allow_missing=allow_missing,
                           overwrite=overwrite, progress=not no_progress)
        return import_frames(cfg)

    _run_and_report(run, out, summary_json)


@main.command()
@click.option("--layout", "layout_name", required=True,
              type=click.Choice([n for n, lay in LAYOUTS.items() if lay.lists is not None]),
              help="Names, numbering and lists to write: mmaction2 rawframes or TSN's dense_flow.")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, show_default=True,
              help="For images the store does not keep as JPEGs of their own (codec jpeg's flow, codec raw).")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel videos (default: number of CPU cores).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def export(layout_name, store, out, jpeg_quality, jobs, no_progress):
    """Write a store's frames and flow as another tool's rawframes, with its annotation lists, into OUT/.

    mmaction2: OUT/rawframes/<Class>/<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg (start_index
    1) and OUT/<dataset>_{train,val}_split_<k>_rawframes.txt (RGB) / _flow.txt lines "<Class>/<video>
    <total_frames> <label>", 0-based labels. Re-run to finish a stopped export. Exit status: 0 when every
    video was written; 1 when any failed or the store cannot be read; 2 on a bad option or an OUT holding
    other files.
    """
    from flowprep.interop.exporting import export_store, summary_text as export_text

    with _errors():
        summary = export_store(store, out, layout_name, jobs=jobs if jobs is not None else default_jobs(),
                               jpeg_quality=jpeg_quality, progress=not no_progress)
    click.echo(export_text(summary))
    sys.exit(0 if summary.ok else 1)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(store, as_json):
    """Summary of a store: counts, settings, failures, videos that decoded short. Exit 1 if unreadable."""
    from flowprep.inspection import info_text, store_info

    with _errors():
        data = store_info(store)
    click.echo(json.dumps(data, indent=1) if as_json else info_text(data))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--no-progress", is_flag=True)
def verify(store, no_progress):
    """Re-read every record, check counts and checksums. Exit 1 on any problem (or an unreadable store)."""
    from flowprep.inspection import short_videos, verify as run_verify

    with _errors():
        problems = run_verify(store, progress=not no_progress)
        notes = short_videos(store)
    for n in notes:
        click.echo(f"NOTE {n['video_id']}: decoded {n['decoded']} of the {n['announced']} frames its container "
                   f"announces (short by {n['short_by']}, within the accepted shortfall)")
    for p in problems:
        click.echo(f"PROBLEM {p}")
    click.echo(f"{store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("video_id")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Image file to write (.png, .jpg).")
@click.option("--frames", "count", type=click.IntRange(min=1), default=4, show_default=True,
              help="Frames (and flow fields) to show, spread over the video.")
def show(store, video_id, out, count):
    """Picture of a video: RGB frames above their colour-coded flow. Exit 1 if the store or video is not
    there, 2 on a bad option."""
    from flowprep.inspection import show as run_show

    with _errors():
        path = run_show(store, video_id, out, count)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Master file to write; must not be one of the shards.")
@click.option("--partial", is_flag=True, help="Merge even when some shards of the I/N series are not given.")
def merge(shards, out, partial):
    """Write a master file that reads finished shard stores as one store (no data is copied).

    Every shard of the series (1/N .. N/N) must be given, each once, unless --partial. Exit status 1 when
    the shards do not fit together (other settings, overlap, missing shards), 2 on misuse.
    """
    from flowprep.store.reader import FlowStore
    from flowprep.store.writer import write_master

    with _errors():
        path = write_master(out, shards, partial=partial)
        with FlowStore(path) as store:
            click.echo(f"{path}: {len(store.video_ids)} videos from {len(shards)} shard(s)")
            absent = store.missing_shards
    if absent:
        click.echo(f"warning: shard {', '.join(absent)} not merged (--partial): the store lacks their videos",
                   err=True)


@main.command()
@click.option("--algo", type=click.Choice(list(ALGORITHMS)), default="tvl1", show_default=True)
def params(algo):
    """The flow parameters of an algorithm, their defaults and the values --param accepts."""
    from flowprep.flow.params import describe

    for line in describe(algo):
        click.echo(line)


if __name__ == "__main__":
    main()
