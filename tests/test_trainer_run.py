"""End to end on the synthetic flow store: outputs, score-file coverage, `trainer test`, DDP equivalence,
resume after SIGKILL, config mismatch on a re-run; and (slow) the demo's temporal stream learning motion.

One reference run (1 process, in a subprocess) is shared by the tests that compare against it. Its config
has no BatchNorm adaptation (bn = "frozen") and no dropout: BN statistics and dropout masks are computed
per process, so with them a 2-process run is not the same computation as a 1-process run.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trainer.cli import main
from trainer.scores import read_scores

REPO = Path(__file__).resolve().parents[1]
# The tolerance of the DDP test: gradients are summed in another order (all-reduce over 2 processes of 2
# micro-batches each, instead of 4 micro-batches in one process), so parameters differ by float32 rounding.
# Observed: 1.5e-8 after 6 steps of lr 0.02 that move weights by ~1e-3.
DDP_ATOL = 1e-6

REFERENCE_CONFIG = """\
arch = "resnet18"
pretrained = "none"
input_size = 32
flow_length = 3
scales = [1.0, 0.75]
bn = "frozen"          # BN statistics would depend on how the batch is split between processes
dropout = 0.0          # dropout masks are drawn per process
batch_size = 8         # effective batch: 1 process x 2 x 4 accumulation, or 2 processes x 2 x 2
micro_batch = 2
samples_per_video = 2  # 8 train videos x 2 = 16 samples = 2 iterations per epoch
schedule = "cosine"
epochs = 3
lr = 0.02
workers = 0
val_frames = 1
test_frames = 2
test_crops = 10
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _command(store, out, config, *extra, nproc=1):
    args = ["-m", "trainer", "run", "temporal", "--config", str(config), "--data", str(store), "--out", str(out),
            "--no-progress", *extra]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _run(cmd, timeout=180):
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    return state["model"]


