"""`flowprep extract` end to end: bad input, parity with OpenCV, resume after SIGKILL, shards, CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore, StoreError, quantize
from flowprep.cli import main as cli
from flowprep.decode import Resize, VideoReader
from flowprep.flow import OpenCVFlow
from tests.videos import moving_video, truncate

SIZE = "48x36"


def make_dataset(root: Path, bad: bool = True, classes: int = 2, per_class: int = 3, frames: int = 6) -> Path:
    """Plain `<Class>/<video>` tree of small moving-texture videos, plus one of every kind of bad file."""
    for c in range(classes):
        for i in range(per_class):
            moving_video(root / f"Class{c}" / f"v_{c}_{i}.avi", n=frames, dx=1.0 + c, dy=0.5 * i, seed=10 * c + i)
    if bad:
        (root / "Class0" / "empty.avi").write_bytes(b"")
        (root / "Class0" / "notes.avi").write_text("not a video\n" * 50)
        truncate(moving_video(root / "Class1" / "cut.avi", n=30, seed=99), 0.5)
        moving_video(root / "Class1" / "single.avi", n=1, seed=98)
        (root / "Class1" / "header.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(200))
    return root


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """One extraction (farneback, raw codec, 2 jobs) of a dataset with every kind of bad file."""
    tmp = tmp_path_factory.mktemp("extract")
    videos = make_dataset(tmp / "videos")
    out = tmp / "flows.h5"
    result = run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "farneback",
                     "--codec", "raw", "--jobs", 2, "--no-progress", "--summary-json", tmp / "summary.json")
    return videos, out, result, json.loads((tmp / "summary.json").read_text())


def test_bad_files_are_recorded_and_the_run_goes_on(extracted):
    videos, out, result, summary = extracted
    assert result.exit_code == 1, result.output
    assert "expected 11, done 6" in result.output and "failed 5" in result.output
    failed = {f["video_id"]: f["reason"] for f in summary["failed"]}
    assert set(failed) == {"empty", "notes", "cut", "single", "header"}
    assert "empty file" in failed["empty"] and "cannot open" in failed["notes"]
    assert "truncated" in failed["cut"] and "decoded 1 frame" in failed["single"]
    assert "cannot open" in failed["header"]
    for vid in failed:
        assert f"FAILED {vid}" in result.output
    with FlowStore(out) as store:
        assert len(store.video_ids) == 6
        assert {f["video_id"] for f in store.failures} == set(failed)
        rec = store.record("v_1_2")
        assert rec["num_frames"] == 6 and rec["num_flows"] == 5 and rec["class_name"] == "Class1"
        assert rec["source_width"] == 64 and rec["width"] == 48 and rec["fps"] == pytest.approx(25)
        assert 0.0 <= rec["clipped_fraction"] < 0.01
        cfg = store.attrs
        assert cfg["algo"] == "farneback" and cfg["params"]["winsize"] == 15 and cfg["bound"] == 20.0
        assert cfg["codec"] == "raw" and cfg["size"] == SIZE and "k+1" in cfg["index_convention"]
        assert cfg["versions"]["opencv"]


def test_stored_flow_equals_opencv_run_directly(extracted):
    import cv2

    videos, out, _, _ = extracted
    frames = list(VideoReader(videos / "Class1" / "v_1_2.avi", Resize(48, 36)))
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flow_fn = OpenCVFlow("farneback")
    expected = np.stack([quantize(flow_fn(a, b), 20) for a, b in zip(gray, gray[1:])])
    with FlowStore(out) as store:
        assert np.array_equal(store.read_rgb("v_1_2", range(6)), np.stack(frames))
        assert np.array_equal(store.read_flow("v_1_2", range(5)), expected)
        # the motion is what was put in: +2 px/frame in x (class 1), +1 in y (video 2), at 48/64 scale
        mean = (store.read_flow("v_1_2", range(5)).astype(float)[:, 8:-8, 8:-8] * 40 / 255 - 20).mean(axis=(0, 1, 2))
        assert mean == pytest.approx([2.0 * 48 / 64, 1.0 * 48 / 64], abs=0.2)


def test_rerun_redoes_nothing_and_retries_failures(extracted, tmp_path):
    videos, out, _, _ = extracted
    result = run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "farneback",
                     "--codec", "raw", "--jobs", 1, "--no-progress", "--summary-json", tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert result.exit_code == 1
    assert summary["skipped"] == 6 and summary["frames"] == 0 and len(summary["failed"]) == 5


def test_other_settings_on_an_existing_store_are_refused(extracted):
    videos, out, _, _ = extracted
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(out), "--size", SIZE,
                                      "--algo", "tvl1", "--codec", "raw", "--no-progress"])
    assert result.exit_code == 1
    assert "other settings" in result.output and "algo" in result.output and "--overwrite" in result.output


def test_verify_info_show(extracted, tmp_path):
    _, out, _, _ = extracted
    result = run_cli("verify", out, "--no-progress")
    assert result.exit_code == 1  # the five failed videos are problems of the dataset
    assert result.output.count("failed at extraction") == 5 and "checksum" not in result.output
    info = json.loads(run_cli("info", out, "--json").output)
    assert info["videos"] == 6 and info["failed"] == 5 and info["flows"] == 30
    png = tmp_path / "v.png"
    assert run_cli("show", out, "v_0_0", "--out", png).exit_code == 0
    import cv2

    img = cv2.imread(str(png))
    assert img.shape[0] > 2 * 36 and img.shape[1] >= 4 * 48
    result = CliRunner().invoke(cli, ["show", str(out), "nope", "--out", str(png)])
    assert result.exit_code == 1 and "not in" in result.output


def test_verify_detects_damage(tmp_path):
    import h5py

    videos = make_dataset(tmp_path / "videos", bad=False, classes=1, per_class=2)
    out = tmp_path / "s.h5"
    assert run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "farneback",
                   "--jobs", 1, "--no-progress").exit_code == 0
    assert run_cli("verify", out, "--no-progress").exit_code == 0
    with h5py.File(out, "r+") as f:
        blob = f["videos/v_0_1/flow_jpeg"]
        blob[200:230] = 0  # damage bytes inside a JPEG
    result = run_cli("verify", out, "--no-progress")
    assert result.exit_code == 1 and "v_0_1" in result.output


def test_shards_cover_the_dataset_once(tmp_path):
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=3, frames=4)
    out = tmp_path / "flows.h5"
    for i in (1, 2, 3):
        r = run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "farneback",
                    "--jobs", 1, "--shard", f"{i}/3", "--no-progress")
        assert r.exit_code == 0, r.output
    shards = [tmp_path / f"flows-{i}of3.h5" for i in (1, 2, 3)]
    sizes = []
    for s in shards:
        with FlowStore(s) as store:
            sizes.append(len(store))
    assert sizes == [2, 2, 2]
    assert run_cli("merge", "--out", out, *shards).exit_code == 0
    with FlowStore(out) as store:
        assert len(store.video_ids) == 6 and len(set(store.video_ids)) == 6
        assert store.read_flow("v_1_2", [2]).shape == (1, 36, 48, 2)


def test_cuda_is_refused_clearly(tmp_path):
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--device", "cuda", "--no-progress"])
    assert result.exit_code == 1 and "--device cpu" in result.output


def test_missing_videos_dir_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["extract", "--videos", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_sigkill_then_resume_keeps_finished_videos(tmp_path):
    """Kill -9 mid-run, then re-run: finished videos are kept and not redone; no half file is final."""
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=4, frames=8)
    out = tmp_path / "flows.h5"
    parts = tmp_path / "flows.h5.parts"
    cmd = [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(out),
           "--size", "96x72", "--algo", "tvl1", "--jobs", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.h5"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in parts.glob("*.h5")}
    assert 2 <= len(finished) < 8, "the run should have been killed part-way"
    assert not out.exists()
    with pytest.raises(StoreError):
        FlowStore(out)
    (tmp_path / "flows.h5.tmp").write_bytes(b"half an assembly")  # as if killed while assembling
    summary_path = tmp_path / "summary.json"
    rerun = subprocess.run(cmd + ["--summary-json", str(summary_path)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["skipped"] == len(finished) and summary["done"] == 8
    assert summary["flows"] == 7 * (8 - len(finished))
    assert not (tmp_path / "flows.h5.tmp").exists() and not parts.exists()
    with FlowStore(out) as store:
        assert len(store) == 8 and all(store.num_flows(v) == 7 for v in store.video_ids)
    assert run_cli("verify", out, "--no-progress").exit_code == 0


def _fill_with_videos(tree, frames=3):
    """Replace the fake tree's empty placeholder files by real tiny videos."""
    for i, rel in enumerate(sorted(tree.expected)):
        moving_video(tree.video_dir / rel, n=frames, w=32, h=24, seed=i)


