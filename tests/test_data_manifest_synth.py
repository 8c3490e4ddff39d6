"""make_synthetic: layout, exact frame counts, determinism, and classes that differ by motion, not appearance."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_manifest import ManifestError, build_manifest, make_synthetic
from data_manifest.synth import CLASS_NAMES, SYNTH_MARKER

FRAMES = 9


def _frames(path) -> np.ndarray:
    """All frames of a video: (T, H, W, 3) uint8 BGR."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return np.stack(out)


@pytest.fixture(scope="module")
def every_class(tmp_path_factory):
    """One synthetic dataset with all motion classes, 3 clips each, at the default frame size."""
    out = make_synthetic(tmp_path_factory.mktemp("synth"), classes=len(CLASS_NAMES), videos_per_class=3,
                         frames=FRAMES, seed=1)
    return out, build_manifest(out)


def test_layout_and_manifest(every_class):
    out, m = every_class
    assert m.dataset == "ucf101" and m.problems == [] and m.num_splits == 3
    assert m.classes == sorted(CLASS_NAMES)
    assert len(m) == 3 * len(CLASS_NAMES)
    rec = m.by_id("v_SpinClockwise_g02_c01")
    assert rec.path == "UCF-101/SpinClockwise/v_SpinClockwise_g02_c01.avi" and rec.group == 2
    for name in ("classInd.txt", "trainlist01.txt", "testlist03.txt"):
        raw = (out / "ucfTrainTestlist" / name).read_bytes()
        assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
    # every video is tested in exactly one split, and each split tests other groups
    assert all(sorted(r.splits) == ["test", "train", "train"] for r in m.records)
    tested = [{m.by_id(v).group for v in m.ids(k, "test")} for k in (1, 2, 3)]
    assert tested == [{1}, {2}, {3}]
    assert json.loads((out / SYNTH_MARKER).read_text())["frames"] == FRAMES


def test_exact_frame_count_and_size(every_class):
    out, m = every_class
    for rec in m.records[::5]:
        assert _frames(out / rec.path).shape == (FRAMES, 120, 160, 3)


def _mean_flow(path) -> np.ndarray:
    """Farneback flow averaged over the pairs of one video: (H, W, 2) float32, pixels per frame."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in _frames(path)]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(grey, grey[1:])]
    return np.mean(flows, axis=0)


DIRECTIONS = {"Right": (1, 0), "Left": (-1, 0), "Up": (0, -1), "Down": (0, 1), "UpRight": (1, -1),
              "UpLeft": (-1, -1), "DownRight": (1, 1), "DownLeft": (-1, 1)}


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_flow_shows_the_class_motion(every_class, name):
    out, m = every_class
    rec = m.by_id(f"v_{name}_g01_c01")
    flow = _mean_flow(out / rec.path)
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = xs - (w - 1) / 2, ys - (h - 1) / 2
    u, v = flow[..., 0], flow[..., 1]
    r2 = float(np.mean(xs ** 2 + ys ** 2))
    curl = float(np.mean(xs * v - ys * u)) / r2  # rad/frame, > 0 clockwise on screen (y down)
    div = float(np.mean(xs * u + ys * v)) / r2  # > 0 when the content grows
    if name.startswith("Drift"):
        want = np.array(DIRECTIONS[name[len("Drift"):]], float)
        mean = np.array([u.mean(), v.mean()])
        assert np.linalg.norm(mean) > 1.5  # px/frame
        assert mean @ want / (np.linalg.norm(mean) * np.linalg.norm(want)) > 0.98
    elif name.startswith("Spin"):
        assert (curl > 0.02) if name == "SpinClockwise" else (curl < -0.02)
        assert abs(div) < 0.005
    elif name.startswith("Zoom"):
        assert (div > 0.02) if name == "ZoomIn" else (div < -0.02)
        assert abs(curl) < 0.005
    else:  # Sway: back and forth along one axis, so look at per-pair magnitudes
        along, across = (0, 1) if name == "SwayHorizontal" else (1, 0)
        import cv2

        grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in _frames(out / rec.path)]
        pairs = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(grey, grey[1:])]
        mags = np.abs(np.stack(pairs)).mean(axis=(1, 2))  # (T-1, 2)
        assert mags[:, along].mean() > 1.0 and mags[:, across].mean() < 0.2


def test_appearance_does_not_tell_the_class(tmp_path):
    """Leave-one-out nearest-class-mean on the mean colour of a frame is near chance (1/6)."""
    out = make_synthetic(tmp_path, classes=6, videos_per_class=12, frames=3, size=(64, 48))
    m = build_manifest(out)
    feats = np.array([_frames(out / r.path)[1].reshape(-1, 3).mean(axis=0) for r in m.records])
    labels = np.array([r.label for r in m.records])
    hits = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        means = np.array([feats[keep & (labels == c)].mean(axis=0) for c in range(6)])
        hits += int(np.argmin(np.linalg.norm(means - feats[i], axis=1)) == labels[i])
    assert hits / len(labels) < 0.35


def test_deterministic_and_seeded(tmp_path):
    a = make_synthetic(tmp_path / "a", classes=2, videos_per_class=3, frames=4, size=(48, 32), seed=5)
    b = make_synthetic(tmp_path / "b", classes=3, videos_per_class=4, frames=4, size=(48, 32), seed=5)
    c = make_synthetic(tmp_path / "c", classes=2, videos_per_class=3, frames=4, size=(48, 32), seed=6)
    rel = "UCF-101/DriftLeft/v_DriftLeft_g02_c01.avi"
    # same seed, same clip: same frames, whatever else was made alongside
    assert np.array_equal(_frames(a / rel), _frames(b / rel))
    assert not np.array_equal(_frames(a / rel), _frames(c / rel))


def test_rerun_replaces_only_its_own_output(tmp_path):
    out = make_synthetic(tmp_path, classes=2, videos_per_class=3, frames=2, size=(32, 32))
    (out / "UCF-101" / "DriftLeft" / "v_DriftLeft_g09_c01.avi").write_bytes(b"")  # stale file from before
    make_synthetic(tmp_path, classes=2, videos_per_class=3, frames=2, size=(32, 32))
    assert build_manifest(out).problems == []
    real = tmp_path / "real"
    (real / "UCF-101").mkdir(parents=True)
    with pytest.raises(ManifestError, match="did not write"):
        make_synthetic(real)
    assert (real / "UCF-101").is_dir()


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=1), "classes must be between 2"),
    (dict(classes=len(CLASS_NAMES) + 1), "classes must be between 2"),
    (dict(videos_per_class=2), "videos_per_class must be at least 3"),
    (dict(frames=1), "frames must be at least 2"),
    (dict(size=(16, 120)), "size must be at least 32x32"),
])
def test_bad_parameters(tmp_path, kwargs, message):
    with pytest.raises(ManifestError, match=message):
        make_synthetic(tmp_path, **kwargs)
