"""Image operations that reproduce OpenCV's, batched over (B, H, W) float32 tensors.

Each function names the OpenCV call it reproduces, with its sampling rules and its arithmetic: the order
of the sums and where its x86 AVX2 kernels use fused multiply-adds, which we emulate in double. Against
opencv-contrib-python 4.14 on an AVX2 machine they are bit-identical except where a docstring says
otherwise; elsewhere they agree to float rounding. docs/torchflow.md has the table.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cv_round(x: float) -> int:
    """cvRound / saturate_cast<int>(double): round half to even."""
    return int(round(x))


def _linear_taps(src_len: int, dst_len: int, scale: float, device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and weight of i1 for cv::resize INTER_LINEAR along one axis.

    ``scale`` is source pixels per destination pixel (OpenCV's 1/inv_scale); the first tap is clamped to the
    image and its weight set to 1 outside, as OpenCV does (replicated border).
    """
    d = torch.arange(dst_len, dtype=torch.float64, device=device)
    f = (d + 0.5) * scale - 0.5
    s = torch.floor(f)
    a = (f - s).to(torch.float32)  # fraction taken in double, then rounded, as OpenCV does
    s = s.to(torch.int64)
    low = s < 0
    a = torch.where(low, torch.zeros_like(a), a)
    s = torch.where(low, torch.zeros_like(s), s)
    high = s >= src_len - 1
    a = torch.where(high, torch.zeros_like(a), a)
    s = torch.where(high, torch.full_like(s, src_len - 1), s)
    s1 = torch.clamp(s + 1, max=src_len - 1)
    return s, s1, a


def _fma(a: torch.Tensor, b, c: torch.Tensor) -> torch.Tensor:
    """a*b + c rounded once to float32, like an FMA instruction (the product of two floats is exact in
    double, so one double add and one rounding to float reproduces it except in ~2^-29 of cases).
    ``b`` may be a tensor or a Python float holding a float32 value."""
    bd = b.double() if isinstance(b, torch.Tensor) else b
    return (a.double() * bd + c.double()).float()


