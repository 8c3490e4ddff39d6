"""The data-manifest command line: synth, build, check, info, splits. Thin: parse, call the library, report."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from data_manifest.build import DATASETS, BuildInfo, build
from data_manifest.errors import ManifestError
from data_manifest.grouping import NO_GROUPS, NUM_SPLITS, SEED, TEST_FRACTION, GroupRule, SplitRule
from data_manifest.holdout import DEFAULT_VAL_FRACTION, DEFAULT_VAL_SEED
from data_manifest.manifest import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_UNUSED, SUBSET_VAL, Manifest
from data_manifest.synth import (CLASS_NAMES, DEFAULT_CLASSES, DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIZE,
                                 DEFAULT_VIDEOS_PER_CLASS, make_synthetic)
from plumbing.cli import one_line_errors

_SUBSET_LABELS = ((SPLIT_TRAIN, "train"), (SPLIT_TEST, "test"), (SPLIT_UNUSED, "unused"), (SPLIT_NONE, "unlisted"))


def _domain_errors(interrupted: str = "nothing was written; re-run the same command"):
    """ManifestError as one line (exit 1); Ctrl-C as a line saying what was kept (exit 130)."""
    return one_line_errors((ManifestError,), interrupted=interrupted)


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 160x120, got {value!r}") from None
    return w, h


def _summary(m: Manifest, info: BuildInfo | None = None) -> list[str]:
    """Human-readable lines: where, how many, per-split counts (with the validation hold-out), problems."""
    lines = [f"dataset:  {m.dataset}"]
    if info is not None:
        lines.append(f"folder:   {info.video_root}")
        lines.append(f"splits:   {info.splits_dir if info.splits_dir else '(none)'}")
        if info.skipped:
            kinds = Counter(Path(name).suffix.lower() or "(no extension)" for name in info.skipped)
            lines.append(f"skipped:  {len(info.skipped)} files in class folders that are not videos by their "
                         f"extension ({', '.join(f'{k} {n}' for k, n in kinds.most_common())}), e.g. {info.skipped[0]}")
    if m.split_method:  # it names the group rule too
        lines.append(f"split:    {m.split_method}")
    elif m.group_rule:
        lines.append(f"groups:   {m.group_rule}")
    if m.group_rule == NO_GROUPS and m.split_method:
        lines.append("          (no groups: clips cut from one recording may sit in both train and test, which "
                     "inflates test accuracy; give --group-regex)")
    lines.append(f"classes:  {len(m.classes)}")
    lines.append(f"videos:   {len(m)}")
    for k in range(1, m.num_splits + 1):
        counts = Counter(r.splits[k - 1] for r in m)
        parts = [f"{label} {counts[s]}" for s, label in _SUBSET_LABELS if counts[s]]
        if counts[SPLIT_TRAIN]:
            parts.insert(1, f"(val {len(m.ids(k, SUBSET_VAL))})")
        lines.append(f"split {k}:  " + " ".join(parts))
    lines.append(f"problems: {len(m.problems) or 'none'}")
    lines += [f"  - {p}" for p in m.problems]
    return lines


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build and check dataset manifests (UCF101, HMDB51, class folders); make a synthetic dataset."""


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write UCF-101/ and ucfTrainTestlist/ into.")
@click.option("--classes", default=DEFAULT_CLASSES, show_default=True, type=click.IntRange(2, len(CLASS_NAMES)),
              help="Number of motion classes.")
@click.option("--videos-per-class", default=DEFAULT_VIDEOS_PER_CLASS, show_default=True,
              type=click.IntRange(min=3))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--frames", default=DEFAULT_FRAMES, show_default=True, type=click.IntRange(min=2),
              help="Frames per video.")
@click.option("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", show_default=True, callback=_parse_size,
              help="Frame size WIDTHxHEIGHT.")
@click.option("--fps", default=DEFAULT_FPS, show_default=True, type=click.FloatRange(min=0, min_open=True))
def synth(out_dir: Path, classes: int, videos_per_class: int, seed: int, frames: int, size: tuple[int, int],
          fps: float) -> None:
    """Write a synthetic dataset (classes differ only by motion) in UCF101 layout."""
    with _domain_errors(f"{out_dir} holds part of a synthetic dataset; re-run the same command to write it "
                        "whole (it replaces the part)"):
        out = make_synthetic(out_dir, classes=classes, videos_per_class=videos_per_class, seed=seed, size=size,
                             frames=frames, fps=fps)
        m, info = build(out)
    click.echo(f"wrote {out}")
    click.echo("\n".join(_summary(m, info)))


def _dataset_options(f):
    f = click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Folder with the split files, if they are not found under ROOT.")(f)
    f = click.option("--dataset", type=click.Choice(DATASETS), default="auto", show_default=True,
                     help="auto: classInd.txt -> ucf101, *_test_split1.txt -> hmdb51, else folder.")(f)
    return click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))(f)


