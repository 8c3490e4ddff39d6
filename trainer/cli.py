"""Command line: `trainer run | test | config | configs`. Thin: parse, build the config, call one function.

torch is imported only inside the commands, so `trainer --help` stays fast.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from plumbing.cli import one_line_errors
from trainer.errors import ConfigError, TrainerError

STREAM = click.Choice(["spatial", "temporal"])


def _domain_errors():
    """Exception types that are the user's data or files, not a bug: shown as one message, exit 1."""
    errors: list[type[BaseException]] = [TrainerError]
    try:
        from flowprep.errors import FlowprepError

        errors.append(FlowprepError)
    except ImportError:
        pass
    try:
        from data_manifest import ManifestError

        errors.append(ManifestError)
    except ImportError:
        pass
    from trainer.scores import ScoreFileError

    errors.append(ScoreFileError)
    return tuple(errors)


def _errors(interrupted: str | Callable[[], str] = "nothing was written; re-run the same command"):
    """Config errors as usage errors (exit 2), the data's and files' as one line (exit 1), Ctrl-C as a line
    saying what was kept (exit 130)."""
    return one_line_errors(_domain_errors(), usage=(ConfigError,), interrupted=interrupted)


def _call(fn, *args, **kwargs):
    with _errors():
        return fn(*args, **kwargs)


def _resume_hint(cfg, resume, fresh) -> str:
    """What a re-run does after an interrupted `trainer run`: continue from the run's last checkpoint."""
    from trainer.checkpoint import LAST

    last = cfg.run_dir / LAST
    if not last.is_file():
        return (f"no checkpoint had been written yet ({last} is written at each validation), so a re-run "
                "starts the training again")
    # a re-run with --fresh would delete that checkpoint; one with --resume would start from the other file
    how = "the same command" if not (fresh or resume) else \
        f"the same command without {'--fresh' if fresh else '--resume'}"
    return (f"re-run {how} to continue from {last} (the last checkpoint; the epochs after it are trained "
            "again, and a finished training goes straight to the test protocol)")


def _config(stream, config, sets, data, split, out):
    from trainer.config import load_config, parse_set

    return load_config(stream, config, parse_set(sets), {"data": data, "split": split, "out": out})


def _common(f):
    f = click.option("--out", default=None, help="Runs folder; the run lives in OUT/STREAM-splitK.  "
                     "[default: runs]")(f)
    f = click.option("--split", type=int, default=None, help="Split 1..3 of the train/test lists.  [default: 1]")(f)
    f = click.option("--data", default=None, help="Flow store from `flowprep extract`.  [default: flows.h5]")(f)
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override one config key (repeatable): any key for run and config (e.g. --set "
                     "lr=0.001 --set arch=resnet18), test-time keys for test (e.g. --set test_frames=19).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twostream-toolkit")
def main() -> None:
    """Train and test the spatial (RGB) and temporal (optical flow) streams from a flow store.

    \b
    trainer run temporal                       # in the folder where `flowprep extract` wrote flows.h5
    trainer run spatial --config ucf101_resnet101_spatial --set micro_batch=64
    torchrun --nproc_per_node=8 -m trainer run temporal --config ucf101_vgg16_temporal
    trainer test temporal                      # the 25 x 10-view test protocol -> scores_test.npz
    """


@main.command()
@click.argument("stream", type=STREAM)
@click.option("--config", "config", default=None, metavar="FILE|NAME",
              help="TOML config file, or the name of a shipped one (see `trainer configs`).")
@_common
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Resume from this checkpoint (default: the run's own checkpoint_last.pt, if present).")
@click.option("--fresh", is_flag=True, help="Delete this run's checkpoints, log and scores and start over.")
@click.option("--no-test", is_flag=True, help="Skip the test protocol at the end.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run(stream, config, sets, data, split, out, resume, fresh, no_test, no_progress):
    """Train STREAM (spatial | temporal), then run the test protocol with the best checkpoint.

    Re-running the same command continues an interrupted (Ctrl-C) or killed run from its last checkpoint.
    Exit status: 0 done, 1 data/file problem (the message says which and the fix), 2 bad options or config,
    130 interrupted.
    """
    from trainer.run import run as run_training

    cfg = _call(_config, stream, config, sets, data, split, out)
    with _errors(lambda: _resume_hint(cfg, resume, fresh)):
        run_training(cfg, resume=resume, fresh=fresh, test=not no_test, progress=not no_progress)


@main.command()
@click.argument("stream", type=STREAM)
@_common
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to test (default: OUT/STREAM-splitK/checkpoint_best.pt).")
@click.option("--subset", type=click.Choice(["test", "val", "both"]), default="test", show_default=True,
              help="val = the hold-out from the train list (for fusion weights); test = the test list.")
@click.option("--no-progress", is_flag=True)
def test(stream, sets, data, split, out, checkpoint, subset, no_progress):
    """Test protocol: per video N frames or stacks x 10 crops; raw logits of every view -> scores_SUBSET.npz.

    The scores go to OUT/STREAM-splitK; a --checkpoint of another run is refused there when that folder
    holds checkpoints of its own (pass --out to give it a folder of its own).

    Only test-time keys can be --set (the error of any other key names them); the rest comes from the
    checkpoint.
    """
    from trainer.config import parse_set
    from trainer.testing import resolve_test_config, test as run_test
    from trainer.checkpoint import BEST

    base = _call(_config, stream, None, (), None, split, out)
    path = checkpoint or base.run_dir / BEST
    overrides = _call(parse_set, sets)
    if data is not None:
        overrides["data"] = data
    cfg = _call(resolve_test_config, stream, path, base.out, overrides, split)
    which = ("val", "test") if subset == "both" else (subset,)
    with _errors("score files are written whole or not at all, so none is half-written; re-run the same "
                 "command to run the test protocol again (it starts over)"):
        results = run_test(cfg, path, which=which, progress=not no_progress)
    if not results:
        click.echo(f"nothing tested: the {subset} subset of split {cfg.split} is empty")


@main.command("config")
@click.argument("stream", type=STREAM)
@click.option("--config", "config", default=None, metavar="FILE|NAME")
@_common
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
def show_config(stream, config, sets, data, split, out, as_json):
    """Print the resolved config of a run (presets filled in) without training."""
    cfg = _call(_config, stream, config, sets, data, split, out)
    click.echo(json.dumps({**cfg.to_dict(), "derived": cfg.derived()}, indent=1) if as_json else cfg.to_toml(),
               nl=as_json)


@main.command()
def configs() -> None:
    """List the shipped configs (use the name with --config)."""
    from trainer.config import shipped_configs

    for name, path in shipped_configs().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        click.echo(f"{name:28s} {first}")


if __name__ == "__main__":
    main()