def _lerp(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _fma(t, x1 - x0, x0)


def resize_linear(img: torch.Tensor, size: tuple[int, int], scale_xy: tuple[float, float] | None = None
                  ) -> torch.Tensor:
    """cv::resize(..., INTER_LINEAR) of (B, H, W) float32 to size (height, width).

    ``scale_xy`` are OpenCV's inv_scale_x/y when the call passed fx/fy and an empty dsize (the sampling
    step is then 1/fx, not src/dst); by default they are dst/src. The arithmetic is that of the IPP
    kernel that pip's OpenCV uses for float images: x0 + a*(x1 - x0) with one FMA, rows then columns
    (bit-exact against opencv-contrib-python 4.14 in our checks).
    """
    h, w = img.shape[-2:]
    oh, ow = size
    if scale_xy is None:
        inv_x, inv_y = ow / w, oh / h
    else:
        inv_x, inv_y = scale_xy
    sx, sy = 1.0 / inv_x, 1.0 / inv_y
    x0, x1, ax = _linear_taps(w, ow, sx, img.device)
    y0, y1, ay = _linear_taps(h, oh, sy, img.device)
    rows = _lerp(img[:, :, x0], img[:, :, x1], ax)
    return _lerp(rows[:, y0, :], rows[:, y1, :], ay[:, None])


def resize_linear_native(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv::resize(..., dsize, INTER_LINEAR) as OpenCV computes it itself, without IPP.

    OpenCV hands 1-channel float images to IPP (see resize_linear) but resizes 2-channel ones, such as
    Farneback's flow field, with its own code: float weights from a float source coordinate, columns
    clamped with their weights, rows clamped by index only (weights kept), rows then columns, plain float
    multiply-adds. (B, H, W) float32 per channel -> (B, oh, ow). Exact 2x shrinks, which OpenCV sends to
    its area code, are not reproduced (Farneback only enlarges its flow).
    """
    h, w = img.shape[-2:]
    oh, ow = size
    dev = img.device
    fx = ((torch.arange(ow, dtype=torch.float64, device=dev) + 0.5) * (w / ow) - 0.5).float()
    sx = torch.floor(fx)
    ax = fx - sx
    sx = sx.long()
    low, high = sx < 0, sx >= w - 1
    ax = torch.where(low | high, torch.zeros_like(ax), ax)
    sx = torch.where(low, torch.zeros_like(sx), torch.where(high, torch.full_like(sx, w - 1), sx))
    fy = ((torch.arange(oh, dtype=torch.float64, device=dev) + 0.5) * (h / oh) - 0.5).float()
    sy = torch.floor(fy)
    ay = (fy - sy)[:, None]
    sy = sy.long()
    rows = img[:, :, sx] * (1.0 - ax) + img[:, :, (sx + 1).clamp(max=w - 1)] * ax
    return rows[:, sy.clamp(0, h - 1), :] * (1.0 - ay) + rows[:, (sy + 1).clamp(0, h - 1), :] * ay


def resize_size(h: int, w: int, fx: float) -> tuple[int, int]:
    """Output (height, width) of cv::resize(src, dst, Size(), fx, fx)."""
    return cv_round(h * fx), cv_round(w * fx)


# --- bicubic remap -------------------------------------------------------------------------------------

INTER_BITS = 5
INTER_TAB_SIZE = 1 << INTER_BITS


def _cubic_coeffs(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's interpolateCubic (A = -0.75) in float32: (..., ) -> (..., 4)."""
    a = -0.75
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    c3 = 1 - c0 - c1 - c2
    return torch.stack([c0, c1, c2, c3], dim=-1)


_CUBIC_TABLES: dict = {}


def cubic_table(device) -> torch.Tensor:
    """(32, 4) float32 cubic weights for the 32 sub-pixel positions of cv::remap."""
    key = str(device)
    if key not in _CUBIC_TABLES:
        pos = torch.arange(INTER_TAB_SIZE, dtype=torch.float32) / INTER_TAB_SIZE
        _CUBIC_TABLES[key] = _cubic_coeffs(pos).to(torch.float32).to(device)
    return _CUBIC_TABLES[key]


def remap_cubic(imgs: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """cv::remap(img, dst, map_x, map_y, INTER_CUBIC, BORDER_CONSTANT 0) for several images sharing one map.

    imgs: (B, C, H, W) float32; map_x, map_y: (B, H, W) float32 absolute source coordinates.
    Returns (B, C, H, W). Like OpenCV, coordinates are rounded to 1/32 pixel and the weights come from
    a table. The sums follow OpenCV 4.14's arithmetic: where the 4x4 support lies inside the image,
    per-column FMA accumulation down the rows, then (c0 + c2) + (c1 + c3); elsewhere a sequential
    float sum over the 16 taps with zeros outside the image.
    """
    b, c, h, w = imgs.shape
    qx = torch.round(map_x * INTER_TAB_SIZE).to(torch.int32)
    qy = torch.round(map_y * INTER_TAB_SIZE).to(torch.int32)
    ix = torch.bitwise_right_shift(qx, INTER_BITS).long() - 1  # first column of the 4x4 support
    iy = torch.bitwise_right_shift(qy, INTER_BITS).long() - 1
    tab = cubic_table(imgs.device)
    wx = tab[torch.bitwise_and(qx, INTER_TAB_SIZE - 1).long()][:, None]  # (B, 1, H, W, 4)
    wy = tab[torch.bitwise_and(qy, INTER_TAB_SIZE - 1).long()][:, None]
    inside = ((ix >= 0) & (ix < w - 3) & (iy >= 0) & (iy < h - 3))[:, None]
    flat = imgs.reshape(b, c, h * w)
    zero = torch.zeros((), dtype=imgs.dtype, device=imgs.device)
    cols: list = [None] * 4  # interior path: FMA accumulation per column
    seq = None  # border path: sequential sum
    for k1 in range(4):
        yy = iy + k1
        vy = (yy >= 0) & (yy < h)
        yc = yy.clamp(0, h - 1)
        for k2 in range(4):
            xx = ix + k2
            valid = (vy & (xx >= 0) & (xx < w))[:, None]
            idx = (yc * w + xx.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
            v = torch.where(valid, torch.gather(flat, 2, idx).reshape(b, c, h, w), zero)
            wk = wy[..., k1] * wx[..., k2]  # float32 product, as in OpenCV's 2-D table
            cols[k2] = v * wk if k1 == 0 else _fma(v, wk, cols[k2])
            term = v * wk
            seq = term if seq is None else seq + term
    fast = (cols[0] + cols[2]) + (cols[1] + cols[3])
    return torch.where(inside, fast, seq)


# --- filters ---------------------------------------------------------------------------------------------

# A selection network for the median of 25 values (99 compare-exchanges; Paeth / Devillard's opt_med25):
# after these exchanges, element 12 holds the median. Checked exhaustively on all 2^25 binary inputs
# (0-1 principle), so it is exact for any input.
_MED25 = ((0, 1), (3, 4), (2, 4), (2, 3), (6, 7), (5, 7), (5, 6), (9, 10), (8, 10), (8, 9), (12, 13), (11, 13),
          (11, 12), (15, 16), (14, 16), (14, 15), (18, 19), (17, 19), (17, 18), (21, 22), (20, 22), (20, 21),
          (23, 24), (2, 5), (3, 6), (0, 6), (0, 3), (4, 7), (1, 7), (1, 4), (11, 14), (8, 14), (8, 11), (12, 15),
          (9, 15), (9, 12), (13, 16), (10, 16), (10, 13), (20, 23), (17, 23), (17, 20), (21, 24), (18, 24),
          (18, 21), (19, 22), (8, 17), (9, 18), (0, 18), (0, 9), (10, 19), (1, 19), (1, 10), (11, 20), (2, 20),
          (2, 11), (12, 21), (3, 21), (3, 12), (13, 22), (4, 22), (4, 13), (14, 23), (5, 23), (5, 14), (15, 24),
          (6, 24), (6, 15), (7, 16), (7, 19), (13, 21), (15, 23), (7, 13), (7, 15), (1, 9), (3, 11), (5, 17),
          (11, 17), (9, 17), (4, 10), (6, 12), (7, 14), (4, 6), (4, 7), (12, 14), (10, 14), (6, 7), (10, 12),
          (6, 10), (6, 17), (12, 17), (7, 17), (7, 10), (12, 18), (7, 12), (10, 18), (12, 20), (10, 20),
          (10, 12))


def median_blur5(x: torch.Tensor) -> torch.Tensor:
    """cv::medianBlur(x, 5) for float32 (B, H, W): exact median of the 5x5 window, replicated border.

    Runs the selection network on 25 shifted views: elementwise min/max only, no (B, H, W, 25) copy and
    no sort, which is several times faster than Tensor.median on CPU and GPU-friendly.
    """
    _, h, w = x.shape
    p = F.pad(x[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]
    v = [p[:, i:i + h, j:j + w] for i in range(5) for j in range(5)]
    for a, c in _MED25:
        v[a], v[c] = torch.minimum(v[a], v[c]), torch.maximum(v[a], v[c])
    return v[12].contiguous()


def gaussian_kernel(ksize: int, sigma: float) -> torch.Tensor:
    """cv::getGaussianKernel(ksize, sigma, CV_32F) as a (ksize,) float32 tensor."""
    small = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
             7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}
    if ksize % 2 == 1 and ksize <= 7 and sigma <= 0:
        return torch.tensor(small[ksize], dtype=torch.float32)
    sigma = sigma if sigma > 0 else ((ksize - 1) * 0.5 - 1) * 0.3 + 0.8
    c = (ksize - 1) * 0.5
    vals = [math.exp(-((i - c) ** 2) / (2 * sigma * sigma)) for i in range(ksize)]
    s = sum(vals)
    return torch.tensor([v / s for v in vals], dtype=torch.float64).to(torch.float32)


def pad_hw(x: torch.Tensor, left: int, right: int, top: int, bottom: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of a 3-D or 4-D tensor; mode "replicate" or "reflect" (OpenCV's REFLECT_101)."""
    if left == right == top == bottom == 0:
        return x
    if mode == "reflect" and (max(left, right) >= x.shape[-1] or max(top, bottom) >= x.shape[-2]):
        # torch cannot reflect by more than the size; index instead (rare: tiny images, wide kernels)
        r_y, r_x = max(top, bottom), max(left, right)
        ys = _reflect101_index(x.shape[-2], r_y, x.device)[r_y - top: r_y + x.shape[-2] + bottom]
        xs = _reflect101_index(x.shape[-1], r_x, x.device)[r_x - left: r_x + x.shape[-1] + right]
        return x[..., ys, :][..., xs]
    squeeze = x.ndim == 3
    y = F.pad(x[:, None] if squeeze else x, (left, right, top, bottom), mode=mode)
    return y[:, 0] if squeeze else y


def _reflect101_index(n: int, r: int, device) -> torch.Tensor:
    i = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def gaussian_blur(x: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """cv::GaussianBlur(x, Size(k, k), sigma, sigma) for float32 (B, H, W), BORDER_REFLECT_101.

    Arithmetic of OpenCV 4.14's AVX2 float filters: rows as a sequential FMA chain over the taps (3 and 5
    taps: the inner pair first, then the centre, then the outer pair), columns as centre times weight
    followed by FMAs of the symmetric pairs. (OpenCV's last width % 8 columns go through scalar code
    whose rounding this does not follow; see docs/torchflow.md.)
    """
    k = [float(v) for v in gaussian_kernel(ksize, sigma)]
    r = ksize // 2
    _, h, w = x.shape
    p = pad_hw(x, r, r, 0, 0, "reflect")

    def col(i):
        return p[:, :, i:i + w]

    if ksize == 3:
        out = _fma(col(1), k[1], (col(0) + col(2)) * k[0])
    elif ksize == 5:
        out = _fma(col(0) + col(4), k[0], _fma(col(2), k[2], (col(1) + col(3)) * k[1]))
    else:
        out = col(0) * k[0]
        for i in range(1, ksize):
            out = _fma(col(i), k[i], out)
    p = pad_hw(out, 0, 0, r, r, "reflect")
    res = p[:, r:r + h, :] * k[r]
    for i in range(1, r + 1):
        res = _fma(p[:, r - i:r - i + h, :] + p[:, r + i:r + i + h, :], k[r + i], res)
    return res
