"""Synthetic test scenes with known motion and the parity figures used to compare flows with OpenCV.

Used by the tests and by benchmarks/bench_torchflow.py; numpy only (JPEG round trips import cv2 lazily).
"""
from __future__ import annotations

import numpy as np

from flowprep.flow.quantize import quantize


def _scene(x: np.ndarray, y: np.ndarray, rng_state: dict) -> np.ndarray:
    """Intensity of the scene at continuous coordinates (any shape), 0..255 float64."""
    val = np.full(x.shape, 120.0)
    for a, kx, ky, ph in rng_state["waves"]:
        val += a * np.sin(kx * x + ky * y + ph)
    for cx, cy, r, amp, square in rng_state["shapes"]:
        if square:
            d = np.maximum(np.abs(x - cx), np.abs(y - cy)) - r
        else:
            d = np.hypot(x - cx, y - cy) - r
        val += amp * np.clip(0.5 - d, 0.0, 1.0)  # 1-pixel anti-aliased edge
    return val


def synthetic_pair(height: int, width: int, seed: int = 0, shift: tuple[float, float] = (1.3, -0.7),
                   angle_deg: float = 1.0, noise: float = 1.5, jpeg_quality: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured frame pair related by a known rigid motion.

    The scene (smooth random texture of several wavelengths plus bright and dark discs and squares with
    sharp edges) is rotated by ``angle_deg`` about the image centre and shifted by ``shift`` (x, y) pixels.
    Returns prev, nxt: (H, W) uint8, and the true flow (H, W, 2) float32, x then y, in pixels
    (prev[y, x] ~ nxt[y + v, x + u]). Gaussian noise of ``noise`` grey levels; optional JPEG round trip.
    """
    rng = np.random.default_rng(seed)
    scale = max(height, width)
    waves = []
    for _ in range(28):
        wavelength = rng.uniform(5.0, 0.8 * scale)
        ang = rng.uniform(0, np.pi)
        k = 2 * np.pi / wavelength
        waves.append((rng.uniform(4.0, 14.0) * min(1.0, wavelength / 10.0), k * np.cos(ang), k * np.sin(ang),
                      rng.uniform(0, 2 * np.pi)))
    shapes = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(2, max(3.0, scale / 6)),
               rng.uniform(-50, 50), bool(rng.integers(2))) for _ in range(max(4, scale // 12))]
    state = {"waves": waves, "shapes": shapes}
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    th = np.deg2rad(angle_deg)
    c, s = np.cos(th), np.sin(th)
    # motion T(p) = R (p - c) + c + t; the next frame shows the scene at T^-1(q)
    qx, qy = xx - cx - shift[0], yy - cy - shift[1]
    sx, sy = c * qx + s * qy + cx, -s * qx + c * qy + cy
    prev = _scene(xx, yy, state)
    nxt = _scene(sx, sy, state)
    tx = c * (xx - cx) - s * (yy - cy) + cx + shift[0]
    ty = s * (xx - cx) + c * (yy - cy) + cy + shift[1]
    flow = np.stack([tx - xx, ty - yy], axis=-1).astype(np.float32)
    out = []
    for img in (prev, nxt):
        img = img + rng.normal(0.0, noise, img.shape)
        img = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
        if jpeg_quality is not None:
            import cv2

            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        out.append(img)
    return out[0], out[1], flow


def compare_flows(a: np.ndarray, b: np.ndarray, bound: float = 20.0, margin: int = 0) -> dict[str, float]:
    """Parity figures between two (..., H, W, 2) flows.

    epe: mean end-point error (px); within_0.1 / within_0.5: share of pixels whose end-point error is at
    most 0.1 / 0.5 px; u8_equal / u8_within1: share of quantised values (both components) identical /
    within +-1 after quantisation at ``bound``. ``margin`` pixels at each image border are left out.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if margin:
        a = a[..., margin:-margin, margin:-margin, :]
        b = b[..., margin:-margin, margin:-margin, :]
    epe = np.sqrt(((a - b) ** 2).sum(-1))
    qa = quantize(a, bound).astype(np.int16)
    qb = quantize(b, bound).astype(np.int16)
    dq = np.abs(qa - qb)
    return {"epe": float(epe.mean()), "within_0.1": float((epe <= 0.1).mean()),
            "within_0.5": float((epe <= 0.5).mean()), "u8_equal": float((dq == 0).mean()),
            "u8_within1": float((dq <= 1).mean())}