@pytest.fixture(scope="module")
def ref_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "ref.toml"
    path.write_text(REFERENCE_CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(synth_store, ref_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = _run(_command(synth_store, out, ref_config))
    return out / "temporal-split1", proc.stdout


def test_run_writes_the_documented_outputs(reference, ref_config):
    from trainer.config import config_from_dict, load_config
    import tomllib

    run_dir, stdout = reference
    for name in ("config.toml", "checkpoint_last.pt", "checkpoint_best.pt", "log.csv", "curves.png",
                 "scores_test.npz", "scores_val.npz"):
        assert (run_dir / name).is_file(), name
    saved = config_from_dict(tomllib.loads((run_dir / "config.toml").read_text()), "config.toml")
    assert saved == load_config("temporal", ref_config, options={"data": saved.data, "out": saved.out})
    assert saved.in_channels == 6
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert all(0.0 <= float(r["data_wait"]) <= 1.0 and r["val_top1"] != "" for r in rows)
    last = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "config"} <= set(last)
    assert last["epoch"] == 3 and last["config"]["flow_length"] == 3
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1" in stdout and "chance 25.0%" in stdout


def test_score_files_cover_every_video_exactly_once(reference, synth_store):
    from flowprep import FlowStore

    run_dir, _ = reference
    manifest = FlowStore(synth_store).manifest
    test, val = read_scores(run_dir / "scores_test.npz"), read_scores(run_dir / "scores_val.npz")
    assert test.video_ids == manifest.ids(1, "test")
    assert val.video_ids == manifest.ids(1, "val")
    assert not set(val.video_ids) & set(test.video_ids)
    assert not set(val.video_ids) & set(manifest.ids(1, "train-val"))  # selection data is not trained on
    assert test.labels.tolist() == [manifest.by_id(v).label for v in test.video_ids]
    assert test.logits.shape == (8, 2, 10, 4) and test.class_names == manifest.classes
    meta = test.meta
    assert (meta["stream"], meta["split"], meta["subset"], meta["frames"], meta["crops"]) == \
        ("temporal", 1, "test", 2, 10)
    assert meta["crop_names"][:5] == ["top_left", "top_right", "bottom_left", "bottom_right", "center"]
    assert meta["crop_names"][5] == "top_left_flip"
    assert meta["aggregation"] == "none (raw logits per view)"
    assert meta["checkpoint"].endswith("checkpoint_best.pt") and meta["store"] == str(Path(synth_store).resolve())
    assert meta["config"]["arch"] == "resnet18" and val.meta["subset"] == "val"


def test_trainer_test_reproduces_the_run_scores(reference, synth_store, tmp_path):
    run_dir, _ = reference
    result = CliRunner().invoke(main, ["test", "temporal", "--data", str(synth_store), "--out", str(tmp_path),
                                       "--checkpoint", str(run_dir / "checkpoint_best.pt"), "--subset", "both",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    for subset in ("test", "val"):
        again = read_scores(tmp_path / "temporal-split1" / f"scores_{subset}.npz")
        first = read_scores(run_dir / f"scores_{subset}.npz")
        assert again.video_ids == first.video_ids
        np.testing.assert_allclose(again.logits, first.logits, atol=1e-4)
    bad = CliRunner().invoke(main, ["test", "temporal", "--data", str(synth_store), "--out", str(tmp_path),
                                    "--checkpoint", str(run_dir / "checkpoint_best.pt"), "--set", "lr=0.1"])
    assert bad.exit_code == 2 and "cannot be changed at test time" in bad.output


def test_two_gloo_processes_end_with_the_parameters_of_one(reference, synth_store, ref_config, tmp_path):
    from trainer.config import load_config
    from trainer.models import build_model

    run_dir, _ = reference
    proc = _run(_command(synth_store, tmp_path, ref_config, nproc=2), timeout=240)
    assert "2 process(es) on cpu; batch 8 = 2 x 2 x 2 accumulation" in proc.stdout
    one, two = _params(run_dir), _params(tmp_path / "temporal-split1")
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    assert worst < DDP_ATOL, f"largest parameter difference {worst:.3g}"
    # ... while training moved the weights far more than the tolerance (the same seeded initialisation)
    torch.manual_seed(0)
    init = build_model(load_config("temporal", ref_config), 4)[0].state_dict()
    moved = max((one[k].float() - init[k].float()).abs().max().item() for k in one)
    assert moved > 1000 * DDP_ATOL
    s1, s2 = read_scores(run_dir / "scores_test.npz"), read_scores(tmp_path / "temporal-split1" / "scores_test.npz")
    assert s2.video_ids == s1.video_ids  # distributed test: every video once, in order
    assert s2.meta["processes"] == 2
    np.testing.assert_allclose(s2.logits, s1.logits, atol=1e-4)


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(reference, synth_store, ref_config, tmp_path):
    run_dir, _ = reference
    cmd = _command(synth_store, tmp_path, ref_config)
    ckpt = tmp_path / "temporal-split1" / "checkpoint_last.pt"
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= killed_at < 3
    again = _run(cmd)
    assert f"epoch {killed_at} of 3 done" in again.stdout
    with open(tmp_path / "temporal-split1" / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    ref, resumed = _params(run_dir), _params(tmp_path / "temporal-split1")
    worst = max((ref[k].float() - resumed[k].float()).abs().max().item() for k in ref)
    assert worst == 0.0, f"resumed run differs from the uninterrupted one by {worst:.3g}"
    # a re-run of a finished run trains no more
    third = _run(cmd + ["--no-test"])
    assert "epoch 3 of 3 done" in third.stdout and "training done" not in third.stdout


def test_a_rerun_with_other_settings_is_refused(reference, synth_store, ref_config):
    run_dir, _ = reference
    result = CliRunner().invoke(main, ["run", "temporal", "--config", str(ref_config), "--data", str(synth_store),
                                       "--out", str(run_dir.parent), "--set", "lr=0.5", "--no-progress"])
    assert result.exit_code == 1
    assert "other settings (lr: 0.02 in the run, 0.5 now)" in result.output and "--fresh" in result.output


def test_missing_imagenet_weights_stop_before_training(synth_store, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = CliRunner().invoke(main, ["run", "temporal", "--data", str(synth_store), "--out", str(tmp_path),
                                       "--set", "arch=resnet18", "--set", "pretrained=imagenet"])
    assert result.exit_code == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.output
    assert not (tmp_path / "temporal-split1").exists()  # nothing started, nothing left behind


@pytest.mark.parametrize("stream, sets, shape", [
    ("spatial", ["arch=resnet18", "input_size=32", "test_frames=3", "test_crops=5"], (8, 3, 5, 4)),
    ("temporal", ["arch=mc3_18", "clip_length=3", "input_size=16", "test_frames=1", "test_crops=1",
                  "val_fraction=0", "batch_size=8"], (8, 1, 1, 4)),
])
def test_spatial_and_clip_streams_run_end_to_end(synth_store, tmp_path, stream, sets, shape):
    args = ["run", stream, "--data", str(synth_store), "--out", str(tmp_path), "--no-progress",
            "--set", "pretrained=none", "--set", "batch_size=4", "--set", "schedule=step", "--set", "epochs=1",
            "--set", "lr=0.01", "--set", "workers=1", "--set", "val_frames=1"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    scores = read_scores(tmp_path / f"{stream}-split1" / "scores_test.npz")
    assert scores.logits.shape == shape and scores.meta["stream"] == stream


@pytest.mark.slow
def test_demo_temporal_stream_learns_the_motion_classes(tmp_path):
    """The shipped demo config on a 6-class synthetic set: temporal well above chance (1/6)."""
    from data_manifest import make_synthetic
    from flowprep.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    videos = make_synthetic(tmp_path / "synth", classes=6, videos_per_class=12)
    summary = extract(ExtractConfig(videos=videos, out=tmp_path / "flows.h5", algo="farneback", jobs=2,
                                    resize=parse_size("64x48"), progress=False))
    proc = _run([sys.executable, "-m", "trainer", "run", "temporal", "--config", "demo", "--data",
                 str(summary.store), "--out", str(tmp_path / "runs"), "--no-progress"], timeout=600)
    scores = read_scores(tmp_path / "runs" / "temporal-split1" / "scores_test.npz")
    video = scores.logits.mean(axis=(1, 2)).argmax(axis=1)
    accuracy = float((video == scores.labels).mean())
    assert accuracy >= 0.6, proc.stdout
