"""Attacks on flowprep: a full disk, damaged stores, flipped bytes, cut containers, links leaving the dataset."""
import errno
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore, StoreError, VideoError
from flowprep.cli import main as cli
from flowprep.video.decode import VideoReader
from tests.test_extract import SIZE, make_dataset
from tests.videos import moving_video, truncate


def _extract(videos, out, *extra):
    return CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(out), "--size", SIZE,
                                    "--algo", "farneback", "--jobs", "1", "--no-progress", *extra])


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    videos = make_dataset(tmp / "v", bad=False, classes=1, per_class=2, frames=5)
    out = tmp / "f.h5"
    assert _extract(videos, out).exit_code == 0
    return out


# -- a full disk -----------------------------------------------------------------------------------------

def test_a_full_disk_stops_the_run_at_once_and_keeps_what_is_finished(tmp_path, monkeypatch):
    import flowprep.store.parts

    videos = make_dataset(tmp_path / "v", bad=False, classes=2, per_class=3, frames=3)
    out = tmp_path / "f.h5"
    real, calls = flowprep.store.parts.finish_file, []

    def fills_up(f, tmp, final):
        calls.append(final)
        if len(calls) == 2:  # the second part hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, tmp, final)

    monkeypatch.setattr(flowprep.store.parts, "finish_file", fills_up)
    result = _extract(videos, out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no space left on device writing" in result.output and "kept in" in result.output
    assert len(calls) == 2  # no video was tried after the full disk
    parts = tmp_path / "f.h5.parts"
    assert len(list(parts.glob("*.h5"))) == 1 and not list(parts.glob("*.tmp")) and not out.exists()
    monkeypatch.undo()
    again = _extract(videos, out)
    assert again.exit_code == 0 and "done 6 (1 from earlier runs)" in again.output


def test_a_full_disk_during_assembly_leaves_no_temporary_and_keeps_the_parts(tmp_path, monkeypatch):
    import flowprep.store.writer

    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=2, frames=3)
    out = tmp_path / "f.h5"

    def full(tmp, *args):
        tmp.write_bytes(b"half a store")
        raise RuntimeError("Can't write data (file write failed: time = Tue Dec  1, filename = 'f.h5.tmp', "
                           "errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(flowprep.store.writer, "_assemble_into", full)
    result = _extract(videos, out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"no space left on device writing {out}.tmp" in result.output
    assert not (tmp_path / "f.h5.tmp").exists() and not out.exists()
    assert len(list((tmp_path / "f.h5.parts").glob("*.h5"))) == 2
    monkeypatch.undo()
    assert "done 2 (2 from earlier runs)" in _extract(videos, out).output


# -- damaged stores --------------------------------------------------------------------------------------

def _damaged_copy(good_store, tmp_path, damage):
    """A copy of the good store with ``damage(h5py.File)`` applied."""
    out = tmp_path / "damaged.h5"
    out.write_bytes(good_store.read_bytes())
    with h5py.File(out, "r+") as f:
        damage(f)
    return out


def _replace(f, name, data):
    del f[name]
    f[name] = data


def _offsets(change):
    def damage(f):
        name = "videos/v_0_0/flow_offsets"
        _replace(f, name, change(f[name][()], f["videos/v_0_0/flow_jpeg"].shape[0]))
    return damage


def _record(**fields):
    def damage(f):
        g = f["videos/v_0_0"]
        g.attrs["record"] = json.dumps(dict(json.loads(g.attrs["record"]), **fields))
    return damage


def _config(value):
    def damage(f):
        f.attrs["config"] = json.dumps(value)
    return damage


READ_DAMAGE = {  # found when the video's data is read
    "negative offset": (_offsets(lambda o, n: np.concatenate([[0, -5], o[2:]])), "offsets run from"),
    "reversed offsets": (_offsets(lambda o, n: np.concatenate([[0], o[1:-1][::-1], [n]])), "go backwards"),
    "overrunning offsets": (_offsets(lambda o, n: np.concatenate([o[:-1], [n + 100]])), "over"),
    "too few offsets": (_offsets(lambda o, n: o[:-2]), "offsets have shape"),
    "a billion frames": (_record(num_frames=10 ** 9, num_flows=10 ** 9 - 1), "offsets have shape"),
}
OPEN_DAMAGE = {  # found when the store is opened
    "config is a list": (_config(["jpeg"]), "config attribute is a JSON list"),
    "config without codec": (_config({"bound": 20.0}), "codec is None"),
    "record is a list": (lambda f: f["videos/v_0_0"].attrs.__setitem__("record", "[1, 2]"),
                         "its record is a JSON list"),
    "frames and flows disagree": (_record(num_frames=10 ** 9), "record says 1000000000 frames and 4 flow"),
    "a side beyond the limit": (_record(width=100000), "width is 100000, outside 1..8192"),
    "failures line is a list": (lambda f: _replace(f, "failures", '["v_0_9", "x"]'), "/failures line 1"),
}


@pytest.mark.parametrize("case", sorted(READ_DAMAGE))
def test_data_damage_is_named_by_reader_and_verify(good_store, tmp_path, case):
    damage, message = READ_DAMAGE[case]
    out = _damaged_copy(good_store, tmp_path, damage)
    with FlowStore(out) as store:
        with pytest.raises(StoreError, match=f"{out}: video 'v_0_0' flow: .*{message}"):
            store.read_flow("v_0_0", [0])
        assert store.read_flow("v_0_1", [0]).shape[0] == 1  # the other video is fine
    verify = CliRunner().invoke(cli, ["verify", str(out), "--no-progress"])
    assert verify.exit_code == 1 and "PROBLEM v_0_0" in verify.output and message in verify.output
    assert "Traceback" not in verify.output and "PROBLEM v_0_1" not in verify.output
    info = CliRunner().invoke(cli, ["info", str(out)])
    assert info.exit_code == 0 and "Traceback" not in info.output


def test_a_video_without_its_checksums_is_damage_not_read_unchecked(good_store, tmp_path):
    """Every store of this format holds per-image checksums (the pre-release stores without them are no
    longer read unchecked): a video whose checksums are gone is named as damaged, by the reader and verify."""
    out = _damaged_copy(good_store, tmp_path, lambda f: f.__delitem__("videos/v_0_0/flow_crcs"))
    with FlowStore(out) as store:
        with pytest.raises(StoreError, match=f"{out}: video 'v_0_0' flow: cannot be read .KeyError"):
            store.read_flow("v_0_0", [0])
        assert store.read_flow("v_0_1", [0]).shape[0] == 1
    verify = CliRunner().invoke(cli, ["verify", str(out), "--no-progress"])
    assert verify.exit_code == 1 and "PROBLEM v_0_0" in verify.output and "PROBLEM v_0_1" not in verify.output


@pytest.mark.parametrize("case", sorted(OPEN_DAMAGE))
def test_metadata_damage_is_one_clear_error_everywhere(good_store, tmp_path, case):
    damage, message = OPEN_DAMAGE[case]
    out = _damaged_copy(good_store, tmp_path, damage)
    with pytest.raises(StoreError, match=message.replace("[", r"\[")) as info:
        FlowStore(out)
    assert str(out) in str(info.value)
    for args in (["verify", str(out), "--no-progress"], ["info", str(out)], ["info", str(out), "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_a_flipped_byte_in_flow_data_is_refused_on_read(good_store, tmp_path):
    def flip(f):
        blob = f["videos/v_0_1/flow_jpeg"]
        offsets = f["videos/v_0_1/flow_offsets"][()]
        at = int(offsets[2] + (offsets[3] - offsets[2]) // 2)  # the middle of field 2's JPEG data
        blob[at] = blob[at] ^ 0x10

    out = _damaged_copy(good_store, tmp_path, flip)
    with FlowStore(out) as store:
        assert store.read_flow("v_0_1", [0, 1, 3]).shape[0] == 3  # the intact fields read
        with pytest.raises(StoreError, match="flow image 2 of 'v_0_1' does not match its checksum"):
            store.read_flow_planes("v_0_1", [1, 2])
    with FlowStore(out, check_crc=False) as store:  # the check can be turned off, and then the damage passes
        store.read_flow("v_0_1", [2])
    verify = CliRunner().invoke(cli, ["verify", str(out), "--no-progress"])
    assert verify.exit_code == 1 and "v_0_1: flow image 2 does not match its checksum" in verify.output


# -- cut containers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fourcc,ext", [("MJPG", "avi"), ("mp4v", "mp4"), ("FFV1", "mkv")])
@pytest.mark.parametrize("share", [0.95, 0.999])
def test_a_cut_inside_the_last_frame_or_the_index_is_caught(tmp_path, fourcc, ext, share):
    """The frame checks let these through (the cut AVI decodes 39 or all 40 of its 40 frames); the
    container's declared sizes do not."""
    path = moving_video(tmp_path / f"v.{ext}", n=40, fourcc=fourcc)
    assert len(list(VideoReader(path))) == 40
    truncate(path, share)
    with pytest.raises(VideoError, match="truncated: its (RIFF chunk|box 'moov'|Matroska segment) .*declares"):
        list(VideoReader(path))


# -- links leaving the dataset ----------------------------------------------------------------------------

def test_links_leaving_the_dataset_are_refused_unless_followed(tmp_path):
    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=1, frames=3)
    elsewhere = make_dataset(tmp_path / "elsewhere", bad=False, classes=2, per_class=1, frames=3)
    (videos / "Linked").symlink_to(elsewhere / "Class1", target_is_directory=True)
    (videos / "Class0" / "v_out.avi").symlink_to(elsewhere / "Class0" / "v_0_0.avi")
    (videos / "Class0" / "v_in.avi").symlink_to(videos / "Class0" / "v_0_0.avi")  # stays inside: fine
    out = tmp_path / "f.h5"
    refused = _extract(videos, out)
    assert refused.exit_code == 1 and "2 class folders or videos" in refused.output
    assert "Linked -> " in refused.output and "Class0/v_out.avi -> " in refused.output
    assert "--follow-symlinks" in refused.output and not out.exists()
    followed = _extract(videos, out, "--follow-symlinks")
    assert followed.exit_code == 0, followed.output
    with FlowStore(out) as store:
        assert {"v_1_0", "v_out", "v_in"} <= set(store.video_ids)
        assert any("followed (--follow-symlinks)" in p for p in store.manifest.problems)


def test_a_damaged_record_leaves_h5py_usable_from_other_threads(good_store, tmp_path):
    """h5py's items() iterator holds its global lock across yields: abandoned by a damaged record while the
    error's traceback lives, it kept the lock, and the next h5py object that another thread freed (a worker
    pool's result thread running the garbage collector) waited for it forever: a whole run hung."""
    import threading

    out = _damaged_copy(good_store, tmp_path, OPEN_DAMAGE["record is a list"][0])
    with pytest.raises(StoreError) as info:
        FlowStore(out)
    done = threading.Event()
    reader = threading.Thread(target=lambda: (h5py.File(good_store, "r").close(), done.set()), daemon=True)
    reader.start()
    assert done.wait(20), "h5py's lock is still held after the error: another thread cannot open a file"
    assert info.value  # the error (and its traceback) still alive while the other thread used h5py


# -- the decoder's messages ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def damaged_mp4_dataset(tmp_path_factory):
    """One MPEG-4 video with bytes overwritten mid-file (FFmpeg reports the broken macroblocks), one good."""
    from tests.videos import damage

    root = tmp_path_factory.mktemp("decoder_log")
    damage(moving_video(root / "v" / "A" / "broken.mp4", n=30, w=96, h=72, fourcc="mp4v"), at=0.5, size=400)
    moving_video(root / "v" / "B" / "good.avi", n=5)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("user_level", [None, "24"])
def test_ffmpeg_messages_follow_the_users_switch_in_every_worker(damaged_mp4_dataset, tmp_path, jobs, user_level):
    """Quiet by default; OPENCV_FFMPEG_LOGLEVEL=24, as the README says, shows the decoder's messages, also
    from the worker processes that decode (--jobs 1 and 2 both decode in workers). Four subprocess runs:
    ~10 s in all on 2 cores."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    if user_level is not None:
        env["OPENCV_FFMPEG_LOGLEVEL"] = user_level
    run = subprocess.run([sys.executable, "-m", "flowprep", "extract", "--videos", str(damaged_mp4_dataset / "v"),
                          "--out", str(tmp_path / "f.h5"), "--size", SIZE, "--algo", "farneback", "--jobs", jobs,
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 1), run.stderr
    # OpenCV's FFmpeg log callback (installed when the variable is set) prints to stdout; FFmpeg's own to stderr
    output = run.stdout + run.stderr
    decoder_lines = [line for line in output.splitlines() if "OPENCV:FFMPEG" in line or "mpeg4 @" in line]
    assert "FAILED broken:" in run.stdout
    if user_level is None:
        assert decoder_lines == [], output
    else:
        assert any("damaged" in line or "Error at MB" in line for line in decoder_lines), output
