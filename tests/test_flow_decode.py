import os
import re

import numpy as np
import pytest

from flowprep import FlowprepError, VideoError, compute_flow
from flowprep.video.decode import MIN_DURATION_COVERED, Resize, VideoReader, parse_size, truncation_problem
from flowprep.errors import OptionError
from flowprep.flow.compute import OpenCVFlow
from flowprep.flow.params import resolve_params
from tests.videos import announce_frames, damage, moving_video, shifted_frames, truncate, write_video


@pytest.mark.parametrize("algo", ["tvl1", "farneback"])
@pytest.mark.parametrize("dx,dy", [(1.5, 0.0), (-0.5, 2.0)])
def test_flow_recovers_a_known_shift(algo, dx, dy):
    f0, f1 = shifted_frames(2, 96, 72, dx, dy)
    flow = compute_flow(f0, f1, algo=algo)
    assert flow.shape == (72, 96, 2) and flow.dtype == np.float32
    inner = flow[12:-12, 12:-12]  # borders see content entering the frame
    assert np.median(inner[..., 0]) == pytest.approx(dx, abs=0.1)
    assert np.median(inner[..., 1]) == pytest.approx(dy, abs=0.1)


def test_compute_flow_matches_opencv_called_directly():
    import cv2

    f0, f1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in shifted_frames(2, 64, 48, 1.0, 0.5))
    ours = compute_flow(f0, f1, algo="farneback")
    ref = cv2.calcOpticalFlowFarneback(f0, f1, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    assert np.array_equal(ours, ref)
    tv = cv2.optflow.DualTVL1OpticalFlow_create()
    assert np.array_equal(compute_flow(f0, f1, algo="tvl1"), tv.calc(f0, f1, None))


def test_params_are_resolved_and_checked():
    p = resolve_params("tvl1", {"warps": "3", "lambda": 0.2})
    assert p["warps"] == 3 and p["lambda_"] == 0.2 and p["tau"] == 0.25
    with pytest.raises(FlowprepError, match="unknown tvl1 parameter 'wraps'"):
        resolve_params("tvl1", {"wraps": 3})
    with pytest.raises(FlowprepError, match="not an integer"):
        resolve_params("farneback", {"levels": "many"})
    with pytest.raises(FlowprepError, match="unknown flow algorithm"):
        OpenCVFlow("horn")


def test_int_params_refuse_fractions_and_floats_must_be_finite():
    assert resolve_params("farneback", {"levels": "4", "winsize": 21.0})["levels"] == 4
    for key, value in [("levels", "2.7"), ("levels", 2.7), ("winsize", "3.0"), ("iterations", True)]:
        with pytest.raises(OptionError, match=f"{key}=.* is not an integer"):
            resolve_params("farneback", {key: value})
    with pytest.raises(OptionError, match="tau='nan' must be a finite number"):
        resolve_params("tvl1", {"tau": "nan"})


@pytest.mark.parametrize("algo,key,value,allowed", [
    ("farneback", "winsize", -5, "at least 1"),  # double free in OpenCV: the QA's crashed worker
    ("farneback", "winsize", 0, "at least 1"),  # NaN flow
    ("farneback", "iterations", 0, "at least 1"),  # zero flow
    ("farneback", "levels", -1, "0 or more"),
    ("farneback", "pyr_scale", 1.0, "between 0 and 1"),  # cv2.error inside the worker
    ("farneback", "poly_n", 0, "at least 1"),
    ("farneback", "poly_sigma", 0, "positive"),
    ("farneback", "flags", 4, "0 or 256"),  # OPTFLOW_USE_INITIAL_FLOW without an initial flow
    ("tvl1", "theta", 0, "positive"),  # NaN flow
    ("tvl1", "tau", -0.1, "positive"),
    ("tvl1", "lambda_", 0, "positive"),
    ("tvl1", "epsilon", 0, "positive"),
    ("tvl1", "nscales", 0, "at least 1"),
    ("tvl1", "warps", 0, "at least 1"),
    ("tvl1", "inner_iterations", 0, "at least 1"),
    ("tvl1", "outer_iterations", -1, "at least 1"),
    ("tvl1", "scale_step", 1.5, "between 0 and 1"),
    ("tvl1", "gamma", -1, "0 or more"),
    ("tvl1", "median_filtering", 4, "0 or 1 (no filter), 3 or 5"),  # medianBlur on float flow: 3 and 5 only
])
def test_params_out_of_range_are_refused_before_opencv_sees_them(algo, key, value, allowed):
    with pytest.raises(OptionError, match=f"{key}=.* out of range: must be {re.escape(allowed)}"):
        resolve_params(algo, {key: value})


@pytest.mark.parametrize("algo,params", [
    ("farneback", {"winsize": 1, "levels": 0, "iterations": 1, "poly_n": 7, "pyr_scale": 0.8, "flags": 256}),
    ("tvl1", {"median_filtering": 1, "nscales": 1, "warps": 1, "scale_step": 0.5, "gamma": 0.1}),
])
def test_params_at_the_edges_of_the_range_give_finite_flow(algo, params):
    f0, f1 = shifted_frames(2, 48, 36, 1.0, 0.0)
    flow = compute_flow(f0, f1, algo=algo, **params)
    assert np.isfinite(flow).all()


def test_cuda_without_a_gpu_fails_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    f0, f1 = shifted_frames(2, 32, 24)
    with pytest.raises(FlowprepError, match="no CUDA device"):
        compute_flow(f0, f1, device="cuda")


def test_mismatched_frames_are_rejected():
    with pytest.raises(FlowprepError, match="differ in size"):
        compute_flow(np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8))


