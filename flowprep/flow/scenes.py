"""Rendered frame pairs with exactly known motion, for measuring how good a flow is.

A scene is a background layer and optional foreground objects. Each layer is a continuous intensity
function (a texture) moved by its own affine motion. Both frames are rendered by sampling that function
at the pixel centres, so the true flow is exactly what the frames show: the point a pixel of the first
frame shows is shown in the second frame at ``p + flow(p)``, unless something now covers it or it has
left the frame. Those pixels are flagged (occluded, outside), and so is the 1-pixel anti-aliased rim of
each object, whose pixels mix two motions. Noise and JPEG compression are applied after sampling, to
both frames. This follows the construction of parity.synthetic_pair, made layered and with more textures.

    frames = render(SCENES["occlusion_slow"], 256, 340)
    frames.prev, frames.nxt    # (H, W) uint8
    frames.flow                # (H, W, 2) float32, x then y, pixels; prev[y, x] ~ nxt[y + v, x + u]
    frames.valid               # (H, W) bool: visible in both frames and not on an object's rim

numpy only (JPEG round trips import cv2 when asked for).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TEXTURES = ("mixed", "smooth", "fine", "flat", "edges")


@dataclass(frozen=True)
class Motion:
    """An affine motion T(p) = zoom * R(angle) (p - c) + c + shift, in pixels and degrees.

    ``centre`` c is (x, y) in pixels, None for the image centre ((W - 1) / 2, (H - 1) / 2).
    Positive angles turn x towards y (clockwise on screen, since y points down).
    """

    shift: tuple[float, float] = (0.0, 0.0)
    angle_deg: float = 0.0
    zoom: float = 1.0
    centre: tuple[float, float] | None = None

    def _parts(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A (2, 2), c (2,), t (2,)) of T(p) = A (p - c) + c + t."""
        th = np.deg2rad(self.angle_deg)
        a = self.zoom * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        c = np.array(self.centre if self.centre is not None else ((width - 1) / 2.0, (height - 1) / 2.0))
        return a, c, np.asarray(self.shift, dtype=np.float64)

    def forward(self, x: np.ndarray, y: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the points (x, y) of the first frame are in the second: T(p)."""
        a, c, t = self._parts(height, width)
        dx, dy = x - c[0], y - c[1]
        return a[0, 0] * dx + a[0, 1] * dy + c[0] + t[0], a[1, 0] * dx + a[1, 1] * dy + c[1] + t[1]

    def inverse(self, x: np.ndarray, y: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Which first-frame points the second frame shows at (x, y): T^-1(q)."""
        a, c, t = self._parts(height, width)
        ai = np.linalg.inv(a)
        dx, dy = x - c[0] - t[0], y - c[1] - t[1]
        return ai[0, 0] * dx + ai[0, 1] * dy + c[0], ai[1, 0] * dx + ai[1, 1] * dy + c[1]


@dataclass(frozen=True)
class Texture:
    """A continuous intensity function: ``kind`` (one of TEXTURES) drawn with ``seed``.

    mixed: sinusoids of wavelengths 5 px to 0.8 x the frame side plus sharp-edged discs and squares (as
    parity.synthetic_pair); smooth: long waves only (wavelengths 0.15 to 1 x the side), no edges; fine:
    short waves (4 to 12 px) over faint long ones; flat: nearly uniform grey with a faint gradient and a
    few shapes with sharp edges (large regions where flow cannot be seen); edges: piecewise-constant overlapping
    discs and squares of random grey, nothing between the edges.
    """

    kind: str = "mixed"
    seed: int = 0

    def params(self, height: int, width: int) -> dict:
        """The random waves and shapes of this texture for frames of height x width px."""
        if self.kind not in TEXTURES:
            raise ValueError(f"unknown texture {self.kind!r}; choose one of {', '.join(TEXTURES)}")
        rng = np.random.default_rng(self.seed)
        scale = float(max(height, width))

        def waves(n: int, lo: float, hi: float, amp: tuple[float, float]) -> list:
            out = []
            for _ in range(n):
                wavelength = rng.uniform(lo, hi)
                ang = rng.uniform(0, np.pi)
                k = 2 * np.pi / wavelength
                out.append((rng.uniform(*amp), k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * np.pi)))
            return out

        def shapes(n: int, r_lo: float, r_hi: float, amp: float) -> list:
            return [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(r_lo, r_hi), rng.uniform(-amp, amp),
                     bool(rng.integers(2))) for _ in range(n)]

        if self.kind == "mixed":
            # waves shorter than 10 px are made fainter, as in parity.synthetic_pair
            w = [(a * min(1.0, 2 * np.pi / np.hypot(kx, ky) / 10.0), kx, ky, ph)
                 for a, kx, ky, ph in waves(28, 5.0, 0.8 * scale, (4, 14))]
            return {"base": 120.0, "waves": w, "shapes": shapes(max(4, int(scale) // 12), 2, max(3.0, scale / 6), 50)}
        if self.kind == "smooth":
            return {"base": 125.0, "waves": waves(8, 0.15 * scale, scale, (8, 22)), "shapes": []}
        if self.kind == "fine":
            return {"base": 125.0, "waves": waves(24, 4.0, 12.0, (4, 10)) + waves(4, 0.3 * scale, scale, (3, 8)),
                    "shapes": []}
        if self.kind == "flat":
            return {"base": 128.0, "waves": waves(2, scale, 2 * scale, (1, 3)),
                    "shapes": shapes(6, 4, max(5.0, scale / 10), 45)}
        return {"base": 110.0, "waves": [], "shapes": shapes(max(8, int(scale) // 8), 4, max(6.0, scale / 5), 60)}


def _intensity(params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A texture's intensity at continuous coordinates (any shape), float64 grey levels."""
    val = np.full(x.shape, params["base"])
    for a, kx, ky, ph in params["waves"]:
        val += a * np.sin(kx * x + ky * y + ph)
    for cx, cy, r, amp, square in params["shapes"]:
        d = np.maximum(np.abs(x - cx), np.abs(y - cy)) - r if square else np.hypot(x - cx, y - cy) - r
        val += amp * np.clip(0.5 - d, 0.0, 1.0)  # anti-aliased over 1 px
    return val


@dataclass(frozen=True)
class Layer:
    """A textured layer and its motion. A foreground object also has an ellipse outline in the first
    frame, ``outline`` = (cx, cy, rx, ry) as fractions of the frame width / height."""

    texture: Texture
    motion: Motion = Motion()
    outline: tuple[float, float, float, float] | None = None

    def centre(self, height: int, width: int) -> tuple[float, float]:
        """The outline's centre in pixels (first frame)."""
        cx, cy, _, _ = self.outline
        return cx * (width - 1), cy * (height - 1)

    def distance(self, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
        """Approximate signed distance in first-frame pixels to the outline (negative inside)."""
        cx, cy = self.centre(height, width)
        rx, ry = self.outline[2] * width, self.outline[3] * height
        return (np.hypot((x - cx) / rx, (y - cy) / ry) - 1.0) * min(rx, ry)


@dataclass(frozen=True)
class Scene:
    """A background, foreground objects drawn over it in order, and the degradations of both frames:
    Gaussian noise of ``noise`` grey levels, then optionally a JPEG round trip at ``jpeg_quality``."""

    background: Layer
    objects: tuple[Layer, ...] = ()
    noise: float = 1.0
    jpeg_quality: int | None = None
    seed: int = 0
    group: str = ""
    description: str = ""

    def _motion(self, layer: Layer, height: int, width: int) -> Motion:
        """The layer's motion, an object's about its own centre unless given."""
        m = layer.motion
        if layer.outline is not None and m.centre is None:
            return Motion(m.shift, m.angle_deg, m.zoom, layer.centre(height, width))
        return m

    def coverage(self, index: int, t: int, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
        """Opacity 0..1 of object ``index`` at points (x, y) of frame ``t`` (0 or 1)."""
        layer = self.objects[index]
        motion = self._motion(layer, height, width)
        sx, sy = (x, y) if t == 0 else motion.inverse(x, y, height, width)
        return np.clip(0.5 - layer.distance(sx, sy, height, width), 0.0, 1.0)  # the rim: 1 px of the object

    def intensity(self, t: int, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
        """Noise-free intensity of frame ``t`` (0 or 1) at continuous points (x, y), float64 grey levels."""
        layers = (self.background,) + self.objects
        val = None
        for i, layer in enumerate(layers):
            motion = self._motion(layer, height, width)
            sx, sy = (x, y) if t == 0 else motion.inverse(x, y, height, width)
            colour = _intensity(layer.texture.params(height, width), sx, sy)
            if i == 0:
                val = colour
            else:
                alpha = self.coverage(i - 1, t, x, y, height, width)
                val = alpha * colour + (1.0 - alpha) * val
        return val

    def truth(self, height: int, width: int) -> dict[str, np.ndarray]:
        """The true flow and masks on the first frame's pixel grid.

        flow: (H, W, 2) float32, x then y, pixels, of the top layer whose outline holds the pixel centre.
        occluded: (H, W) bool, the point is covered (even partly) by an object above it in frame 2;
        outside: it leaves the frame (its frame-2 position is outside [0, W-1] x [0, H-1]);
        boundary: the pixel mixes an object and what is behind it (on the anti-aliased rim, 0 < opacity < 1);
        valid: none of these.
        """
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        layers = (self.background,) + self.objects
        top = np.zeros((height, width), dtype=np.int64)
        boundary = np.zeros((height, width), dtype=bool)
        for i in range(len(self.objects)):
            alpha = self.coverage(i, 0, xx, yy, height, width)
            top[alpha >= 0.5] = i + 1
            boundary |= (alpha > 0) & (alpha < 1)
        dest = np.zeros((height, width, 2))
        for i, layer in enumerate(layers):
            tx, ty = self._motion(layer, height, width).forward(xx, yy, height, width)
            sel = top == i
            dest[sel] = np.stack([tx, ty], -1)[sel]
        flow = dest - np.stack([xx, yy], -1)
        occluded = np.zeros((height, width), dtype=bool)
        for j in range(len(self.objects)):
            cover = self.coverage(j, 1, dest[..., 0], dest[..., 1], height, width) > 0
            occluded |= cover & (top < j + 1)
        outside = ((dest[..., 0] < 0) | (dest[..., 0] > width - 1) | (dest[..., 1] < 0)
                   | (dest[..., 1] > height - 1))
        return {"flow": flow.astype(np.float32), "occluded": occluded, "outside": outside, "boundary": boundary,
                "valid": ~(occluded | outside | boundary)}


@dataclass
class Frames:
    """A rendered pair: prev, nxt (H, W) uint8; flow (H, W, 2) float32, x then y, px; masks (H, W) bool."""

    prev: np.ndarray
    nxt: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    occluded: np.ndarray
    outside: np.ndarray
    boundary: np.ndarray
    scene: Scene = field(repr=False)


def _degrade(img: np.ndarray, noise: float, jpeg_quality: int | None, rng: np.random.Generator) -> np.ndarray:
    """float grey levels -> uint8 with Gaussian noise of ``noise`` levels and an optional JPEG round trip."""
    if noise:
        img = img + rng.normal(0.0, noise, img.shape)
    img = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        import cv2

        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError("cv2.imencode failed to write a JPEG")
        img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return img


def render(scene: Scene, height: int, width: int) -> Frames:
    """The frame pair of ``scene`` at height x width pixels, with its true flow and masks (see Scene.truth)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(scene.seed + 7919)
    prev = _degrade(scene.intensity(0, xx, yy, height, width), scene.noise, scene.jpeg_quality, rng)
    nxt = _degrade(scene.intensity(1, xx, yy, height, width), scene.noise, scene.jpeg_quality, rng)
    return Frames(prev=prev, nxt=nxt, scene=scene, **scene.truth(height, width))


def _catalogue() -> dict[str, Scene]:
    """The benchmark's scenes, by name. Motions are in pixels at any frame size (340x256 in the benchmark)."""
    mixed = Texture("mixed", seed=1)
    base_motion = Motion(shift=(2.7, -1.8), angle_deg=1.5)  # the texture and degradation scenes' motion
    scenes: dict[str, Scene] = {}
    # translations from sub-pixel to beyond the quantisation bound of 20 px (x = 24.5)
    for name, shift in (("shift_0.4", (0.35, -0.2)), ("shift_1.8", (1.6, -0.9)), ("shift_5", (4.4, 2.7)),
                        ("shift_13", (11.3, -6.2)), ("shift_25", (24.5, 3.1))):
        scenes[name] = Scene(Layer(mixed, Motion(shift=shift)),
                             group="translation 25 px" if name == "shift_25" else "translation",
                             description=f"translation by ({shift[0]}, {shift[1]}) px")
    for name, motion, what in (
            ("rotate_2deg", Motion(angle_deg=2.0), "rotation by 2 deg about the centre"),
            ("rotate_5deg", Motion(angle_deg=-5.0), "rotation by -5 deg about the centre"),
            ("zoom_in_4pct", Motion(zoom=1.04), "zoom by 1.04 about the centre"),
            ("zoom_out_5pct", Motion(zoom=0.95), "zoom by 0.95 about the centre"),
            ("rot_zoom_shift", Motion(shift=(2.5, -1.5), angle_deg=3.0, zoom=1.02),
             "rotation 3 deg, zoom 1.02, shift (2.5, -1.5) px")):
        scenes[name] = Scene(Layer(mixed, motion), group="rotation/zoom", description=what)
    scenes["occlusion_slow"] = Scene(
        Layer(mixed, Motion(shift=(2.1, 0.4))),
        (Layer(Texture("mixed", seed=2), Motion(shift=(-6.3, 3.8)), outline=(0.42, 0.5, 0.17, 0.22)),),
        group="occlusion", description="object moving (-6.3, 3.8) px over a background moving (2.1, 0.4) px")
    scenes["occlusion_fast"] = Scene(
        Layer(mixed, Motion(shift=(1.0, 0.5), zoom=1.02)),
        (Layer(Texture("edges", seed=3), Motion(shift=(14.0, -5.0), angle_deg=4.0), outline=(0.35, 0.45, 0.14, 0.2)),),
        group="occlusion", description="object moving (14, -5) px and turning 4 deg over a zooming background")
    for kind in ("smooth", "fine", "flat", "edges"):
        scenes[f"texture_{kind}"] = Scene(Layer(Texture(kind, seed=4), base_motion), group=f"texture {kind}",
                                          description=f"{kind} texture, shift (2.7, -1.8) px + 1.5 deg")
    for name, noise, quality in (("noise_4", 4.0, None), ("noise_10", 10.0, None), ("jpeg_75", 1.0, 75),
                                 ("jpeg_40", 1.0, 40)):
        what = f"noise {noise} grey levels" + (f", JPEG quality {quality}" if quality else "")
        scenes[name] = Scene(Layer(mixed, base_motion), noise=noise, jpeg_quality=quality, seed=5,
                             group="noise/JPEG", description=f"mixed texture, {what}")
    return scenes


SCENES: dict[str, Scene] = _catalogue()
QUICK = ("shift_1.8", "shift_25", "rot_zoom_shift", "occlusion_slow", "texture_flat", "jpeg_40")

__all__ = ["Motion", "Texture", "Layer", "Scene", "Frames", "render", "SCENES", "QUICK", "TEXTURES"]
