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
from flowprep.video.decode import Resize, VideoReader
from flowprep.flow.compute import OpenCVFlow
from tests.videos import announce_frames, damage, moving_video, truncate

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


def test_dis_extraction_equals_opencv_dis_run_directly(tmp_path):
    """--algo dis in the CPU pool: every stored field is cv2.DISOpticalFlow's, quantised; the preset and
    every DIS parameter are recorded."""
    import cv2

    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=2, frames=5)
    out = tmp_path / "f.h5"
    result = run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "dis", "--param",
                     "preset=fast", "--param", "patch_stride=2", "--codec", "raw", "--jobs", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    dis.setPatchStride(2)
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in VideoReader(videos / "Class0" / "v_0_1.avi", Resize(48, 36))]
    expected = np.stack([quantize(dis.calc(a, b, None), 20) for a, b in zip(frames, frames[1:])])
    with FlowStore(out) as store:
        assert np.array_equal(store.read_flow("v_0_1", range(4)), expected)
        params = store.attrs["params"]
        assert store.attrs["implementation"] == "opencv-DISOpticalFlow-cpu"
        assert (params["preset"], params["patch_stride"], params["gradient_descent_iterations"]) == ("fast", 2, 16)


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
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--device", "cuda", "--no-progress"])
    assert result.exit_code == 2 and "--device cpu" in result.output  # misuse, like click's own checks


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


def _extract(videos, out, *extra):
    return run_cli("extract", "--videos", videos, "--out", out, "--size", SIZE, "--algo", "farneback",
                   "--jobs", 1, "--no-progress", *extra)


@pytest.mark.parametrize("args,message", [
    (["--size", "340"], "size must look like 340x256"),
    (["--size", "4x4"], "frame sides must be 8 to 8192 pixels"),
    (["--size", "100000x100000"], "frame sides must be 8 to 8192 pixels"),  # used to fill a store with failures
    (["--short-side", "0"], "frame sides must be 8 to 8192 pixels"),  # used to fall back to 340x256 silently
    (["--short-side", "128", "--size", "64x48"], "not both"),
    (["--param", "nope=1"], "unknown farneback parameter 'nope'"),
    (["--param", "levels=2.7"], "levels='2.7' is not an integer"),  # used to be truncated to 2
    (["--param", "winsize=-5"], "winsize=-5 is out of range"),  # used to crash a worker (double free)
    (["--bound", "0"], "--bound must be a positive, finite number"),
    (["--bound", "nan"], "--bound must be a positive, finite number"),
    (["--bound", "inf"], "--bound must be a positive, finite number"),
    (["--jobs", "0"], "--jobs must be at least 1"),  # used to mean all cores
    (["--jpeg-quality", "0"], "--jpeg-quality must be 1..100"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--shard", "3/2"], "1 <= I <= N"),
    (["--gpus", "zero"], "comma-separated CUDA device numbers"),
    # the torch backend has no 3x3 median: refused by the parameter table, not mid-run
    (["--algo", "tvl1", "--backend", "torch", "--param", "median_filtering=3"],
     "median_filtering=3 is out of range: must be 0 or 1 (no filter) or 5 with --backend torch"),
    (["--algo", "dis", "--backend", "torch"], "dis runs with --backend opencv, not torch"),
    (["--algo", "dis", "--param", "patch_stride=0"], "patch_stride=0 is out of range"),  # would crash OpenCV
    # failed every video late ("integer won't fit into a C int")
    (["--algo", "dis", "--param", "patch_size=99999999999"],
     "patch_size=99999999999 is out of range: must fit a C int"),
    # a patch larger than the frame, known from --size before any video is read
    (["--algo", "dis", "--size", "64x48", "--param", "patch_size=49"],
     "patch_size must not exceed the frame's smaller side"),
    (["--algo", "dis", "--short-side", "32", "--param", "patch_size=33"], "frames of 32 px on their smaller side"),
    # never finished
    (["--algo", "dis", "--param", "variational_refinement_iterations=2000000"], "must be at most 1000"),
    (["--algo", "raft", "--param", "iterations=100000"], "iterations=100000 is out of range: must be at most 100"),
    # stored NaN flow as "no motion" (or crashed OpenCV)
    (["--algo", "dis", "--param", "variational_refinement_epsilon=1e-300"], "must be at least 1e-9"),
    (["--algo", "dis", "--param", "variational_refinement_alpha=1e300"], "must be 0 or of magnitude 1e-30 to 1e+30"),
    (["--algo", "dis", "--param", "variational_refinement_delta=1e300", "--param",
      "variational_refinement_gamma=1e300"], "is out of range"),
])
def test_misuse_exits_2_before_touching_anything(tmp_path, args, message):
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                      "--algo", "farneback", "--no-progress", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no store, no parts, no lock file


def test_no_videos_is_a_data_problem(tmp_path):
    (tmp_path / "empty" / "Class0").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["extract", "--videos", str(tmp_path / "empty"), "--out",
                                      str(tmp_path / "f.h5"), "--no-progress"])
    assert result.exit_code == 1 and "no videos found" in result.output


