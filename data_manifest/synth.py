"""A small synthetic action dataset in UCF101 layout whose classes differ only by motion.

Every video shows a random smooth two-colour texture (colours, texture and brightness drawn per video,
independently of the class) moved by a global transform: the class decides only the kind and direction of
the motion (drift, spin, zoom, sway), so a flow model can learn it and a single-frame RGB model cannot.
The speed (2-4 px/frame at a radius of 60 px) is drawn per video, independently of the class too.

Layout: ``OUT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (MJPG in AVI) and ``OUT/ucfTrainTestlist/`` with
classInd.txt, trainlist01-03.txt and testlist01-03.txt (CRLF), split k testing a disjoint third of the groups.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from data_manifest.errors import ManifestError
from data_manifest.manifest import Manifest, VideoRecord
from data_manifest.splits import write_ucf101

DEFAULT_CLASSES = 6
DEFAULT_VIDEOS_PER_CLASS = 12
DEFAULT_SIZE = (160, 120)  # (width, height)
DEFAULT_FRAMES = 24
DEFAULT_FPS = 25.0
SYNTH_MARKER = "SYNTHETIC.json"
VIDEO_DIR = "UCF-101"
SPLITS_DIR = "ucfTrainTestlist"
NUM_SPLITS = 3
SPEED_RANGE = (2.0, 4.0)  # px/frame, drawn per video
REF_RADIUS = 60.0  # px; spin and zoom move at the drawn speed at this distance from the centre
MAX_ZOOM = 3.0  # total zoom from the middle frame to either end stays within this factor
TEXTURE_CELL = 10  # px; the texture's blob size, which Farneback's 15 px window tracks well
MIN_GREY_CONTRAST = 70.0  # grey-level difference between a video's two colours
_GREY_BGR = np.array([0.114, 0.587, 0.299])  # BT.601 weights, as cv2.cvtColor(..., COLOR_BGR2GRAY)


@dataclass(frozen=True)
class Motion:
    """A class's motion: 'drift' | 'sway' along direction (dx, dy), image axes (y down); 'spin' | 'zoom' by sign."""

    kind: str
    direction: tuple[float, float] = (0.0, 0.0)
    sign: int = 1  # spin: +1 clockwise on screen; zoom: +1 in (content grows)


_D = math.sqrt(0.5)
MOTIONS: dict[str, Motion] = {
    "DriftRight": Motion("drift", (1.0, 0.0)),
    "DriftLeft": Motion("drift", (-1.0, 0.0)),
    "DriftUp": Motion("drift", (0.0, -1.0)),
    "DriftDown": Motion("drift", (0.0, 1.0)),
    "SpinClockwise": Motion("spin", sign=1),
    "SpinCounterClockwise": Motion("spin", sign=-1),
    "ZoomIn": Motion("zoom", sign=1),
    "ZoomOut": Motion("zoom", sign=-1),
    "SwayHorizontal": Motion("sway", (1.0, 0.0)),
    "SwayVertical": Motion("sway", (0.0, 1.0)),
    "DriftUpRight": Motion("drift", (_D, -_D)),
    "DriftDownLeft": Motion("drift", (-_D, _D)),
    "DriftUpLeft": Motion("drift", (-_D, -_D)),
    "DriftDownRight": Motion("drift", (_D, _D)),
}
CLASS_NAMES = tuple(MOTIONS)  # make_synthetic(classes=N) uses the first N


@dataclass(frozen=True)
class SynthParams:
    """The arguments of one synthetic dataset, saved as OUT/SYNTHETIC.json."""

    classes: int
    videos_per_class: int
    seed: int
    width: int
    height: int
    frames: int
    fps: float


