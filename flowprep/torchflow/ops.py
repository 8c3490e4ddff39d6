"""Image operations with OpenCV's exact sampling rules, batched over (B, H, W) float32 tensors.

Each function names the OpenCV call it reproduces. They agree with OpenCV to float rounding (a few ulp),
not bit for bit: OpenCV's SIMD kernels sum in an order torch does not promise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cv_round(x: float) -> int:
    """cvRound / saturate_cast<int>(double): round half to even."""
    return int(round(x))


def _linear_taps(src_len: int, dst_len: int, scale: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def resize_linear(img: torch.Tensor, size: tuple[int, int], scale_xy: tuple[float, float] | None = None
                  ) -> torch.Tensor:
    """cv::resize(..., INTER_LINEAR) of (B, H, W) float32 to size (height, width).

    ``scale_xy`` are OpenCV's inv_scale_x/y when the call passed fx/fy and an empty dsize (the sampling
    step is then 1/fx, not src/dst); by default they are dst/src.
    """
    h, w = img.shape[-2:]
    oh, ow = size
    if scale_xy is None:
        inv_x, inv_y = ow / w, oh / h
    else:
        inv_x, inv_y = scale_xy
    sx, sy = 1.0 / inv_x, 1.0 / inv_y
    if abs(sx - 2.0) < 2.2e-16 and abs(sy - 2.0) < 2.2e-16 and ow * 2 == w and oh * 2 == h:
        # OpenCV switches an exact 2x linear shrink to the fast area average.
        b = img.reshape(img.shape[0], oh, 2, ow, 2)
        return ((b[:, :, 0, :, 0] + b[:, :, 0, :, 1]) + (b[:, :, 1, :, 0] + b[:, :, 1, :, 1])) * 0.25
    x0, x1, ax = _linear_taps(w, ow, sx, img.device)
    y0, y1, ay = _linear_taps(h, oh, sy, img.device)
    # horizontal pass first, then vertical, both in float32 like OpenCV's HResize/VResize
    rows = img[:, :, x0] * (1.0 - ax) + img[:, :, x1] * ax
    return rows[:, y0, :] * (1.0 - ay)[:, None] + rows[:, y1, :] * ay[:, None]


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
    OpenCV rounds the coordinates to 1/32 pixel and reads the weights from a table; so does this.
    Returns (B, C, H, W).
    """
    b, c, h, w = imgs.shape
    qx = torch.round(map_x * INTER_TAB_SIZE).to(torch.int32)
    qy = torch.round(map_y * INTER_TAB_SIZE).to(torch.int32)
    ix = torch.bitwise_right_shift(qx, INTER_BITS).long() - 1
    iy = torch.bitwise_right_shift(qy, INTER_BITS).long() - 1
    tab = cubic_table(imgs.device)
    wx = tab[torch.bitwise_and(qx, INTER_TAB_SIZE - 1).long()]  # (B, H, W, 4)
    wy = tab[torch.bitwise_and(qy, INTER_TAB_SIZE - 1).long()]
    flat = imgs.reshape(b, c, h * w)
    out = None
    for k1 in range(4):
        yy = iy + k1
        vy = (yy >= 0) & (yy < h)
        yc = yy.clamp(0, h - 1)
        row = None
        for k2 in range(4):
            xx = ix + k2
            valid = vy & (xx >= 0) & (xx < w)
            idx = (yc * w + xx.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
            v = torch.gather(flat, 2, idx).reshape(b, c, h, w)
            v = torch.where(valid[:, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
            wk = (wy[..., k1] * wx[..., k2])[:, None]
            term = v * wk
            row = term if row is None else row + term
        out = row if out is None else out + row
    return out


# --- filters ---------------------------------------------------------------------------------------------

def median_blur5(x: torch.Tensor) -> torch.Tensor:
    """cv::medianBlur(x, 5) for float32 (B, H, W): exact median of the 5x5 window, replicated border."""
    b, h, w = x.shape
    p = F.pad(x[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]
    win = p.unfold(1, 5, 1).unfold(2, 5, 1).reshape(b, h, w, 25)
    return win.median(dim=-1).values


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


def _reflect101_index(n: int, r: int, device) -> torch.Tensor:
    i = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def gaussian_blur(x: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """cv::GaussianBlur(x, Size(k, k), sigma, sigma) for float32 (B, H, W), BORDER_REFLECT_101."""
    k = gaussian_kernel(ksize, sigma).to(x.device)
    r = ksize // 2
    b, h, w = x.shape
    xi = _reflect101_index(w, r, x.device)
    yi = _reflect101_index(h, r, x.device)
    # symmetric taps summed as centre*k0 + sum (left+right)*ki, the order of OpenCV's symmetric filters
    p = x[:, :, xi]
    out = p[:, :, r:r + w] * k[r]
    for i in range(1, r + 1):
        out = out + (p[:, :, r - i:r - i + w] + p[:, :, r + i:r + i + w]) * k[r + i]
    p = out[:, yi, :]
    out = p[:, r:r + h, :] * k[r]
    for i in range(1, r + 1):
        out = out + (p[:, r - i:r - i + h, :] + p[:, r + i:r + i + h, :]) * k[r + i]
    return out