def test_official_ucf101_layout_with_quirks_and_a_missing_video(tmp_path):
    from tests.fake_datasets import make_fake_ucf101, ucf_name

    missing = f"YoYo/{ucf_name('YoYo', 2, 1)}"
    tree = make_fake_ucf101(tmp_path / "UCF101", groups=3, clips=1, missing=(missing,))
    _fill_with_videos(tree)
    args = ["extract", "--videos", str(tree.root), "--out", str(tmp_path / "f.h5"), "--size", "32x24",
            "--algo", "farneback", "--jobs", "1", "--no-progress"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "v_YoYo_g02_c01" in refused.output and "--allow-missing" in refused.output
    ok = run_cli(*args, "--allow-missing")
    assert ok.exit_code == 0, ok.output
    with FlowStore(tmp_path / "f.h5") as store:
        assert len(store) == 8
        quirk = "v_HandStandPushups_g01_c01"
        assert store.record(quirk)["class_name"] == "HandstandPushups"
        assert store.manifest.by_id(quirk).label == store.manifest.classes.index("HandstandPushups")
        assert store.manifest.dataset == "ucf101" and store.record(quirk)["path"].startswith("UCF-101/")


def test_hmdb51_names_with_odd_characters(tmp_path):
    from tests.fake_datasets import make_fake_hmdb51

    tree = make_fake_hmdb51(tmp_path / "hmdb51")
    _fill_with_videos(tree)
    out = tmp_path / "h.h5"
    result = run_cli("extract", "--videos", tree.root, "--out", out, "--size", "32x24", "--algo", "farneback",
                     "--jobs", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    with FlowStore(out) as store:
        odd = "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0"
        assert odd in store.video_ids and len(store) == 9
        assert store.read_flow("Jim_Carrey_&_Ellen_chew_h_nm_np1_fr_goo_1", [1]).shape == (1, 24, 32, 2)
    assert run_cli("verify", out, "--no-progress").exit_code == 0