def test_merge_refuses_its_own_inputs_as_out_and_incomplete_sets(tmp_path, monkeypatch):
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=1, frames=3)
    for i in (1, 2):
        assert _extract(videos, tmp_path / "flows.h5", "--shard", f"{i}/2").exit_code == 0
    monkeypatch.chdir(tmp_path)
    before = Path("flows-1of2.h5").read_bytes()
    result = CliRunner().invoke(cli, ["merge", "--out", "flows-1of2.h5", "flows-1of2.h5", "flows-2of2.h5"])
    assert result.exit_code == 2 and "flows-1of2.h5 is one of the shard files" in result.output
    assert Path("flows-1of2.h5").read_bytes() == before
    result = CliRunner().invoke(cli, ["merge", "--out", "all.h5", "flows-1of2.h5", "./flows-1of2.h5"])
    assert result.exit_code == 2 and "given twice" in result.output and not Path("all.h5").exists()
    result = CliRunner().invoke(cli, ["merge", "--out", "all.h5", "flows-1of2.h5"])
    assert result.exit_code == 1 and "shard 2/2" in result.output and "--partial" in result.output
    result = CliRunner().invoke(cli, ["merge", "--out", "all.h5", "flows-1of2.h5", "--partial"])
    assert result.exit_code == 0 and "warning: shard 2/2 not merged" in result.output
    info = run_cli("info", "all.h5").output
    assert info.startswith("INCOMPLETE shard 2/2 not merged") and "expected by the merged shards" in info
    assert "MISSING    shard 2/2 (merged with --partial" in info
    # a master file is not an extraction output: clear error, the master file is left alone
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", "all.h5", "--size", SIZE,
                                      "--algo", "farneback", "--no-progress"])
    assert result.exit_code == 1 and "all.h5 is a master file written by `flowprep merge`" in result.output
    with FlowStore("all.h5") as store:
        assert len(store) == 1


def test_unwritable_out_is_one_line_naming_the_path(tmp_path):
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(blocker / "f.h5"),
                                      "--no-progress"])
    assert result.exit_code == 1, result.output
    assert f"cannot write {blocker / 'f.h5'}" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(tmp_path), "--overwrite"])
    assert result.exit_code == 2 and f"--out {tmp_path} is a folder" in result.output and videos.exists()
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", "/proc/flowprep/f.h5"])
    assert result.exit_code == 1 and "cannot write /proc/flowprep/f.h5" in result.output  # even root cannot
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(ro / "f.h5")])
        assert result.exit_code == 1 and f"cannot write {ro / 'f.h5'}" in result.output


def test_second_writer_is_refused_at_once(tmp_path):
    from flowprep.store.writer import writer_lock

    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    with writer_lock(tmp_path / "f.h5"):  # as if another extract were running
        result = _extract(videos, tmp_path / "f.h5")
    assert result.exit_code == 1
    assert f"another flowprep extract (pid {os.getpid()}) is writing {tmp_path / 'f.h5'}" in result.output
    assert _extract(videos, tmp_path / "f.h5").exit_code == 0  # the lock went with its holder


def test_verify_and_info_on_damaged_metadata_name_the_file(tmp_path):
    import h5py

    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=2, frames=3)
    out = tmp_path / "f.h5"
    assert _extract(videos, out).exit_code == 0
    with h5py.File(out, "r+") as f:
        f["videos/v_0_9"] = h5py.SoftLink("/lost")  # a video entry that resolves to nothing
    for command in ("verify", "info"):
        result = run_cli(command, out)
        assert result.exit_code == 1 and f"{out}: the store's HDF5 metadata is damaged" in result.output


