"""What the commands print into a log file (no carriage returns: plain progress lines), and after Ctrl-C
(what was kept and how to go on, exit status 130, instead of click's bare "Aborted!")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from tests.test_fusion_cli import make_split

REPO = Path(__file__).resolve().parents[1]
# A command line with the plain-line interval at 0 s, so that a run of a few seconds prints progress lines
# (the default, 30 s, would print none); the command itself is unchanged.
EVERY_LINE = ("import sys, plumbing.progress as p; p.LOG_EVERY_S = 0.0; sys.argv[0] = {name!r}; "
              "from {cli} import main; main()")

TINY = """\
arch = "resnet18"
pretrained = "none"
input_size = 32
flow_length = 3
scales = [1.0, 0.75]
batch_size = 4
samples_per_video = 2
schedule = "cosine"
epochs = 3
lr = 0.02
workers = 1
val_frames = 1
test_frames = 2
test_crops = 5
flip = false
"""


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _command(cli: str, name: str, *args) -> list[str]:
    return [sys.executable, "-c", EVERY_LINE.format(name=name, cli=cli), *map(str, args)]


def _run_to_file(cmd, log: Path, timeout=240) -> subprocess.CompletedProcess:
    """Run with stdout and stderr both going to ``log``: a file, as under nohup or a batch system."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=_env(), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return proc


def test_a_training_run_redirected_to_a_file_logs_plain_progress_lines(synth_store, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("epochs = 3", "epochs = 1"))
    log = tmp_path / "train.log"
    proc = _run_to_file(_command("trainer.cli", "trainer", "run", "temporal", "--config", config, "--data",
                                 synth_store, "--out", tmp_path / "runs"), log)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text  # no bar redrawn in place, no cursor movement
    lines = text.splitlines()
    # periodic lines of the epoch (4 iterations of batch 4) with rate, ETA and the postfix
    assert any(ln.startswith("epoch 1/1: 1/4 iterations (25%), ") and "ETA" in ln and "loss=" in ln for ln in lines)
    assert any(ln.startswith("test protocol (test): 8/8 videos (100%)") for ln in lines), text
    assert any(ln.startswith("validation: 8/8 videos (100%)") for ln in lines), text
    assert any(ln.startswith("temporal test: 8 videos x 2 x 5 views") for ln in lines)  # the summary follows


def test_data_manifest_and_fusion_write_no_carriage_returns_to_a_file(tmp_path):
    make_split(tmp_path / "runs", 1)
    commands = [
        _command("data_manifest.cli", "data-manifest", "synth", "--out", tmp_path / "synth", "--classes", 3,
                 "--videos-per-class", 3, "--frames", 4, "--size", "48x32"),
        _command("data_manifest.cli", "data-manifest", "build", tmp_path / "synth", "--out", tmp_path / "m.tsv"),
        _command("data_manifest.cli", "data-manifest", "check", tmp_path / "synth"),
        _command("data_manifest.cli", "data-manifest", "info", tmp_path / "m.tsv"),
        _command("fusion.cli", "fusion", "report", "--split", 1, "--runs", tmp_path / "runs", "--bootstrap", 50),
    ]
    for i, cmd in enumerate(commands):
        log = tmp_path / f"{i}.log"
        proc = _run_to_file(cmd, log, timeout=120)
        text = log.read_text()
        assert proc.returncode == 0, text
        assert text.strip() and "\r" not in text, cmd


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_a_training_run_says_how_to_resume_and_the_rerun_does(synth_store, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the DataLoader worker gets it too)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("epochs = 3", "epochs = 4"))
    run_dir = tmp_path / "runs" / "temporal-split1"
    cmd = [sys.executable, "-m", "trainer", "run", "temporal", "--config", str(config), "--data", str(synth_store),
           "--out", str(tmp_path / "runs"), "--no-test"]
    log = tmp_path / "interrupted.log"
    with open(log, "w") as f:
        # a shell that started the tests in the background left SIGINT ignored, and children inherit that:
        # restore the default, as a terminal's foreground job has it
        proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_sigint_default)
        deadline = time.time() + 120
        while not (run_dir / "checkpoint_last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 130, text
    message = text[text.index("interrupted: "):]
    assert f"re-run the same command to continue from {run_dir / 'checkpoint_last.pt'}" in message
    assert "Aborted!" not in text and "Traceback" not in text and "leaked" not in text, text
    assert not list(run_dir.glob(".checkpoint_*.tmp"))  # a checkpoint being written is removed, not left half
    again = subprocess.run(cmd + ["--no-progress"], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming " in again.stdout and " of 4 done" in again.stdout


def test_ctrl_c_hints_name_what_a_rerun_would_do(tmp_path, monkeypatch):
    """--fresh and --resume change what "the same command" does: the hint says to drop them. No checkpoint
    yet: the hint says a re-run starts again. `trainer test`, fusion and data-manifest: nothing half-written."""
    import trainer.run
    from trainer.cli import main as trainer_main

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.run, "run", interrupt)
    args = ["run", "temporal", "--out", str(tmp_path)]
    fresh_start = CliRunner().invoke(trainer_main, args)
    assert fresh_start.exit_code == 130
    assert "no checkpoint had been written yet" in fresh_start.output
    assert "starts the training again" in fresh_start.output
    (tmp_path / "temporal-split1").mkdir()
    (tmp_path / "temporal-split1" / "checkpoint_last.pt").write_bytes(b"")
    for extra, how in (([], "re-run the same command to continue"),
                       (["--fresh"], "re-run the same command without --fresh to continue"),
                       (["--resume", "x.pt"], "re-run the same command without --resume to continue")):
        result = CliRunner().invoke(trainer_main, args + extra)
        assert result.exit_code == 130 and how in result.output, result.output
        assert "Aborted!" not in result.output

    import data_manifest.cli
    import fusion.cli

    monkeypatch.setattr(data_manifest.cli, "build", interrupt)
    built = CliRunner().invoke(data_manifest.cli.main, ["build", str(tmp_path), "--out", str(tmp_path / "m.tsv")])
    assert built.exit_code == 130 and "the manifest is written whole or not at all" in built.output
    monkeypatch.setattr(fusion.cli, "_report_one", interrupt)
    make_split(tmp_path / "runs", 1)
    fused = CliRunner().invoke(fusion.cli.main, ["report", "--runs", str(tmp_path / "runs")])
    assert fused.exit_code == 130 and "none is half-written; re-run the same command" in fused.output
