"""Crop geometry, flips and normalisation of RGB frames and flow stacks.

Sizes scale with the stored frames: crop sides are fractions of the frame's short side (the paper's
{256, 224, 192, 168} on 340x256 frames is ``scales = [1, 0.875, 0.75, 0.65625]``) and every crop is resized to
``input_size``. With decode = cpu, training crops are cut in the DataLoader workers (uint8, one crop for
every field of a stack, crop_resize_planes); with decode = device, the same crops are cut on the training
device from the decoded frames of a whole batch at once (crop_resize_batch). Normalisation, the flow-x sign
flip of mirrored samples and the test views are always computed on the device, so only uint8 (or JPEG
bytes) crosses process and PCIe boundaries.

Layouts: a 2D sample is (C, S, S) uint8 with C = 3 (RGB) or 2L (flow, x/y interleaved: x0, y0, x1, y1, ...);
a clip sample is (C, T, S, S) with C = 3 or 2 (x, y).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Kinetics-400 video models were trained with these statistics.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
FLOW_CENTER = 128.0  # quantised zero flow of a rounded store (floor(127.5 + 0.5)); data.flow_center gives each store's
FLOW_SCALE = 128.0


def crop_names(n_crops: int) -> list[str]:
    """Names of the test crops in score-file order: 1 -> centre; 5 -> corners + centre; 10 -> + flips."""
    if n_crops == 1:
        return ["center"]
    if n_crops == 5:
        return list(CORNERS)
    if n_crops == 10:
        return list(CORNERS) + [f"{c}_flip" for c in CORNERS]
    raise ValueError(f"n_crops must be 1, 5 or 10, got {n_crops}")


def crop_side(short_side: int, fraction: float) -> int:
    """Crop side in pixels for a fraction of the short side (round half up, at least 1)."""
    return max(1, min(short_side, int(fraction * short_side + 0.5)))


def scale_sizes(short_side: int, scales: Sequence[float]) -> list[int]:
    """The multi-scale crop sides in pixels: 256 * [1, .875, .75, .65625] -> [256, 224, 192, 168]."""
    return [crop_side(short_side, s) for s in scales]


def corner_offsets(height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
    """(y, x) of the top-left pixel of the 5 fixed crops, in CORNERS order (centre rounded down)."""
    dy, dx = height - crop_h, width - crop_w
    if dy < 0 or dx < 0:
        raise ValueError(f"crop {crop_w}x{crop_h} is larger than the frame {width}x{height}")
    return [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]


def sample_crop_box(height: int, width: int, scales: Sequence[float], corner: bool,
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random training crop (y, x, h, w): width and height each drawn from the scale set (aspect jitter),
    placed at one of the 5 fixed positions (corner cropping) or anywhere."""
    sizes = scale_sizes(min(height, width), scales)
    h = sizes[rng.integers(len(sizes))]
    w = sizes[rng.integers(len(sizes))]
    if corner:
        y, x = corner_offsets(height, width, h, w)[rng.integers(5)]
    else:
        y, x = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    return int(y), int(x), h, w


def test_crop_boxes(height: int, width: int, side: int, n_crops: int) -> list[tuple[int, int, int, int, bool]]:
    """The test views of one frame as (y, x, h, w, flipped), in crop_names(n_crops) order."""
    offsets = corner_offsets(height, width, side, side)
    if n_crops == 1:
        return [(*offsets[4], side, side, False)]
    boxes = [(y, x, side, side, False) for y, x in offsets]
    if n_crops == 10:
        boxes += [(y, x, side, side, True) for y, x in offsets]
    return boxes


def uniform_positions(n_positions: int, count: int) -> np.ndarray:
    """``count`` positions at uniform spacing in [0, n_positions), each in the middle of its segment.

    (count,) int64; positions repeat when there are fewer positions than asked for.
    """
    n = max(1, int(n_positions))
    return np.floor((np.arange(count) + 0.5) * n / count).astype(np.int64)


def sample_indices(start: int, length: int, available: int) -> np.ndarray:
    """Indices start..start+length-1, the last valid index repeated past the end of a short video."""
    return np.minimum(start + np.arange(length), available - 1).astype(np.int64)


