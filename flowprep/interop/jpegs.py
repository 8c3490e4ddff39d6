"""Checking the JPEG files an import reads: their headers (size, channels, sample precision, EXIF
orientation), whether they end, and one decode of each that treats a decoder warning as damage.

A JPEG whose entropy-coded data was cut and closed with an end marker still decodes: libjpeg fills what
is missing with grey and only warns ("Corrupt JPEG data: premature end of data segment"), and
cv2.imdecode returns the image. `Decoder` catches that warning (libjpeg writes it to the process's
standard error, once per image) so such a file is refused instead of stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowprep.errors import VideoError

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_APP1 = 0xE1
_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "transposed",
                 6: "rotated 90 degrees", 7: "transversed", 8: "rotated 270 degrees"}
WARNING_BYTES = 512  # of a decoder warning kept for the message


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's frame header says: size, components (1 gray, 3 colour, 4 CMYK), bits per sample, and
    the EXIF orientation (1: as stored; None: no EXIF orientation)."""

    height: int
    width: int
    components: int
    precision: int
    orientation: int | None = None


def _exif_orientation(segment: bytes) -> int | None:
    """The Orientation tag of an APP1 Exif segment's first IFD (``segment``: the bytes after the length)."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return None
    tiff = segment[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[0:2], order) == _ORIENTATION_TAG:
            return int.from_bytes(entry[8:10], order)  # a SHORT, left-justified in the value field
    return None


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of a JPEG (and any EXIF orientation before it), without decoding; None when
    ``data`` is not a JPEG or its header is cut."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n, orientation = 2, len(data), None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 10 > n:
                return None
            return JpegHeader(int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"),
                              data[i + 9], data[i + 4], orientation)
        if marker == 0xDA or length < 2:  # scan data before any frame header: broken
            return None
        if marker == _APP1 and orientation is None:
            orientation = _exif_orientation(data[i + 4:i + 2 + length])
        i += 2 + length
    return None


def jpeg_shape(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header; None when not a JPEG or its header is cut."""
    head = jpeg_header(data)
    return None if head is None else (head.height, head.width, head.components)


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG ends with its end-of-image marker (a file cut short does not; padding zeros allowed)."""
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def check_jpeg(path: Path, data: bytes, kind: str) -> JpegHeader:
    """The header of a whole 8-bit JPEG fit for ``kind`` ("rgb": 1 or 3 components; "flow": gray) without
    EXIF rotation; VideoError naming the file and what is wrong otherwise."""
    if not data:
        raise VideoError(f"{path}: empty file")
    head = jpeg_header(data)
    if head is None:
        raise VideoError(f"{path}: not a JPEG image (or its header is damaged)")
    if not jpeg_complete(data):
        raise VideoError(f"{path}: cut short (no JPEG end marker): the copy or the tool stopped while writing it")
    if head.precision != 8:
        raise VideoError(f"{path}: a {head.precision}-bit JPEG; frame and flow tools write 8-bit JPEGs, and "
                         "8-bit decoders (OpenCV's among them) cannot read it as written: convert it to 8 bits")
    if head.orientation not in (None, 1):
        raise VideoError(f"{path}: its EXIF orientation says the picture is "
                         f"{_ORIENTATIONS.get(head.orientation, f'in orientation {head.orientation}')}; OpenCV "
                         "turns it on reading while other readers do not, so the stored frame would not be the "
                         "video's: write the frames without EXIF rotation")
    if kind == "flow" and head.components != 1:
        raise VideoError(f"{path}: a {head.components}-channel (colour) JPEG as flow; each flow image is one "
                         "gray plane (x or y): this is not a flow image")
    if kind == "rgb" and head.components not in (1, 3):
        raise VideoError(f"{path}: a JPEG of {head.components} channels (CMYK?); frames are colour or gray")
    return head


class Decoder:
    """cv2.imdecode that also returns libjpeg's warning: libjpeg writes it to file descriptor 2, which is
    pointed at a temporary file for the call. Costs a few system calls per image (~1% of decoding a
    340x256 JPEG). One per process; not for threads that write to standard error at the same time."""

    def __init__(self):
        import tempfile

        self._file = tempfile.TemporaryFile()
        self._fd = self._file.fileno()

    def decode(self, data: bytes, flag: int) -> tuple[np.ndarray | None, str]:
        import cv2

        saved = os.dup(2)
        os.dup2(self._fd, 2)
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        warning = ""
        if os.fstat(self._fd).st_size:
            warning = os.pread(self._fd, WARNING_BYTES, 0).decode(errors="replace").strip()
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        return img, warning

    def checked(self, path: Path, data: bytes, flag: int, size: tuple[int, int] | None,
                like: str = "") -> np.ndarray:
        """The decoded image ((H, W) gray or (H, W, 3) BGR uint8); VideoError when it does not decode, the
        decoder warned (damaged data it would fill with grey), or its size is not ``size`` (H, W)."""
        img, warning = self.decode(data, flag)
        if img is None:
            raise VideoError(f"{path}: does not decode as a JPEG image")
        if warning:
            raise VideoError(f"{path}: damaged JPEG data (the decoder says {warning.splitlines()[0]!r}; it "
                             "would fill the damaged part with grey): copy or write the file again")
        if size is not None and img.shape[:2] != size:
            raise VideoError(f"{path}: {img.shape[1]}x{img.shape[0]}, not {size[1]}x{size[0]} {like}; the store "
                             "holds one size per video")
        return img


_DECODERS: dict[int, Decoder] = {}


def decoder() -> Decoder:
    """This process's Decoder (a forked child makes its own: the file's offset would be shared)."""
    pid = os.getpid()
    if pid not in _DECODERS:
        _DECODERS.clear()
        _DECODERS[pid] = Decoder()
    return _DECODERS[pid]