@pytest.mark.parametrize("fourcc,ext", [("MJPG", "avi"), ("mp4v", "mp4"), ("FFV1", "mkv")])
def test_decode_gives_exact_frame_counts(tmp_path, fourcc, ext):
    path = moving_video(tmp_path / f"v.{ext}", n=13, fourcc=fourcc)
    reader = VideoReader(path, Resize(40, 30))
    frames = list(reader)
    assert len(frames) == 13 == reader.count
    assert frames[0].shape == (30, 40, 3) and frames[0].dtype == np.uint8
    assert reader.info.width == 64 and reader.info.height == 48 and reader.info.fps == pytest.approx(25)


def test_decode_keeps_rgb_order(tmp_path):
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 200
    path = write_video(tmp_path / "red.avi", [red] * 3)
    frame = next(iter(VideoReader(path)))
    assert frame[..., 0].mean() > 150 and frame[..., 2].mean() < 50


def test_short_side_keeps_aspect():
    assert Resize(None, None, 256).target(320, 240) == (341, 256)
    assert Resize(None, None, 128).target(240, 320) == (128, 171)
    assert parse_size("340x256").target(1, 1) == (340, 256)
    with pytest.raises(FlowprepError, match="WIDTH|width"):
        parse_size("340")


def test_bad_files_raise_video_errors(tmp_path):
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    text = tmp_path / "notes.avi"
    text.write_text("this is not a video\n" * 100)
    broken_link = tmp_path / "gone.avi"
    os.symlink(tmp_path / "nowhere.avi", broken_link)
    for path, message in [(empty, "empty"), (text, "cannot open"), (broken_link, "no such file")]:
        with pytest.raises(VideoError, match=message) as info:
            list(VideoReader(path))
        assert str(path) in str(info.value)
    cut = truncate(moving_video(tmp_path / "cut.avi", n=30), 0.5)
    with pytest.raises(VideoError, match="truncated"):
        list(VideoReader(cut))


# (kind, announced, decoded, fps, last frame ms) measured with FFmpeg 7 (imageio-ffmpeg 0.8.1) on 3 s files
COMPLETE = [
    ("duration", 90, 70, 30.0, 2967.0),  # variable frame rate MKV: 78 % of the announced frames, all the time
    ("duration", 50, 50, 25.0, 1960.0),  # WebM VP9
    ("exact", 51, 50, 25.0, 2000.0),  # AVI with audio announcing one frame more than decodes
    ("exact", 77, 75, 25.0, 2960.0),  # UCF101-like: two frames short is accepted
    ("unchecked", 42, 42, 25.0, 1640.0),  # MPEG-PS cut at 70 %: its estimate follows the cut (cannot be seen)
]
TRUNCATED = [
    ("duration", 75, 52, 25.0, 2040.0),  # MKV cut at 70 %
    ("duration", 75, 59, 25.0, 2360.0),  # MKV cut at 80 %: as many frames as the complete VFR file has
    ("duration", 75, 71, 25.0, 2800.0),  # MKV cut at 95 %
    ("duration", 75, 70, 25.0, 2760.0),  # WebM cut at 95 %
    ("exact", 75, 69, 25.0, 2720.0),  # MP4 (faststart) cut at 95 %
    ("exact", 75, 71, 25.0, 2800.0),  # AVI cut at 95 %
    ("exact", 75, 70, 25.0, 2760.0),  # MJPEG AVI with garbage in the middle: frames dropped, timestamps renumbered
]


@pytest.mark.parametrize("case", COMPLETE)
def test_complete_videos_pass_the_truncation_check(case):
    assert truncation_problem(*case) is None


@pytest.mark.parametrize("case", TRUNCATED)
def test_truncated_videos_fail_the_truncation_check(case):
    assert "decoded" in truncation_problem(*case)


