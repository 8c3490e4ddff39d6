"""The flow store's file format: what the files hold, the one helper that opens a file and checks its kind,
and the checks every field passes before it is used. Shared by the store's writer and reader.

Layout of one store file (``kind`` = "store"):

    /                       attrs: format, kind, complete, config (JSON object), expected (count)
    /manifest               the dataset manifest (data_manifest text format), all videos of the dataset
    /expected_ids           the video ids this file was asked to hold (a shard holds a subset)
    /failures               JSON lines: {"video_id", "path", "reason"} of videos that could not be extracted
    /videos/<video_id>      attrs: record (JSON object: frames, flows, fps, source size, clipped share, crc32...)
        codec "jpeg":  rgb_jpeg (bytes,) uint8 + rgb_offsets (frames+1,) int64 + rgb_crcs (frames,) uint32
                       flow_jpeg (bytes,) uint8 + flow_offsets (flows+1,) int64 + flow_crcs (flows,) uint32
                       (one gray JPEG per flow field, x and y side by side: (H, 2W))
        codec "jpeg-xy": rgb as with jpeg; flow_jpeg holds two gray JPEGs (H, W) per field, x then y
                       (x0 y0 x1 y1 ...), flow_offsets (2*flows+1,) and flow_crcs (2*flows,) one per JPEG
        codec "raw":   rgb (frames, H, W, 3) uint8, flow (flows, H, W, 2) uint8, rgb_crcs, flow_crcs

``*_crcs`` hold the CRC-32 of each stored image (its JPEG bytes, or its raw pixels), so a reader can check
every image it decodes; stores written before they existed are read without that check. The record's
``rgb_crc32`` / ``flow_crc32`` is the CRC-32 of the whole byte array (or of the pixels in order).
Flow k lies between frames k and k+1 (0-based); flows = frames - 1.

Why jpeg-xy: TSN's dense_flow, open-mmlab denseflow, mmaction2's rawframes and the twostreamfusion
downloads all keep x and y as separate gray JPEGs. An import into jpeg-xy keeps those bytes as they are;
one into jpeg would decode them and JPEG-encode the x | y image again, a second lossy step (its error is
measured by benchmarks/bench_interop.py). The reader decodes both codecs into the same arrays.

A part file (``kind`` = "part") has the same layout for one video; a master file (``kind`` = "master")
lists shard store files (paths relative to it) to be read as one store.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from flowprep.video.decode import MAX_SIDE  # the largest frame side extract writes: a larger one is damage
from flowprep.errors import StoreError

FORMAT = "flowprep-store/1"
CODECS = ("jpeg", "jpeg-xy", "raw")
JPEG_CODECS = ("jpeg", "jpeg-xy")  # codecs that store JPEG byte strings with offsets
# Stored images per flow field: jpeg-xy keeps x and y as two gray JPEGs, as the other tools write them.
FLOW_IMAGES = {"jpeg": 1, "jpeg-xy": 2, "raw": 1}
DEFAULT_CODEC = "jpeg"
DEFAULT_JPEG_QUALITY = 95
INDEX_CONVENTION = "0-based; flow k lies between RGB frames k and k+1; flows = frames - 1"
FLOW_LAYOUT = "(n, H, W, 2) uint8, channel 0 = x (horizontal), channel 1 = y (vertical)"
CHANNELS = {"rgb": 3, "flow": 2}
# Settings that must agree for a resumed run or for shards merged into one store.
COMPAT_KEYS = ("algo", "params", "bound", "rounding", "codec", "jpeg_quality", "size", "interpolation",
               "implementation")
_RECORD_INTS = ("num_frames", "num_flows", "width", "height", "rgb_crc32", "flow_crc32")


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def part_key(video_id: str) -> str:
    """File-system-safe, stable name of a video's part file."""
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:20]


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or h5py's RuntimeError around one) reports a full disk or quota."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


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


def decode_image(kind: str, images, out: np.ndarray) -> bool:
    """Decode one stored frame or field (as ``encode_jpeg`` wrote it) into ``out``: the one JPEG decoder of
    every reader (the store's, and `fusion predict`'s, which round-trips new videos through the codec).

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


def open_store_file(path: str | os.PathLike, kinds: tuple[str, ...] = ("store", "master")):
    """An open h5py.File of a finished flowprep file whose ``kind`` is one of ``kinds``: the one place that
    checks existence, readability, format, completeness and kind. StoreError names the file and the fix."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store; run `flowprep extract --out {path}` first")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 flow store ({exc}); re-run the extraction") from exc
    try:
        if as_str(f.attrs.get("format", "")) != FORMAT:
            raise StoreError(f"{path}: not a flowprep store (format attribute {f.attrs.get('format')!r})")
        kind = as_str(f.attrs.get("kind", ""))
        if kind not in kinds:
            raise StoreError(_wrong_kind(path, kind, kinds))
        if not f.attrs.get("complete", False):
            raise StoreError(f"{path}: the store was not finished; re-run the same `flowprep extract` to "
                             "complete it")
    except BaseException:
        f.close()
        raise
    return f


