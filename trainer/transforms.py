"""Crop geometry, flips and normalisation of RGB frames and flow stacks.

Sizes scale with the stored frames: crop sides are fractions of the frame's short side (the paper's
{256, 224, 192, 168} on 340x256 frames is ``scales = [1, 0.875, 0.75, 0.65625]``) and every crop is resized to
``input_size``. Training crops are cut on the CPU in the DataLoader workers (uint8, one crop for every
field of a stack); normalisation, the flow-x sign flip of mirrored samples and the test views are computed
on the device, so only uint8 crosses process and PCIe boundaries.

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
FLOW_CENTER = 128.0  # quantised zero flow (floor(127.5 + 0.5)); data.open_store sets the store's (FlowStore.flow_zero)
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
                       clip: bool = False, channels_first: bool = False) -> np.ndarray:
    """The same crop of every frame or field, resized to size x size, optionally mirrored, as channel planes.

    frames: (n, H, W, c) uint8 (c = 3 RGB, or 2 flow x then y), or with ``channels_first`` (n, c, H, W) (as
    FlowStore.read_flow_planes gives flow). Returns (n*c, S, S) for 2D nets, channel i*c + k = component k
    of field i (flow: x0, y0, x1, y1, ...), or (c, n, S, S) for clip nets.
    Work is done per field with OpenCV (resize, flip, split into planes): no numpy transposes of small
    inner dimensions, which cost several times more than the resizing itself.
    """
    import cv2

    y, x, h, w = box
    if channels_first:
        n, c = frames.shape[:2]
        out = np.empty((c, n, size, size) if clip else (n * c, size, size), np.uint8)
        for i in range(n):
            for k in range(c):
                img = frames[i, k, y:y + h, x:x + w]
                if h != size or w != size:
                    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
                if flip:
                    img = cv2.flip(np.ascontiguousarray(img), 1)
                out[(k, i) if clip else i * c + k] = img
        return out
    n, _, _, c = frames.shape
    out = np.empty((c, n, size, size) if clip else (n * c, size, size), np.uint8)
    for i in range(n):
        img = frames[i, y:y + h, x:x + w]
        if h != size or w != size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        if flip:
            img = cv2.flip(np.ascontiguousarray(img), 1)
        planes = cv2.split(np.ascontiguousarray(img)) if c > 1 else [img.reshape(size, size)]
        for k, plane in enumerate(planes):
            if clip:
                out[k, i] = plane
            else:
                out[i * c + k] = plane
    return out


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


def normalize(x, stream: str, clip: bool, flipped=None):
    """uint8 batch (B, C, [T,] S, S) -> float32 network input.

    RGB: ImageNet (2D) or Kinetics (clip) mean/std on [0, 1]. Flow: (u8 - 128) / 128. ``flipped`` (B,) bool
    marks samples that were mirrored: their flow x channels are negated (a mirrored motion moves the other
    way), which is exact in this normalised space (zero flow stays zero). Nothing here waits for the device.
    """
    x = x.float()
    if stream == "spatial":
        mean, std = _rgb_stats(clip, x.device, x.dim())
        return (x - mean) / std
    x = (x - FLOW_CENTER) / FLOW_SCALE
    if flipped is not None and bool(flipped.any()):  # flipped is still on the host: no device sync
        sign = 1.0 - 2.0 * flipped.to(x.device, non_blocking=True).float()  # (B,): -1 mirrored, +1 not
        xs = flow_x_channels(x.shape[1], clip)
        x[:, xs] *= sign.view(-1, *(1,) * (x.dim() - 1))
    return x


def flow_x_channels(channels: int, clip: bool) -> slice:
    """Channels holding horizontal flow: 0, 2, 4, ... in a 2D stack; channel 0 of a clip."""
    return slice(0, 1) if clip else slice(0, channels, 2)


def make_test_views(video, stream: str, clip: bool, side: int, size: int, n_crops: int):
    """All test views of one video on the device.

    video: (F, C, [T,] H, W) uint8, F frames or stacks. Returns (F, K, C, [T,] size, size) float32,
    normalised, K = n_crops in crop_names order; mirrored views have flow x negated.
    """
    import torch
    import torch.nn.functional as nnf

    f = video.shape[0]
    h, w = video.shape[-2:]
    x = normalize(video, stream, clip)
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