def crop_resize_planes(frames: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool = False,
                       clip: bool = False, channels_first: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """The same crop of every frame or field, resized to size x size, optionally mirrored, as channel planes.

    frames: (n, H, W, c) uint8 (c = 3 RGB, or 2 flow x then y), or with ``channels_first`` (n, c, H, W) (as
    FlowStore.read_flow_planes gives flow). Returns (n*c, S, S) for 2D nets, channel i*c + k = component k
    of field i (flow: x0, y0, x1, y1, ...), or (c, n, S, S) for clip nets (see crop_resize_fields).
    """
    fields = [list(f) for f in frames] if channels_first else [[f] for f in frames]
    return crop_resize_fields(fields, box, size, flip, clip, out)


def crop_resize_fields(fields: list[list[np.ndarray]], box: tuple[int, int, int, int], size: int,
                       flip: bool = False, clip: bool = False, out: np.ndarray | None = None,
                       bgr: bool = False) -> np.ndarray:
    """crop_resize_planes on n fields given as lists of 2D planes (H, W) uint8 (flow: [x, y]) or of one
    (H, W, c) image (RGB; BGR as OpenCV decodes it with ``bgr``): views into decoded images, never copied.

    Returns (n*c, S, S) uint8 for 2D nets or (c, n, S, S) for clip nets, written into ``out`` if given (a
    DataLoader worker passes its batch's shared-memory slot, so the sample is not copied again).
    Resizing is OpenCV's INTER_LINEAR (half-pixel centres, edges replicated), one plane per call: a single
    20-channel call is slower (OpenCV vectorises up to 4 channels), and numpy transposes of small inner
    dimensions cost several times more than the resizing itself.
    """
    y, x, h, w = box
    n = len(fields)
    c = fields[0][0].shape[2] if fields[0][0].ndim == 3 else len(fields[0])
    if out is None:
        out = np.empty((c, n, size, size) if clip else (n * c, size, size), np.uint8)
    scratch = np.empty((size, size, c) if fields[0][0].ndim == 3 else (size, size), np.uint8)
    for i, planes in enumerate(fields):
        if planes[0].ndim == 2:
            for k, plane in enumerate(planes):
                _resize_into(plane[y:y + h, x:x + w], size, flip, out[(k, i) if clip else i * c + k], scratch)
            continue
        _resize_into(planes[0][y:y + h, x:x + w], size, flip, scratch, None)
        for k in range(c):  # HWC -> planes (BGR read backwards)
            out[(k, i) if clip else i * c + k] = scratch[..., c - 1 - k if bgr else k]
    return out


def _resize_into(img: np.ndarray, size: int, flip: bool, dst: np.ndarray, scratch: np.ndarray | None) -> None:
    """img (h, w[, c]) uint8 resized to (size, size[, c]), mirrored if ``flip``, written into ``dst``."""
    import cv2

    if img.shape[:2] == (size, size):
        if flip:
            cv2.flip(img, 1, dst=dst)
        else:
            dst[...] = img
        return
    if not flip:
        cv2.resize(img, (size, size), dst=dst, interpolation=cv2.INTER_LINEAR)
        return
    if scratch is None:
        scratch = np.empty_like(dst)
    cv2.resize(img, (size, size), dst=scratch, interpolation=cv2.INTER_LINEAR)
    cv2.flip(scratch, 1, dst=dst)


def resize_taps(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixels and weights of a linear resize of [start, start + length) to ``size`` pixels, per crop.

    start, length (B,) int. Returns lo, hi (B, size) int64 and frac (B, size) float32: output pixel j is
    src[lo] * (1 - frac) + src[hi] * frac. The rule is OpenCV's INTER_LINEAR (and torch's bilinear with
    align_corners=False): centre j + 0.5 maps to (j + 0.5) * length / size inside the crop, and positions
    beyond the crop's first or last pixel take that pixel (the crop's edge is replicated, never its
    neighbour outside the crop).
    """
    start = np.asarray(start, np.int64)[:, None]
    length = np.asarray(length, np.int64)[:, None]
    src = (np.arange(size)[None, :] + 0.5) * (length / size) - 0.5
    lo = np.floor(src)
    frac = src - lo
    lo = lo.astype(np.int64)
    before, after = lo < 0, lo >= length - 1
    lo = np.where(before, 0, np.where(after, length - 1, lo))
    frac = np.where(before | after, 0.0, frac)
    hi = np.minimum(lo + 1, length - 1)
    return lo + start, hi + start, frac.astype(np.float32)


def crop_resize_batch(x, boxes: np.ndarray, size: int, flipped: np.ndarray):
    """Every sample's crop resized to size x size and mirrored where ``flipped``, on x's device, at once.

    x (B, C, H, W) uint8 (one frame size for the batch), boxes (B, 4) int (y, x, h, w) on the host,
    flipped (B,) bool. Returns (B, C, S, S) float32 in pixel units (0..255), channels_last in memory:
    the same sample as crop_resize_planes, up to OpenCV's 11-bit fixed-point weights and its rounding to
    uint8 (here the values stay exact).
    """
    import torch

    dev = x.device
    ylo, yhi, fy = resize_taps(boxes[:, 0], boxes[:, 2], size)
    xlo, xhi, fx = resize_taps(boxes[:, 1], boxes[:, 3], size)
    mirror = np.asarray(flipped, bool)
    xlo[mirror], xhi[mirror], fx[mirror] = xlo[mirror, ::-1], xhi[mirror, ::-1], fx[mirror, ::-1]
    b = torch.arange(x.shape[0], device=dev)[:, None, None]  # (B, 1, 1)
    t = [torch.from_numpy(a).to(dev, non_blocking=True) for a in (ylo, yhi, fy, xlo, xhi, fx)]
    ylo, yhi, fy, xlo, xhi, fx = t
    rows, cols = (ylo[:, :, None], yhi[:, :, None]), (xlo[:, None, :], xhi[:, None, :])
    fy, fx = fy[:, :, None, None], fx[:, None, :, None]  # broadcast over (B, S, S, C)
    # x[b, :, r, c] puts the indexed dimensions first: (B, S, S, C)
    top = x[b, :, rows[0], cols[0]].float().lerp_(x[b, :, rows[0], cols[1]].float(), fx)
    bottom = x[b, :, rows[1], cols[0]].float().lerp_(x[b, :, rows[1], cols[1]].float(), fx)
    return top.lerp_(bottom, fy).permute(0, 3, 1, 2)  # (B, C, S, S), channels_last


def assemble_video(fields, layout, clip: bool):
    """Device-side layout of a test video (data.VideoItem): unique decoded fields -> frames or stacks.

    fields (U, H, W, c) uint8 (each needed frame or field decoded once), layout (F, n) rows of it ->
    (F, n*c, H, W) for 2D nets (x/y interleaved) or (F, c, n, H, W) for clip nets.
    """
    f, n = layout.shape
    x = fields[layout.reshape(-1)]  # (F*n, H, W, c)
    _, h, w, c = x.shape
    x = x.view(f, n, h, w, c)
    if clip:
        return x.permute(0, 4, 1, 2, 3).contiguous()
    return x.permute(0, 1, 4, 2, 3).reshape(f, n * c, h, w)


# -- device side (torch) ------------------------------------------------------------------------------------

_STATS: dict = {}


def _rgb_stats(clip: bool, device, dims: int):
    """Mean and std (x 255) as (1, 3, 1, ...) tensors, made once per device (no host-device copy per step)."""
    import torch

    key = (clip, str(device), dims)
    if key not in _STATS:
        mean, std = (KINETICS_MEAN, KINETICS_STD) if clip else (IMAGENET_MEAN, IMAGENET_STD)
        shape = (1, -1) + (1,) * (dims - 2)
        _STATS[key] = (torch.tensor(mean, device=device).view(shape) * 255.0,
                       torch.tensor(std, device=device).view(shape) * 255.0)
    return _STATS[key]


def normalize(x, stream: str, clip: bool, flipped=None, center: float = FLOW_CENTER):
    """uint8 (or float in pixel units) batch (B, C, [T,] S, S) -> float32 network input.

    RGB: ImageNet (2D) or Kinetics (clip) mean/std on [0, 1]. Flow: (u8 - center) / 128, ``center`` being
    the store's quantised zero flow (data.flow_center). ``flipped`` (B,) bool
    marks samples that were mirrored: their flow x channels are negated (a mirrored motion moves the other
    way), which is exact in this normalised space (zero flow stays zero). Nothing here waits for the device.
    """
    x = x.float()
    if stream == "spatial":
        mean, std = _rgb_stats(clip, x.device, x.dim())
        return (x - mean) / std
    x = (x - center) / FLOW_SCALE
    if flipped is not None and bool(flipped.any()):  # flipped is still on the host: no device sync
        sign = 1.0 - 2.0 * flipped.to(x.device, non_blocking=True).float()  # (B,): -1 mirrored, +1 not
        xs = flow_x_channels(x.shape[1], clip)
        x[:, xs] *= sign.view(-1, *(1,) * (x.dim() - 1))
    return x


def flow_x_channels(channels: int, clip: bool) -> slice:
    """Channels holding horizontal flow: 0, 2, 4, ... in a 2D stack; channel 0 of a clip."""
    return slice(0, 1) if clip else slice(0, channels, 2)


def make_test_views(video, stream: str, clip: bool, side: int, size: int, n_crops: int,
                    center: float = FLOW_CENTER):
    """All test views of one video on the device.

    video: (F, C, [T,] H, W) uint8, F frames or stacks. Returns (F, K, C, [T,] size, size) float32,
    normalised (flow about ``center``, see normalize), K = n_crops in crop_names order; mirrored views have
    flow x negated.
    """
    import torch
    import torch.nn.functional as nnf

    f = video.shape[0]
    h, w = video.shape[-2:]
    x = normalize(video, stream, clip, center=center)
    views = []
    for y0, x0, ch, cw, flipped in test_crop_boxes(h, w, side, n_crops):
        v = x[..., y0:y0 + ch, x0:x0 + cw]
        if ch != size or cw != size:
            lead = v.shape[:-2]
            v = nnf.interpolate(v.reshape(f, -1, ch, cw), size=(size, size), mode="bilinear",
                                align_corners=False).reshape(*lead, size, size)
        if flipped:
            v = v.flip(-1)
            if stream == "temporal":
                v = v.clone()
                v[:, flow_x_channels(v.shape[1], clip)] *= -1
        views.append(v)
    return torch.stack(views, dim=1)