def _wrong_kind(path: Path, kind: str, kinds: tuple[str, ...]) -> str:
    if kind == "part":
        return (f"{path} is a part file of an unfinished extraction (one video, kept in <out>.parts/); re-run "
                "the same `flowprep extract` to assemble the store")
    if kind == "master":
        return (f"{path} is a master file written by `flowprep merge` (it lists shard files and holds no "
                "videos); a master file cannot list another one, and extract cannot add to one")
    return f"{path}: not a flow store of kind {' or '.join(kinds)} (kind={kind!r})"


def _json(text: Any, where: str, what: str) -> Any:
    try:
        return json.loads(as_str(text))
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{where}: {what} is not valid JSON ({exc}); the file is damaged: restore it from a "
                         "copy or re-extract with --overwrite") from None


def _damaged(where: str, what: str) -> StoreError:
    return StoreError(f"{where}: {what}; the file is damaged: restore it from a copy or re-extract it "
                      "(for one video: remove it from the dataset, re-run, put it back and re-run)")


def read_config(f, path: str | os.PathLike) -> dict[str, Any]:
    """The extraction settings recorded in an open store, part or master file, checked: a JSON object with
    a known codec and a positive bound."""
    config = _json(f.attrs.get("config", "{}"), str(path), "the config attribute")
    if not isinstance(config, dict):
        raise _damaged(str(path), f"the config attribute is a JSON {type(config).__name__}, not an object")
    if config.get("codec") not in CODECS:
        raise _damaged(str(path), f"the config's codec is {config.get('codec')!r}, not one of {', '.join(CODECS)}")
    bound = config.get("bound")
    if not isinstance(bound, (int, float)) or isinstance(bound, bool) or not bound > 0:
        raise _damaged(str(path), f"the config's bound is {bound!r}, not a positive number")
    return config


def check_record(record: Any, path: str | os.PathLike, video_id: str) -> dict[str, Any]:
    """A video's record, checked before use: a JSON object whose counts, sizes and checksums are integers
    in range (frames >= 1, flows = frames - 1, 1 <= sides <= MAX_SIDE)."""
    where = f"{path}: video {video_id!r}"
    if not isinstance(record, dict):
        raise _damaged(where, f"its record is a JSON {type(record).__name__}, not an object")
    for key in _RECORD_INTS:
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _damaged(where, f"record field {key} is {value!r}, not a count")
    if record["num_frames"] < 1 or record["num_flows"] != record["num_frames"] - 1:
        raise _damaged(where, f"record says {record['num_frames']} frames and {record['num_flows']} flow fields")
    for key in ("width", "height"):
        if not 1 <= record[key] <= MAX_SIDE:
            raise _damaged(where, f"record field {key} is {record[key]}, outside 1..{MAX_SIDE}")
    return record


def check_offsets(offsets: np.ndarray, count: int, nbytes: int, where: str) -> np.ndarray:
    """The offsets of ``count`` images in a byte array of ``nbytes``, checked: (count + 1,) integers from 0,
    never decreasing, ending at ``nbytes``. Returns them as int64."""
    offsets = np.asarray(offsets)
    if offsets.shape != (count + 1,) or offsets.dtype.kind not in "iu":
        raise _damaged(where, f"offsets have shape {offsets.shape} and type {offsets.dtype}; the record says "
                              f"{count} images, so ({count + 1},) integers")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != nbytes or (np.diff(offsets) < 0).any():
        raise _damaged(where, f"offsets run from {offsets[0]} to {offsets[-1]} over {nbytes} stored bytes"
                              + (" and go backwards" if (np.diff(offsets) < 0).any() else ""))
    return offsets


def read_failures(f, path: str | os.PathLike) -> list[dict[str, str]]:
    """The /failures lines of an open store file, each checked to be {"video_id", "path", "reason"}."""
    failures = []
    for n, line in enumerate(as_str(f["failures"][()]).splitlines(), 1):
        if not line.strip():
            continue
        item = _json(line, f"{path}:/failures line {n}", "the line")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("video_id", "path", "reason")):
            raise _damaged(f"{path}:/failures line {n}", "it is not an object with video_id, path and reason")
        failures.append(item)
    return failures


def read_contents(f, path: str | os.PathLike) -> dict[str, Any]:
    """What an open store file holds besides the data, every part checked: manifest text, expected ids,
    failures and per-video records."""
    try:
        videos = f["videos"]
        # names first, then each group: h5py's items() holds its global lock until the iteration ends, and
        # a damaged record raising mid-iteration would leave it held while the error lives (other threads
        # using h5py then wait forever)
        records = {vid: check_record(_json(videos[vid].attrs["record"], f"{path}: video {vid!r}", "its record"),
                                     path, vid) for vid in list(videos)}
        return {"manifest": as_str(f["manifest"][()]),
                "expected_ids": [as_str(v) for v in f["expected_ids"][()]],
                "failures": read_failures(f, path), "records": records}
    except StoreError:
        raise
    except (KeyError, AttributeError, TypeError, ValueError, OSError, RuntimeError) as exc:
        # h5py reports broken object headers and B-trees as any of these, even as a missing group
        raise StoreError(f"{path}: the store's HDF5 metadata is damaged ({type(exc).__name__}: {exc}); "
                         "restore the file from a copy or re-extract it with --overwrite") from exc


def incompatibilities(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Settings in which two extraction configs differ (the ones that change the stored data)."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPAT_KEYS if a.get(k) != b.get(k)]