def test_show_refuses_bad_frame_counts_and_image_names(extracted, tmp_path):
    _, out, _, _ = extracted
    for frames in ("0", "-2"):
        result = CliRunner().invoke(cli, ["show", str(out), "v_0_0", "--out", str(tmp_path / "a.png"),
                                          "--frames", frames])
        assert result.exit_code == 2 and "--frames" in result.output
    result = CliRunner().invoke(cli, ["show", str(out), "v_0_0", "--out", str(tmp_path / "a.jpgx")])
    assert result.exit_code == 2 and "cannot write '.jpgx' images" in result.output
    assert run_cli("show", out, "v_0_0", "--out", tmp_path / "a.jpg", "--frames", 2).exit_code == 0


def _abort_on_v_0_1(task, settings):
    """The per-video work, except that video v_0_1 dies by SIGABRT, as a native crash in FFmpeg would."""
    from flowprep.work import extract_video

    if task.video_id == "v_0_1":
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.abort()
    return extract_video(task, settings)


def test_a_crashing_video_fails_alone_and_the_run_goes_on(tmp_path):
    """A native crash in one worker breaks the pool: the others finish, the videos in flight are retried
    one process each, the crasher crashes again and is recorded with the signal; the next run resumes."""
    from flowprep.video.decode import parse_size
    from flowprep.executors.local import run_pool
    from flowprep.pipeline import ExtractConfig, extract

    videos = make_dataset(tmp_path / "v", bad=False, classes=2, per_class=2, frames=4)
    cfg = ExtractConfig(videos=videos, out=tmp_path / "f.h5", algo="farneback", resize=parse_size(SIZE), jobs=2,
                        progress=False)
    summary = extract(cfg, executor=lambda tasks, settings, on_outcome: run_pool(
        tasks, settings, 2, on_outcome, work=_abort_on_v_0_1))
    assert summary.done == 3 and [f["video_id"] for f in summary.failed] == ["v_0_1"]
    reason = summary.failed[0]["reason"]
    assert "crashed (signal 6, SIGABRT)" in reason and str(videos / "Class0" / "v_0_1.avi") in reason
    assert not (tmp_path / "f.h5.parts").exists()
    again = _extract(videos, tmp_path / "f.h5")
    assert again.exit_code == 0 and "done 4 (3 from earlier runs)" in again.output