def _check_params(p: SynthParams) -> None:
    if not 2 <= p.classes <= len(CLASS_NAMES):
        raise ManifestError(f"classes must be between 2 and {len(CLASS_NAMES)}, got {p.classes}")
    if p.videos_per_class < NUM_SPLITS:
        raise ManifestError(f"videos_per_class must be at least {NUM_SPLITS} so that every split tests other "
                            f"groups, got {p.videos_per_class}")
    if p.frames < 2:
        raise ManifestError(f"frames must be at least 2 (flow needs a pair), got {p.frames}")
    if p.width < 32 or p.height < 32:
        raise ManifestError(f"size must be at least 32x32, got {p.width}x{p.height}")
    if not p.fps > 0:
        raise ManifestError(f"fps must be positive, got {p.fps}")


def num_groups(videos_per_class: int) -> int:
    """Groups per class: about two clips each, at least one per split."""
    return max(NUM_SPLITS, videos_per_class // 2)


def testing_split(group: int, groups: int) -> int:
    """The split (1..3) whose test list holds this 1-based group: split k tests the k-th third of the groups."""
    return (group - 1) * NUM_SPLITS // groups + 1


def _inverse_maps(motion: Motion, speed: float, phase: float, period: float, frames: int,
                  size: tuple[int, int]) -> np.ndarray:
    """Per frame, the 2x3 affine map from frame pixels to texture coordinates centred on 0: (T, 2, 3) float64."""
    w, h = size
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    maps = np.zeros((frames, 2, 3))
    for t in range(frames):
        tau = t - (frames - 1) / 2.0  # centred time: every frame statistic is symmetric between opposite classes
        a = np.eye(2)
        shift = np.zeros(2)
        if motion.kind == "drift":
            shift = speed * tau * np.asarray(motion.direction)
        elif motion.kind == "sway":
            amplitude = speed * period / (2 * math.pi)  # peak speed = amplitude * 2 pi / period
            shift = amplitude * math.sin(2 * math.pi * tau / period + phase) * np.asarray(motion.direction)
        elif motion.kind == "spin":
            theta = motion.sign * speed / REF_RADIUS * tau  # content turns by +theta: clockwise on screen (y down)
            c, s = math.cos(theta), math.sin(theta)
            a = np.array([[c, s], [-s, c]])  # inverse rotation
        elif motion.kind == "zoom":
            rate = min(1.0 + speed / REF_RADIUS, MAX_ZOOM ** (2.0 / max(frames - 1, 1)))
            a = np.eye(2) / rate ** (motion.sign * tau)
        # content moved by `shift` and transformed by inv(a): frame(p) = texture(a @ (p - centre) - shift)
        maps[t, :, :2] = a
        maps[t, :, 2] = -a @ centre - shift
    return maps


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random texture in [0, 1]: two octaves of upsampled Gaussian noise, (height, width) float32."""
    import cv2

    out = np.zeros((height, width), np.float32)
    for cell, weight in ((TEXTURE_CELL * 2.5, 0.6), (TEXTURE_CELL, 1.0)):
        low = rng.standard_normal((int(height / cell) + 3, int(width / cell) + 3)).astype(np.float32)
        out += weight * cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    out = (out - out.mean()) / (out.std() + 1e-6)
    return np.clip(0.5 + 0.3 * out, 0.0, 1.0)


def render_video(class_name: str, rng: np.random.Generator, frames: int, size: tuple[int, int]) -> np.ndarray:
    """One synthetic clip of the given class: (T, H, W, 3) uint8 BGR."""
    import cv2

    motion = MOTIONS[class_name]
    w, h = size
    speed = rng.uniform(*SPEED_RANGE)
    phase = rng.uniform(0, 2 * math.pi)
    period = rng.uniform(10.0, 16.0)
    maps = _inverse_maps(motion, speed, phase, period, frames, size)
    # Texture just large enough for every frame's footprint (plus a margin for interpolation).
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    reach = np.abs(maps @ corners).max(axis=(0, 2)) + 4  # (2,) half-extent in x and y
    half_w, half_h = int(math.ceil(reach[0])), int(math.ceil(reach[1]))
    texture = _texture(rng, 2 * half_h, 2 * half_w)
    while True:  # two colours whose grey levels differ enough for flow, which runs on grey frames
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(float(_GREY_BGR @ (c1 - c0))) > MIN_GREY_CONTRAST:
            break
    brightness = rng.uniform(0.7, 1.2)
    canvas = (c0 + (c1 - c0) * texture[..., None]).astype(np.float32) * np.float32(brightness)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        m = maps[t].copy()
        m[:, 2] += (half_w, half_h)  # texture coordinates centred on 0 -> canvas pixels
        frame = cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT101)
        out[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return out


def _write_avi(path: Path, clip: np.ndarray, fps: float) -> None:
    """Write (T, H, W, 3) uint8 BGR as MJPG AVI and check it reads back with exactly T frames."""
    import cv2

    t, h, w = clip.shape[:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise ManifestError(f"OpenCV cannot write MJPG AVI {path}; check that opencv-contrib-python-headless "
                            f"is installed and the folder is writable")
    for frame in clip:
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    if n != t:
        raise ManifestError(f"{path}: wrote {t} frames but read back {n}; the OpenCV video back end is broken")


def _prepare(out: Path) -> None:
    """Make OUT ready: refuse to touch a real dataset, clear an earlier synthetic one."""
    ours = [out / VIDEO_DIR, out / SPLITS_DIR, out / SYNTH_MARKER]
    if any(p.exists() for p in ours[:2]) and not ours[2].is_file():
        raise ManifestError(f"{out} already holds {VIDEO_DIR}/ or {SPLITS_DIR}/ that make_synthetic did not "
                            f"write (no {SYNTH_MARKER}); choose an empty output folder")
    for p in ours[:2]:
        if p.exists():
            shutil.rmtree(p)
    ours[2].unlink(missing_ok=True)


def make_synthetic(out_dir: str | os.PathLike, classes: int = DEFAULT_CLASSES,
                   videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS, seed: int = 0,
                   size: tuple[int, int] = DEFAULT_SIZE, frames: int = DEFAULT_FRAMES,
                   fps: float = DEFAULT_FPS) -> Path:
    """Write a synthetic motion-only dataset in UCF101 layout to out_dir and return out_dir.

    size is (width, height). Video (class k, clip i) is drawn from its own RNG seeded by (seed, k, i), so the
    frames do not depend on how many classes or clips are made. Rewrites an earlier synthetic dataset in
    out_dir; refuses to write over anything else.
    """
    params = SynthParams(int(classes), int(videos_per_class), int(seed), int(size[0]), int(size[1]),
                         int(frames), float(fps))
    _check_params(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out)
    # Written first: it marks everything here as synthetic, so a later run may replace even a partial one.
    (out / SYNTH_MARKER).write_text(json.dumps(asdict(params), indent=2) + "\n", encoding="utf-8")
    names = sorted(CLASS_NAMES[:params.classes])  # classInd is alphabetical, as in UCF101
    groups = num_groups(params.videos_per_class)
    records = []
    for label, name in enumerate(names):
        (out / VIDEO_DIR / name).mkdir(parents=True)
        for i in range(params.videos_per_class):
            group, clip = i % groups + 1, i // groups + 1
            rel = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
            rng = np.random.default_rng([params.seed, CLASS_NAMES.index(name), i])
            _write_avi(out / VIDEO_DIR / rel,
                       render_video(name, rng, params.frames, (params.width, params.height)), params.fps)
            splits = tuple("test" if testing_split(group, groups) == k else "train" for k in range(1, NUM_SPLITS + 1))
            records.append(VideoRecord(PurePosixPath(rel).stem, f"{VIDEO_DIR}/{rel}", name, label, group, splits))
    (out / SPLITS_DIR).mkdir()
    write_ucf101(out / SPLITS_DIR, Manifest("ucf101", names, records, num_splits=NUM_SPLITS))
    return out