def test_duration_threshold_has_margin_on_both_sides():
    from flowprep.video.decode import duration_covered

    complete = min(duration_covered(a, d, f, t) for k, a, d, f, t in COMPLETE if k == "duration")
    cut = max(duration_covered(a, d, f, t) for k, a, d, f, t in TRUNCATED if k == "duration")
    assert cut + 0.015 < MIN_DURATION_COVERED < complete - 0.025


@pytest.mark.parametrize("fourcc,ext,share", [("MJPG", "avi", 0.9), ("FFV1", "mkv", 0.9)])
def test_files_cut_near_the_end_are_truncated(tmp_path, fourcc, ext, share, monkeypatch):
    """By the container's declared sizes first; without that check, by the decoded frames."""
    import flowprep.video.decode

    cut = truncate(moving_video(tmp_path / f"cut.{ext}", n=40, fourcc=fourcc), share)
    with pytest.raises(VideoError, match="truncated: its (RIFF chunk|Matroska segment)") as info:
        list(VideoReader(cut))
    assert str(cut) in str(info.value)
    monkeypatch.setattr(flowprep.video.decode, "container_cut", lambda path: None)
    with pytest.raises(VideoError, match="truncated or corrupt: decoded 36"):
        list(VideoReader(cut))


def test_frames_dropped_mid_clip_are_caught(tmp_path):
    # MJPEG AVI with random bytes in the middle: FFmpeg skips the broken frames and renumbers the rest
    path = damage(moving_video(tmp_path / "garbage.avi", n=40), at=0.5, size=3000)
    with pytest.raises(VideoError, match="decoded 36 of the 40 frames"):
        list(VideoReader(path))


def test_an_avi_announcing_two_frames_too_many_is_accepted_and_recorded(tmp_path):
    path = announce_frames(moving_video(tmp_path / "v.avi", n=20), 22)
    reader = VideoReader(path)
    assert len(list(reader)) == 20
    assert reader.count_record() == {"announced_frames": 22, "count_check": "exact", "short_by": 2}
    with pytest.raises(VideoError, match="decoded 20 of the 23 frames"):
        list(VideoReader(announce_frames(path, 23)))


@pytest.mark.parametrize("preset,cv_preset", [("ultrafast", 0), ("fast", 1), ("medium", 2)])
def test_dis_equals_opencv_called_directly(preset, cv_preset):
    import cv2

    f0, f1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in shifted_frames(2, 96, 72, 1.5, -0.5))
    ref = cv2.DISOpticalFlow_create(cv_preset).calc(f0, f1, None)
    assert np.array_equal(compute_flow(f0, f1, algo="dis", preset=preset), ref)
    if preset == "medium":  # the default preset
        assert np.array_equal(compute_flow(f0, f1, algo="dis"), ref)


def test_dis_parameters_override_their_preset_and_are_checked():
    import cv2

    p = resolve_params("dis", {"preset": "ultrafast", "patch_stride": "2", "use_spatial_propagation": "false"})
    assert (p["finest_scale"], p["gradient_descent_iterations"], p["patch_stride"]) == (2, 12, 2)
    assert p["use_spatial_propagation"] is False and p["preset"] == "ultrafast"
    f0, f1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in shifted_frames(2, 96, 72, 1.0, 1.0))
    dis = cv2.DISOpticalFlow_create(0)
    dis.setPatchStride(2)
    dis.setUseSpatialPropagation(False)
    assert np.array_equal(OpenCVFlow("dis", **p)(f0, f1), dis.calc(f0, f1, None))
    # values that crash OpenCV's DIS (abort or SIGFPE) are refused before it sees them
    for bad, message in [({"patch_size": 1}, "patch_size=1 is out of range"),
                         ({"patch_stride": 0}, "patch_stride=0 is out of range"),
                         ({"patch_stride": 9}, "patch_stride must not exceed patch_size"),
                         ({"finest_scale": -1}, "finest_scale=-1 is out of range"),
                         ({"variational_refinement_epsilon": 0}, "variational_refinement_epsilon=0.0 is out"),
                         ({"preset": "slow"}, "choose one of ultrafast, fast, medium"),
                         ({"use_mean_normalization": "maybe"}, "is not true or false")]:
        with pytest.raises(OptionError, match=re.escape(message)):
            resolve_params("dis", bad)


def test_a_backend_restriction_is_checked_with_the_table():
    assert resolve_params("tvl1", {"median_filtering": 3}, backend="opencv")["median_filtering"] == 3
    with pytest.raises(OptionError, match="median_filtering=3 is out of range: must be 0 or 1 .* or 5 with "
                                          "--backend torch"):
        resolve_params("tvl1", {"median_filtering": 3}, backend="torch")
    with pytest.raises(OptionError, match="dis runs with --backend opencv, not torch"):
        resolve_params("dis", {}, backend="torch")
