"""Reading flow stores: `FlowStore`, the public reader of store files, master files and lists of shards."""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from flowprep.errors import StoreError
from flowprep.store.codec import CODECS, decode_image
from flowprep.store.format import (CHANNELS, as_str, check_offsets, incompatibilities, open_store_file,
                                   read_config, read_contents)

DATASET_CACHE = 1024  # open per-video datasets a reader keeps (per process)


@dataclass
class _Stored:
    """One video's stored images of one kind, checked against its record when first opened."""

    data: Any  # h5py dataset: (n, H, W, c) for codec raw, the (bytes,) JPEG array for the jpeg codecs
    offsets: np.ndarray | None  # jpeg codecs: (images + 1,) int64
    crcs: np.ndarray  # (images,) uint32 CRC-32 of each image
    per_item: int = 1  # stored images per frame or field: 2 for flow with codec jpeg-xy (x, y)


class FlowStore:
    """Read access to one store file, a master file over shards, or a list of store files.

    HDF5 handles are opened lazily and per process, so the object can be passed to DataLoader workers.
    Every image read is checked against the CRC-32 stored with it (where the store has them: about 3 us
    per 340x256 flow JPEG, ~1% of decoding it), so damaged data raises StoreError instead of being used.
    """

    def __init__(self, path: str | os.PathLike | Iterable[str | os.PathLike], check_crc: bool = True):
        self.missing_shards: list[str] = []  # "I/N" of shards a `merge --partial` left out
        if isinstance(path, (str, os.PathLike)):
            self.path = Path(path)
            self.files = self._files_of(self.path)
        else:
            self.files = [Path(p).resolve() for p in path]
            self.path = self.files[0] if self.files else None
        if not self.files:
            raise StoreError("FlowStore needs at least one store file")
        self.check_crc = check_crc
        self._where: dict[str, int] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self.failures: list[dict[str, str]] = []
        self.expected_ids: list[str] = []
        self.attrs: dict[str, Any] = self._read_metadata(0)
        for i in range(1, len(self.files)):
            if diff := incompatibilities(self.attrs, self._read_metadata(i)):
                raise StoreError(f"{self.files[i]} was extracted with other settings than {self.files[0]}: "
                                 f"{'; '.join(diff)}")
        self.video_ids: list[str] = sorted(self._where)
        self._manifest = None
        self._pid = None
        self._handles: dict[int, Any] = {}
        # (video_id, kind) -> _Stored: h5py name lookups cost ~0.1 ms each, a read ~0.03 ms
        self._stored: dict[tuple[str, str], _Stored] = {}

    def _files_of(self, path: Path) -> list[Path]:
        """The store files ``path`` stands for: itself, or the shards a master file lists."""
        with open_store_file(path) as f:
            if as_str(f.attrs["kind"]) != "master":
                return [path.resolve()]
            try:
                shards = json.loads(as_str(f.attrs["shards"]))
                self.missing_shards = json.loads(as_str(f.attrs.get("missing_shards", "[]")))
            except (KeyError, ValueError) as exc:
                raise StoreError(f"{path}: the master file's shard list is damaged ({exc}); write it again "
                                 "with `flowprep merge`") from None
            if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
                raise StoreError(f"{path}: the master file's shard list is not a list of paths; write it again "
                                 "with `flowprep merge`")
            return [(path.parent / p).resolve() for p in shards]

    def _read_metadata(self, i: int) -> dict[str, Any]:
        """Config, manifest, expected ids, failures and records of store file number ``i``; its config."""
        file = self.files[i]
        with open_store_file(file, kinds=("store",)) as f:
            config = read_config(f, file)
            contents = read_contents(f, file)
        if i == 0:
            self._manifest_text = contents["manifest"]
        self.expected_ids += contents["expected_ids"]
        self.failures += contents["failures"]
        for vid, record in contents["records"].items():
            if vid in self._where:
                raise StoreError(f"video {vid!r} is in both {self.files[self._where[vid]]} and {file}")
            self._where[vid] = i
            self._records[vid] = record
        return config

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "FlowStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles.values():
            try:
                h.close()
            except Exception:  # a handle inherited from another process may not close cleanly
                pass
        self._handles.clear()
        self._stored.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_stored"], state["_pid"] = {}, {}, None
        return state

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked or unpickled in a worker: never reuse the parent's handles
            self._handles, self._stored, self._pid = {}, {}, os.getpid()

    def _file_of(self, video_id: str) -> Path:
        return self.files[self._where[video_id]]

    def _group(self, video_id: str):
        import h5py

        self._check_process()
        try:
            i = self._where[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}") from None
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r", rdcc_nbytes=4 << 20)
        return self._handles[i]["videos"][video_id]

    # -- metadata --------------------------------------------------------------------------------------
    @property
    def manifest(self):
        """The dataset manifest (data_manifest.Manifest) the store was extracted from."""
        if self._manifest is None:
            from data_manifest import Manifest

            self._manifest = Manifest.from_text(self._manifest_text, source=f"{self.path}:/manifest")
        return self._manifest

    def record(self, video_id: str) -> dict[str, Any]:
        """Per-video extraction record: num_frames, num_flows, fps, source size, clipped_fraction, crc32..."""
        if video_id not in self._records:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}")
        return self._records[video_id]

    @property
    def codec(self):
        """How the store keeps its images (flowprep.store.codec.Codec): ``.jpeg`` (JPEG bytes, else pixels),
        ``.flow_images`` (stored images per flow field: 2 for jpeg-xy)."""
        return CODECS[self.attrs["codec"]]

    @property
    def rounding(self) -> str:
        """How the store's flow was quantised: "round" (extract, and stores from before the rule was a
        choice) or "truncate" (imported flow of a truncating tool); flowprep.flow.quantize.rounding_of."""
        from flowprep.flow.quantize import rounding_of

        return rounding_of(self.attrs)

    @property
    def flow_zero(self) -> float:
        """The u8 value zero flow is stored as (128.0 rounded, 127.0 truncated): where a network's input
        is centred."""
        from flowprep.flow.quantize import ZERO_FLOW

        return ZERO_FLOW[self.rounding]

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Stored uint8 flow (any shape) -> float32 pixels, with the store's bound and rounding rule."""
        from flowprep.flow.quantize import dequantize

        return dequantize(q, self.attrs["bound"], self.rounding)

    @property
    def redo(self) -> str:
        """How to make a damaged video again, for messages: with the command that made the store."""
        if self.attrs.get("algo") == "imported":
            return "import that video again (`flowprep import` made this store)"
        return "re-extract that video (`flowprep extract` made this store)"

    def num_frames(self, video_id: str) -> int:
        """Number of RGB frames; the video has num_frames - 1 flow fields."""
        return int(self.record(video_id)["num_frames"])

    def num_flows(self, video_id: str) -> int:
        return int(self.record(video_id)["num_flows"])

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._where

    # -- data ------------------------------------------------------------------------------------------
    def _indices(self, video_id: str, indices, count: int, kind: str) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.ndim != 1:
            raise IndexError(f"{kind} indices must be a 1-D sequence, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= count):
            raise IndexError(f"{kind} index out of range for {video_id!r}: valid 0..{count - 1}, "
                             f"got {idx.min()}..{idx.max()}")
        return idx

    def _open_stored(self, video_id: str, kind: str) -> _Stored:
        """The video's ``kind`` datasets, with their shapes and offsets checked against its record."""
        group = self._group(video_id)
        rec = self._records[video_id]
        per_item = 1 if kind == "rgb" else self.codec.flow_images
        count = (rec["num_frames"] if kind == "rgb" else rec["num_flows"]) * per_item  # stored images
        where = f"{self._file_of(video_id)}: video {video_id!r} {kind}"
        try:
            crcs = group[f"{kind}_crcs"][()]
            if not self.codec.jpeg:
                data, offsets = group[kind], None
                want = (count, rec["height"], rec["width"], CHANNELS[kind])
                if data.shape != want:
                    raise StoreError(f"{where}: stored shape {data.shape}, the record says {want}; the file is "
                                     f"damaged: {self.redo}")
            else:
                data = group[f"{kind}_jpeg"]
                if data.ndim != 1:
                    raise StoreError(f"{where}: the JPEG byte array has shape {data.shape}; the file is damaged")
                offsets = check_offsets(group[f"{kind}_offsets"][()], count, data.shape[0], where)
        except StoreError:
            raise
        except (KeyError, AttributeError, TypeError, ValueError, OSError, RuntimeError) as exc:
            raise StoreError(f"{where}: cannot be read ({type(exc).__name__}: {exc}); the file is damaged: "
                             f"run `flowprep verify` and {self.redo}") from exc
        if crcs.shape != (count,):
            raise StoreError(f"{where}: {crcs.shape} checksums for {count} images; the file is damaged")
        return _Stored(data, offsets, crcs, per_item)

    def _stored_of(self, video_id: str, kind: str) -> _Stored:
        key = (video_id, kind)
        self._check_process()
        if key not in self._stored:
            if len(self._stored) >= DATASET_CACHE:  # bounded: each open dataset holds an HDF5 object id
                del self._stored[next(iter(self._stored))]
            self._stored[key] = self._open_stored(video_id, kind)
        return self._stored[key]

    def _bad_image(self, video_id: str, kind: str, i: int, why: str) -> StoreError:
        return StoreError(f"{self._file_of(video_id)}: {kind} image {i} of {video_id!r} {why}; the stored data "
                          f"is damaged: run `flowprep verify` and {self.redo}")

    def _pieces(self, video_id: str, kind: str, stored: _Stored, idx: np.ndarray) -> list[list[np.ndarray]]:
        """The stored JPEG bytes of the frames or fields at ``idx``, each a list of its images (x, y with
        jpeg-xy), checked against their CRC-32s."""
        per, offsets = stored.per_item, stored.offsets
        images = (idx[:, None] * per + np.arange(per)[None, :]).reshape(-1)  # (n * per,) image numbers
        lo, hi = int(images.min()), int(images.max()) + 1
        if hi - lo <= 2 * len(images):  # one read of the covering byte range beats many small reads
            base = int(offsets[lo])
            blob = stored.data[base:int(offsets[hi])]
            pieces = [blob[int(offsets[i]) - base:int(offsets[i + 1]) - base] for i in images]
        else:
            pieces = [stored.data[int(offsets[i]):int(offsets[i + 1])] for i in images]
        crcs = stored.crcs if self.check_crc else None
        if crcs is not None:
            for i, piece in zip(images, pieces):
                if zlib.crc32(piece) != crcs[i]:
                    raise self._bad_image(video_id, kind, int(i) // per, "does not match its checksum")
        return [pieces[k * per:(k + 1) * per] for k in range(len(idx))]

    def _read(self, video_id: str, kind: str, idx: np.ndarray, planes: bool = False) -> np.ndarray:
        """(n, H, W, c) uint8, or with ``planes`` (flow only) (n, 2, H, W)."""
        stored = self._stored_of(video_id, kind)
        rec = self._records[video_id]
        h, w, c = rec["height"], rec["width"], CHANNELS[kind]
        if not idx.size:  # the same empty shape for every codec
            return np.empty((0, c, h, w) if planes else (0, h, w, c), np.uint8)
        if stored.offsets is None:  # codec raw
            crcs = stored.crcs if self.check_crc else None
            uniq, inverse = np.unique(idx, return_inverse=True)
            data = stored.data[uniq]
            if crcs is not None:
                for k, i in enumerate(uniq):
                    if zlib.crc32(data[k].tobytes()) != crcs[i]:
                        raise self._bad_image(video_id, kind, int(i), "does not match its checksum")
            data = data[inverse]
            return np.ascontiguousarray(data.transpose(0, 3, 1, 2)) if planes else data
        out = np.empty((len(idx), c, h, w) if planes else (len(idx), h, w, c), np.uint8)
        for k, (i, images) in enumerate(zip(idx, self._pieces(video_id, kind, stored, idx))):
            target = out[k] if kind == "rgb" or planes else out[k].transpose(2, 0, 1)  # flow: (2, H, W) view
            if not decode_image(kind, images, target):
                raise self._bad_image(video_id, kind, int(i), "does not decode to the recorded size")
        return out

    def read_rgb(self, video_id: str, indices) -> np.ndarray:
        """RGB frames at ``indices``: (n, H, W, 3) uint8."""
        idx = self._indices(video_id, indices, self.num_frames(video_id), "frame")
        return self._read(video_id, "rgb", idx)

    def read_flow(self, video_id: str, indices) -> np.ndarray:
        """Quantised flow fields at ``indices``: (n, H, W, 2) uint8, x then y."""
        idx = self._indices(video_id, indices, self.num_flows(video_id), "flow")
        return self._read(video_id, "flow", idx)

    def read_flow_planes(self, video_id: str, indices) -> np.ndarray:
        """The fields of read_flow as planes: (n, 2, H, W) uint8, [:, 0] = x, [:, 1] = y.

        Cheaper than read_flow with the jpeg codecs (the stored x | y image, or the x and y images, are
        copied row by row instead of interleaved pixel by pixel), for readers that want channels first, as a
        network does.
        """
        idx = self._indices(video_id, indices, self.num_flows(video_id), "flow")
        return self._read(video_id, "flow", idx, planes=True)

    def read_stored(self, video_id: str, kind: str, indices) -> list[tuple[np.ndarray, ...]]:
        """The stored JPEG bytes of frames (kind "rgb") or flow fields (kind "flow") at ``indices``, each
        checked against its CRC-32: per item a tuple of (n,) uint8 arrays, one JPEG (RGB; a field's x | y
        image with codec jpeg) or two (a field's x and y with codec jpeg-xy). Lets a writer copy images
        without decoding and encoding them again. ValueError with codec raw, which stores pixels."""
        if not self.codec.jpeg:
            raise ValueError(f"{self.path}: codec raw stores pixels, not JPEG bytes; read_rgb / read_flow them")
        count = self.num_frames(video_id) if kind == "rgb" else self.num_flows(video_id)
        idx = self._indices(video_id, indices, count, "frame" if kind == "rgb" else "flow")
        if not idx.size:
            return []
        return [tuple(images) for images in self._pieces(video_id, kind, self._stored_of(video_id, kind), idx)]

    def damaged_images(self, video_id: str, kind: str) -> list[int]:
        """Indices of the video's frames (``kind`` "rgb") or flow fields ("flow") with an image whose stored
        bytes do not match its CRC-32 (a field of codec jpeg-xy is damaged when its x or its y image is)."""
        stored = self._stored_of(video_id, kind)
        if stored.offsets is None:
            return [i for i in range(len(stored.crcs)) if zlib.crc32(stored.data[i].tobytes()) != stored.crcs[i]]
        blob, offsets = stored.data[()], stored.offsets
        bad = [i for i in range(len(stored.crcs)) if zlib.crc32(blob[offsets[i]:offsets[i + 1]]) != stored.crcs[i]]
        return sorted({i // stored.per_item for i in bad})

    def raw_bytes(self, video_id: str, kind: str) -> np.ndarray:
        """The stored bytes of one video's ``kind`` ("rgb" or "flow") exactly as checksummed at write time."""
        stored = self._stored_of(video_id, kind)
        return stored.data[()].reshape(-1)