def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_workers_end_when_the_extract_process_is_killed(tmp_path):
    """SIGKILL of the main process alone: its pool workers notice and end within seconds (they write
    nothing, so nothing is lost), instead of waiting forever for work."""
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=4, frames=8)
    parts = tmp_path / "flows.h5.parts"
    proc = subprocess.Popen([sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out",
                             str(tmp_path / "flows.h5"), "--size", "96x72", "--jobs", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.h5")):
        time.sleep(0.05)
    workers = [p for p in _children(proc.pid) if b"LokyProcess" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in workers)


def test_resume_follows_the_dataset(tmp_path):
    """Plain folder layout: a removed video leaves the store, a changed one is redone, new classes are refused."""
    videos = make_dataset(tmp_path / "v", bad=False, classes=2, per_class=2, frames=4)
    out = tmp_path / "f.h5"
    assert _extract(videos, out).exit_code == 0
    (videos / "Class0" / "v_0_0.avi").unlink()
    moving_video(videos / "Class1" / "v_1_1.avi", n=6, seed=5)  # replaced under the same name
    result = _extract(videos, out, "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert "removed from the store: 1 video" in result.output and "extracted again: 1 video" in result.output
    with FlowStore(out) as store:
        assert store.video_ids == ["v_0_1", "v_1_0", "v_1_1"] == sorted(store.expected_ids)
        assert [r.video_id for r in store.manifest.records] == store.video_ids
        assert store.num_frames("v_1_1") == 6 and store.record("v_1_1")["source_bytes"] > 0
    # nothing left to extract and the dataset unchanged: the store is not rewritten
    stamp = out.stat().st_mtime_ns
    assert _extract(videos, out).exit_code == 0 and out.stat().st_mtime_ns == stamp
    # a class folder sorting first would shift every label: refused, store untouched
    moving_video(videos / "AAFirst" / "v_a.avi", n=4)
    refused = _extract(videos, out)
    assert refused.exit_code == 1 and "other classes (added AAFirst)" in refused.output
    assert "--overwrite" in refused.output and out.stat().st_mtime_ns == stamp
    assert _extract(videos, out, "--overwrite").exit_code == 0
    with FlowStore(out) as store:
        assert store.record("v_1_0")["label"] == 2 == store.manifest.by_id("v_1_0").label


def test_unfinished_work_for_other_classes_is_refused(tmp_path, monkeypatch):
    import flowprep.pipeline as pipeline
    from flowprep.video.decode import parse_size

    videos = make_dataset(tmp_path / "v", bad=False, classes=2, per_class=1, frames=3)
    cfg = pipeline.ExtractConfig(videos=videos, out=tmp_path / "f.h5", algo="farneback", resize=parse_size(SIZE),
                                 progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run died before assembling its parts

    monkeypatch.setattr(pipeline, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.extract(cfg)
    monkeypatch.undo()
    assert len(list((tmp_path / "f.h5.parts").glob("*.h5"))) == 2
    moving_video(videos / "Class2" / "v_2_0.avi", n=3)
    with pytest.raises(StoreError, match="unfinished work for a dataset with other classes \\(added Class2\\)"):
        pipeline.extract(cfg)
    (videos / "Class2" / "v_2_0.avi").unlink()
    (videos / "Class2").rmdir()
    assert pipeline.extract(cfg).skipped == 2  # the parts are used again


def test_short_videos_are_stored_and_shown_and_damaged_ones_fail(tmp_path):
    """Two frames short of the AVI header is accepted (and shown); a cut at 90 % or a damaged middle is not."""
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=4)
    announce_frames(moving_video(videos / "Class0" / "short.avi", n=20), 22)
    truncate(moving_video(videos / "Class0" / "cut90.avi", n=40), 0.9)
    damage(moving_video(videos / "Class0" / "garbage.avi", n=40))
    out = tmp_path / "f.h5"
    result = _extract(videos, out)
    assert result.exit_code == 1 and "done 2" in result.output
    cut = videos / "Class0" / "cut90.avi"
    assert f"FAILED cut90: {cut}: truncated: its RIFF chunk at byte 0 declares" in result.output  # the container
    assert "FAILED garbage:" in result.output and "decoded 36 of the 40" in result.output
    with FlowStore(out) as store:
        rec = store.record("short")
        assert (rec["num_frames"], rec["announced_frames"], rec["short_by"], rec["count_check"]) == (20, 22, 2, "exact")
    info = run_cli("info", out)
    assert "short      1 video(s) decoded fewer frames than their container announces" in info.output
    assert "short (20 of 22)" in info.output
    assert json.loads(run_cli("info", out, "--json").output)["short"] == [
        {"video_id": "short", "decoded": 20, "announced": 22, "short_by": 2}]
    verify = run_cli("verify", out, "--no-progress")
    assert "NOTE short: decoded 20 of the 22 frames" in verify.output and verify.output.count("PROBLEM") == 2


def test_decoder_warnings_stay_out_of_the_output(tmp_path):
    """FFmpeg prints a line per damaged MJPEG packet; extract silences it (the failure reason says enough)."""
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    garbage = damage(moving_video(videos / "Class0" / "garbage.avi", n=40))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCV_FFMPEG", "OPENCV_LOG"))}
    decode = "import cv2, sys\nc = cv2.VideoCapture(sys.argv[1], cv2.CAP_FFMPEG)\nwhile c.read()[0]: pass"
    direct = subprocess.run([sys.executable, "-c", decode, str(garbage)], capture_output=True, text=True, env=env)
    assert "[mjpeg @" in direct.stderr  # the file does make FFmpeg talk
    run = subprocess.run([sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out",
                          str(tmp_path / "f.h5"), "--size", SIZE, "--algo", "farneback", "--jobs", "1",
                          "--no-progress"], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "FAILED garbage" in run.stdout
    assert "mjpeg" not in run.stdout + run.stderr, run.stdout + run.stderr


def test_the_flow_picture_has_a_colour_key_that_matches_the_coding():
    """The key's wheel shows, at each point, the colour of the flow from its centre to that point (the rim
    being the stated full speed); its speed bar runs from black to the colour of full speed to the right."""
    from flowprep.inspection import KEY_WIDTH, colour_key, flow_to_color

    top = 2.5
    key = colour_key(top, 400)
    assert key.shape == (400, KEY_WIDTH, 3)
    cx, cy, r = KEY_WIDTH // 2, 124, 60
    for dx, dy in [(40, 0), (0, 40), (-40, 0), (0, -40), (30, 30)]:  # right, down, left, up, down-right
        want = flow_to_color(np.float32([[[dx * top / r, dy * top / r]]]), top)[0, 0]
        assert np.abs(key[cy + dy, cx + dx].astype(int) - want).max() <= 1, (dx, dy)
    assert not np.array_equal(key[cy, cx + 40], key[cy + 40, cx])  # directions differ in colour
    bar = key[cy + r + 52, 15:KEY_WIDTH - 15]
    assert bar[0].max() <= 5 and np.array_equal(bar[-1], flow_to_color(np.float32([[[top, 0]]]), top)[0, 0])


def test_extract_says_how_long_it_will_take_and_logs_plain_lines(tmp_path):
    """Before the long part: the fields the headers announce and the time they will take; redirected
    output gets plain progress lines, no carriage returns."""
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=2, frames=6)
    result = run_cli("extract", "--videos", videos, "--out", tmp_path / "f.h5", "--size", SIZE, "--jobs", 1)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("extract: 2 videos to extract, about 10 flow fields at 48x36; decoding, storing and "
                            "tvl1 take ")
    assert "s per field per job here (decoding and storing " in first
    assert "s; timed on the first frames of 2 of them), so about " in first
    assert "with 1 job(s)" in first and "\r" not in result.output
    assert "extract: 2/2 videos (100%)" in result.output
    # on a cluster the jobs of this machine say nothing: the total of core time instead
    from flowprep.estimate import estimate_text
    from flowprep.settings import ExtractConfig

    settings = ExtractConfig(videos=videos, out=tmp_path / "g.h5", resize=Resize(48, 36)).settings()
    text = estimate_text([str(p) for p in sorted(videos.rglob("*.avi"))], settings, None)
    assert text.endswith("of core time, shared by the cluster's workers") and "job(s)" not in text


def test_the_estimate_counts_decoding_and_storing(tmp_path, monkeypatch):
    import re

    import flowprep.estimate as estimate
    from flowprep.settings import ExtractConfig

    videos = make_dataset(tmp_path / "videos", bad=False, classes=1, per_class=2, frames=6)
    settings = ExtractConfig(videos=videos, out=tmp_path / "g.h5", resize=Resize(48, 36)).settings()
    monkeypatch.setattr(estimate, "seconds_per_field", lambda settings, pairs: 0.0)  # flow free: decoding is left
    text = estimate.estimate_text([str(p) for p in sorted(videos.rglob("*.avi"))], settings, 1)
    total, decoding = re.search(r"take ([0-9.e-]+) s per field per job here \(decoding and storing ([0-9.e-]+) s",
                                text).groups()
    assert float(total) == pytest.approx(float(decoding), rel=0.05) and float(total) > 0


def test_ctrl_c_says_how_to_resume_and_the_rerun_does(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C: exit 130, one line saying what is kept and that
    the same command resumes; no traceback, no warning from the pool's clean-up; the re-run resumes."""
    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=3, frames=8)
    parts = tmp_path / "flows.h5.parts"
    cmd = [sys.executable, "-m", "flowprep", "extract", "--videos", str(videos), "--out", str(tmp_path / "flows.h5"),
           "--size", "96x72", "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.h5")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted: the videos finished so far are kept in flows.h5.parts/; re-run the same command" in err
    assert "Traceback" not in err and "leaked" not in err and "Aborted!" not in err, err
    kept = len(list(parts.glob("*.h5")))
    assert 1 <= kept < 6
    again = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"done 6 ({kept} from earlier runs)" in again.stdout, again.stdout + again.stderr
