"""What a video file's own container structure says about truncation, read from its chunk headers.

A download or copy that stopped leaves a file shorter than its container declares. The decoder then gives
the frames up to the cut, the last one possibly half decoded, and a cut inside the last frames of a short
clip stays within the frame-count slack that real UCF101 files need (see flowprep.video.decode). The container
headers are exact about it:
- AVI (RIFF): each RIFF chunk ('AVI ', then 'AVIX' for OpenDML files over 1 GB) declares its size;
- MP4/MOV/3GP (ISO base media, ISO/IEC 14496-12): each top-level box ('ftyp', 'moov', 'mdat'...) declares
  its size (a size of 0 means "to the end of the file");
- MKV/WebM (Matroska, RFC 9559): the Segment element after the EBML header declares its size, unless the
  muxer wrote "unknown" (live streams).
A file shorter than the chunks or boxes it declares is cut. Other containers are left to the frame checks.
Reading costs a few header reads per file (no decoding).
"""
from __future__ import annotations

import os
import struct

_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)  # written by streaming muxers that never went back to fill them in
_MAX_BOXES = 100_000  # a bound on the walk through a damaged file's boxes
_EBML_ID, _SEGMENT_ID = b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67"


def container_cut(path: str | os.PathLike) -> str | None:
    """Why ``path`` is shorter than its container declares, or None (complete, or not checked)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                return _riff_cut(f, size)
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
                return _boxes_cut(f, size)
            if head[:4] == _EBML_ID:
                return _matroska_cut(f, size)
    except OSError:
        return None  # opening the video will report it
    return None


def _riff_cut(f, size: int) -> str | None:
    pos = 0
    while pos + 12 <= size:
        f.seek(pos)
        head = f.read(12)
        if head[:4] != b"RIFF":
            return None  # trailing data after the RIFF chunks (not ours to judge)
        declared = struct.unpack("<I", head[4:8])[0]
        if declared in _UNKNOWN_RIFF_SIZES:
            return None
        end = pos + 8 + declared + (declared & 1)  # chunks are padded to an even size
        if end > size + (declared & 1):
            return f"its RIFF chunk at byte {pos} declares {declared + 8} bytes, but the file ends after {size - pos}"
        pos = end
    return None


def _boxes_cut(f, size: int) -> str | None:
    pos = 0
    for _ in range(_MAX_BOXES):
        if pos + 8 > size:
            return None if pos == size else f"the file ends inside a box header at byte {pos}"
        f.seek(pos)
        head = f.read(16)
        declared, kind = struct.unpack(">I", head[:4])[0], head[4:8].decode("latin-1")
        if declared == 0:  # the last box runs to the end of the file
            return None
        if declared == 1:  # a 64-bit size follows the type
            if len(head) < 16:
                return f"the file ends inside the header of box {kind!r} at byte {pos}"
            declared = struct.unpack(">Q", head[8:16])[0]
        if declared < 8:
            return None  # not a box structure we can follow
        if pos + declared > size:
            return f"its box {kind!r} at byte {pos} declares {declared} bytes, but the file ends after {size - pos}"
        pos += declared
    return None


def _vint(data: bytes, at: int) -> tuple[int | None, int]:
    """An EBML variable-size integer at ``at``: (value, or None for "unknown"; its length in bytes)."""
    if at >= len(data) or data[at] == 0:
        raise ValueError("not an EBML size")
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        raise ValueError("cut EBML size")
    value = int.from_bytes(data[at:at + length], "big") & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _matroska_cut(f, size: int) -> str | None:
    f.seek(0)
    data = f.read(4096)
    try:
        header_size, n = _vint(data, 4)
        pos = 4 + n + (header_size or 0)
        if data[pos:pos + 4] != _SEGMENT_ID:
            return None
        declared, n = _vint(data, pos + 4)
    except ValueError:
        return None
    if declared is None:
        return None
    end = pos + 4 + n + declared
    if end > size:
        return f"its Matroska segment declares {end} bytes in all, but the file has {size}"
    return None