def _split_options(f):
    """Grouping and the generated split (used only when the dataset has no split files)."""
    f = click.option("--split-seed", default=SEED, show_default=True, type=int,
                     help="Seed of the generated split.")(f)
    f = click.option("--test-fraction", default=TEST_FRACTION, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Share of each class's videos in test, in the generated split.")(f)
    f = click.option("--num-splits", default=NUM_SPLITS, show_default=True, type=click.IntRange(min=1),
                     help="Splits to generate when there are no split files.")(f)
    return click.option("--group-regex", default=None, metavar="REGEX",
                        help="Videos whose names give the same match (its first group, if any) share footage and "
                             "stay on one side of every split, e.g. '^(.*)_clip[0-9]+$'. Default: UCF101's _gNN_ "
                             "token when the names carry it, else each video is its own group.")(f)


def _rules(group_regex: str | None, num_splits: int, test_fraction: float, split_seed: int):
    return GroupRule(group_regex), SplitRule(num_splits, test_fraction, split_seed)


@main.command("build")
@_dataset_options
@_split_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest file to write.  [default: ./<ROOT name>.manifest.tsv]")
@click.option("--allow-missing", is_flag=True, help="Leave out videos named by split files but absent on disk.")
def build_cmd(root: Path, dataset: str, splits_dir: Path | None, out: Path | None, allow_missing: bool,
              group_regex: str | None, num_splits: int, test_fraction: float, split_seed: int) -> None:
    """Scan ROOT and its split files, print a summary and write the manifest. Without split files a seeded split
    is made, stratified by class, each group of videos on one side (see --group-regex)."""
    with _domain_errors("the manifest is written whole or not at all, so nothing was written; re-run the same "
                        "command"):
        group_rule, split_rule = _rules(group_regex, num_splits, test_fraction, split_seed)
        m, info = build(root, dataset, splits_dir, allow_missing=allow_missing, group_rule=group_rule,
                        split_rule=split_rule)
        out = out or Path(f"{root.resolve().name}.manifest.tsv")
        m.write(out)
    click.echo("\n".join(_summary(m, info)))
    click.echo(f"wrote {out}")


@main.command()
@_dataset_options
@_split_options
def check(root: Path, dataset: str, splits_dir: Path | None, group_regex: str | None, num_splits: int,
          test_fraction: float, split_seed: int) -> None:
    """Like build, without writing; exit status 1 on any problem (missing videos included)."""
    with _domain_errors():
        group_rule, split_rule = _rules(group_regex, num_splits, test_fraction, split_seed)
        m, info = build(root, dataset, splits_dir, allow_missing=True, group_rule=group_rule,
                        split_rule=split_rule)
    click.echo("\n".join(_summary(m, info)))
    if m.problems:
        click.echo(f"check failed: {len(m.problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo("check passed")


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def info(manifest: Path) -> None:
    """Print the summary of a manifest file (validation counts use the default hold-out)."""
    with _domain_errors():
        m = Manifest.read(manifest)
    click.echo("\n".join(_summary(m)))
    click.echo(f"hold-out: val_fraction {DEFAULT_VAL_FRACTION}, seed {DEFAULT_VAL_SEED} (see docs/data_manifest.md)")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write classInd.txt, trainlist0K.txt and testlist0K.txt into.")
@click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with the split files, if they are not found under DATASET.")
@_split_options
def splits(dataset: Path, out_dir: Path, splits_dir: Path | None, group_regex: str | None, num_splits: int,
           test_fraction: float, split_seed: int) -> None:
    """Write the splits of DATASET (a dataset folder, or a manifest file) as UCF101 split files, to edit them.

    For a folder without split files these are the generated splits (the same options give the same split);
    pass the folder back with --splits (or put it in DATASET/ucfTrainTestlist) to use the edited files.
    """
    from data_manifest.splits import write_ucf101

    with _domain_errors():
        if dataset.is_dir():
            group_rule, split_rule = _rules(group_regex, num_splits, test_fraction, split_seed)
            m = build(dataset, "auto", splits_dir, allow_missing=True, group_rule=group_rule,
                      split_rule=split_rule)[0]
        else:
            m = Manifest.read(dataset)
        written = write_ucf101(out_dir, m)
    click.echo(f"split:    {m.split_method or 'from the split files of ' + str(dataset)}")
    click.echo(f"groups:   {m.group_rule or '(not recorded)'}")
    for k in range(1, m.num_splits + 1):
        counts = Counter(r.splits[k - 1] for r in m)
        click.echo(f"split {k}:  train {counts[SPLIT_TRAIN]} test {counts[SPLIT_TEST]}")
    click.echo(f"wrote {len(written)} files in {out_dir} (CRLF, as the official ucfTrainTestlist); use them with "
               f"--splits {out_dir}")
