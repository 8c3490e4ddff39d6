"""How a store keeps its images: one `Codec` per value of the config's ``codec``, the one place that knows
what each stores, how it encodes a frame or a field, and how a field's stored images decode.

    jpeg     RGB frames as JPEGs; each flow field as one gray JPEG (H, 2W), x | y side by side
    jpeg-xy  RGB frames as JPEGs; each flow field as two gray JPEGs (H, W), x then y, as TSN's dense_flow,
             open-mmlab denseflow, mmaction2's rawframes and the twostreamfusion downloads keep them, so an
             import keeps their bytes as they are
    raw      pixels: (H, W, 3) frames and (H, W, 2) fields, uint8

Layout in the file: flowprep.store.format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowprep.errors import OptionError, StoreError

DEFAULT_CODEC = "jpeg"
DEFAULT_JPEG_QUALITY = 95
MIN_JPEG_QUALITY, MAX_JPEG_QUALITY = 1, 100


@dataclass(frozen=True)
class Codec:
    """One way of keeping images. ``jpeg``: byte strings with offsets (else pixel arrays);
    ``flow_images``: stored images per flow field; ``description``: for --help and messages."""

    name: str
    jpeg: bool
    flow_images: int
    description: str

    def encode(self, kind: str, array: np.ndarray, quality: int) -> tuple[np.ndarray, ...]:
        """The stored images of one RGB frame (kind "rgb", (H, W, 3) uint8) or quantised field (kind "flow",
        (H, W, 2) uint8, x then y): JPEG bytes ((n,) uint8 each) or the pixels, ``flow_images`` of them for
        a field. Thread-safe (cv2 releases the GIL while it encodes)."""
        if not self.jpeg:
            return (np.ascontiguousarray(array, dtype=np.uint8),)
        if kind == "flow" and self.flow_images == 2:
            return encode_jpeg("gray", array[..., 0], quality), encode_jpeg("gray", array[..., 1], quality)
        return (encode_jpeg(kind, array, quality),)


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("jpeg", True, 1, "flow x | y side by side in one gray JPEG"),
    Codec("jpeg-xy", True, 2, "x and y as two gray JPEGs"),
    Codec("raw", False, 1, "pixels"),
)}


def decode_image(kind: str, images: tuple[np.ndarray, ...], out: np.ndarray) -> bool:
    """Decode one stored frame or field (as `Codec.encode` wrote it) into ``out``: the one JPEG decoder of every
    reader (the store's, and `fusion predict`'s, which takes new videos through the codec and back).

    kind "rgb": images = (jpeg,), out (H, W, 3) uint8 RGB. Kind "flow": images = (x | y jpeg,) (codec jpeg) or
    (x jpeg, y jpeg) (codec jpeg-xy), out (2, H, W) uint8 planes (a transposed view of (H, W, 2) works).
    Returns False when an image does not decode to out's size (damaged data); nothing else is checked here.
    """
    import cv2

    if kind == "rgb":
        img = cv2.imdecode(images[0], cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != out.shape[:2]:
            return False
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out)
        return True
    h, w = out.shape[1:]
    if len(images) == 2:  # jpeg-xy: each plane decoded straight from its own JPEG
        for plane, image in zip(out, images):
            img = cv2.imdecode(image, cv2.IMREAD_GRAYSCALE)
            if img is None or img.shape != (h, w):
                return False
            plane[...] = img
        return True
    img = cv2.imdecode(images[0], cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != (h, 2 * w):
        return False
    # stored side by side (H, 2W): x | y; as planes, whole rows are copied (no interleaving)
    out[0] = img[:, :w]
    out[1] = img[:, w:]
    return True


def codec(name: str) -> Codec:
    """The codec called ``name``; OptionError naming the codecs otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise OptionError(f"unknown --codec {name!r}; choose one of {', '.join(CODECS)}") from None


def check_jpeg_quality(quality: int) -> None:
    """--jpeg-quality, the one check of it: MIN_JPEG_QUALITY..MAX_JPEG_QUALITY; OptionError otherwise."""
    if not MIN_JPEG_QUALITY <= quality <= MAX_JPEG_QUALITY:
        raise OptionError(f"--jpeg-quality must be {MIN_JPEG_QUALITY}..{MAX_JPEG_QUALITY}, got {quality}")


def encode_jpeg(kind: str, array: np.ndarray, quality: int) -> np.ndarray:
    """The JPEG bytes of one RGB frame (kind "rgb", (H, W, 3) uint8), flow field (kind "flow", (H, W, 2)
    uint8, encoded as one gray image (H, 2W), x | y) or gray plane (kind "gray", (H, W) uint8): (n,) uint8.
    Thread-safe (cv2 releases the GIL while it encodes)."""
    import cv2

    if kind == "rgb":
        image = array[..., ::-1]  # OpenCV encodes BGR
    elif kind == "flow":
        image = np.concatenate([array[..., 0], array[..., 1]], axis=1)
    else:
        image = array
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise StoreError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.reshape(-1)
