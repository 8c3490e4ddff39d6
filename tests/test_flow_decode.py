import os

import numpy as np
import pytest

from flowprep import FlowprepError, VideoError, compute_flow
from flowprep.decode import Resize, VideoReader, parse_size
from flowprep.flow import OpenCVFlow, resolve_params
from tests.videos import moving_video, shifted_frames, truncate, write_video


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
    with pytest.raises(FlowprepError, match="not a int"):
        resolve_params("farneback", {"levels": "many"})
    with pytest.raises(FlowprepError, match="unknown flow algorithm"):
        OpenCVFlow("horn")


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
