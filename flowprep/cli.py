"""Command line: `flowprep extract | info | verify | show | merge`. Thin: parse, call the library, map errors."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from flowprep.errors import FlowprepError


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 2/8, got {text!r}", param_hint="--shard") from None
    if not (n >= 1 and 1 <= i <= n):
        raise click.BadParameter(f"need 1 <= I <= N, got {text}", param_hint="--shard")
    return i, n


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
    """Videos -> RGB frames and optical flow in resumable HDF5 flow stores."""


@main.command()
@click.option("--videos", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: <Class>/<video> files, with UCF101 or HMDB51 split files if present.")
@click.option("--out", default="flows.h5", show_default=True, type=click.Path(path_type=Path),
              help="Store file to write (with --shard, one file per shard beside it).")
@click.option("--algo", type=click.Choice(["tvl1", "farneback"]), default="tvl1", show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Flow parameter override, e.g. --param warps=3 (see `flowprep params`).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="auto: cuda when torch sees a GPU, else cpu.")
@click.option("--backend", type=click.Choice(["opencv", "torch"]), default=None,
              help="Flow code: opencv (CPU default) or torch (batched PyTorch; the only one on cuda).")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Frame pairs per flow call with the torch backend.")
@click.option("--gpus", default=None, help="Comma-separated CUDA device ids (default: all visible).")
@click.option("--size", default="340x256", show_default=True, help="Output frame size WIDTHxHEIGHT.")
@click.option("--short-side", type=int, default=None, help="Resize the short side to this, keeping aspect ratio "
              "(instead of --size).")
@click.option("--bound", type=float, default=20.0, show_default=True, help="Flow clip bound in pixels.")
@click.option("--codec", type=click.Choice(["jpeg", "raw"]), default="jpeg", show_default=True)
@click.option("--jpeg-quality", type=int, default=95, show_default=True)
@click.option("--jobs", "-j", type=int, default=None,
              help="Parallel videos (default: number of CPU cores); decode threads with the torch backend.")
@click.option("--shard", default="1/1", show_default=True, help="Process the I-th of N deterministic parts.")
@click.option("--dataset", type=click.Choice(["auto", "ucf101", "hmdb51", "folder"]), default="auto",
              show_default=True)
@click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder with the split files, if not inside --videos.")
@click.option("--allow-missing", is_flag=True, help="Extract what is on disk when split files name absent videos.")
@click.option("--overwrite", is_flag=True, help="Discard the existing store and unfinished work; start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
def extract(videos, out, algo, params, device, backend, batch_size, gpus, size, short_side, bound, codec,
            jpeg_quality, jobs, shard, dataset, splits_dir, allow_missing, overwrite, no_progress, summary_json):
    """Extract RGB frames and flow of every video into one store. Re-run the same command to resume.

    Exit status: 0 when every video was extracted, 1 when any failed (they are named), 2 on misuse.
    """
    from data_manifest import ManifestError

    from flowprep.decode import Resize, parse_size
    from flowprep.pipeline import ExtractConfig, extract as run_extract, summary_json as to_json, summary_text

    try:
        resize = Resize(None, None, short_side) if short_side else parse_size(size)
        gpu_ids = tuple(int(g) for g in gpus.split(",")) if gpus else None
        cfg = ExtractConfig(videos=videos, out=out, algo=algo, params=_parse_params(params), device=device,
                            backend=backend, batch_size=batch_size, gpus=gpu_ids,
                            bound=bound, codec=codec, jpeg_quality=jpeg_quality, resize=resize,
                            jobs=jobs or os.cpu_count() or 1, shard=_parse_shard(shard), dataset=dataset,
                            splits_dir=splits_dir, allow_missing=allow_missing, overwrite=overwrite,
                            progress=not no_progress)
        summary = run_extract(cfg)
    except (FlowprepError, ManifestError) as exc:
        raise _fail(exc) from exc
    click.echo(summary_text(summary))
    if summary_json:
        summary_json.write_text(to_json(summary))
    sys.exit(0 if summary.ok else 1)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(store, as_json):
    """Summary of a store: counts, settings, failures."""
    from flowprep.inspect import info_text, store_info

    try:
        data = store_info(store)
    except FlowprepError as exc:
        raise _fail(exc) from exc
    click.echo(json.dumps(data, indent=1) if as_json else info_text(data))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--no-progress", is_flag=True)
def verify(store, no_progress):
    """Re-read every record, check counts and checksums. Exit 1 on any problem."""
    from flowprep.inspect import verify as run_verify

    try:
        problems = run_verify(store, progress=not no_progress)
    except FlowprepError as exc:
        raise _fail(exc) from exc
    for p in problems:
        click.echo(f"PROBLEM {p}")
    click.echo(f"{store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("video_id")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--frames", "count", type=int, default=4, show_default=True)
def show(store, video_id, out, count):
    """Picture of a video: RGB frames above their colour-coded flow."""
    from flowprep.inspect import show as run_show

    try:
        path = run_show(store, video_id, out, count)
    except FlowprepError as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {path}")


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Master file to write.")
def merge(shards, out):
    """Write a master file that reads finished shard stores as one store (no data is copied)."""
    from flowprep.store import FlowStore, write_master

    try:
        path = write_master(out, shards)
        with FlowStore(path) as store:
            click.echo(f"{path}: {len(store.video_ids)} videos from {len(shards)} shard(s)")
    except FlowprepError as exc:
        raise _fail(exc) from exc


@main.command()
@click.option("--algo", type=click.Choice(["tvl1", "farneback"]), default="tvl1")
def params(algo):
    """The flow parameters of an algorithm and their defaults."""
    from flowprep.flow import DEFAULTS

    for key, value in DEFAULTS[algo].items():
        click.echo(f"{key}={value}")


if __name__ == "__main__":
    main()
